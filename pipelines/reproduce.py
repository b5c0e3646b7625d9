"""The `reproduce` flow: keep proving that the champion can be rebuilt from its record.

    python -m pipelines.reproduce                                   # the champion
    python -m pipelines.reproduce models:/vaegan-decoder/3 --check-only

It runs `vaegan reproduce` (vaegan.reproduce): the recorded commit in a temporary git worktree, the
data through DVC, every stage after it rebuilt, weights and ONNX graphs compared bitwise and the
metrics within a tolerance. Its artifact `reproduce-verdict` is the verdict table; a `different`
verdict fails the flow (exit 1), so alerting on failed runs fires. `make serve` schedules it weekly.
"""

from __future__ import annotations

import argparse
import os
import sys

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from pipelines.flow_run import label_flow_run
from vaegan.config import load_config
from vaegan.dvc_commands import use_team_remote
from vaegan.errors import VaeganError, run_command
from vaegan.flows.prefect_server import temporary_server
from vaegan.reproduce import DEFAULT_URI, Reproduction, reproduce_model
from vaegan.reproduction.verdict import DIFFERENT, Tolerance

ARTIFACT_KEY = "reproduce-verdict"


class NotReproduced(VaeganError):
    """The rebuild is `different` from the registered model."""

    exit_code = 1


@task(task_run_name="rebuild {model_uri} and compare")
def rebuild(model_uri: str, params_path: str, tolerance: Tolerance, check_only: bool) -> Reproduction:
    logger = get_run_logger()
    return reproduce_model(
        config=load_config(params_path),
        model_uri=model_uri,
        tolerance=tolerance,
        check_only=check_only,
        on_line=logger.info,
    )


@flow(name="reproduce", log_prints=True)
def reproduce(
    model_uri: str = DEFAULT_URI,
    params_path: str = "params.yaml",
    fid_tolerance: float = Tolerance.fid_relative,
    pr_tolerance: float = Tolerance.precision_recall,
    check_only: bool = False,
    repo_dir: str = ".",
) -> dict[str, str]:
    """Rebuild `model_uri` from its record; publish the verdict table; fail when `different`."""
    os.chdir(repo_dir)
    label_flow_run()
    use_team_remote(".")  # team mode: the rebuild's data comes from the team's S3 remote
    result = rebuild(model_uri, params_path, Tolerance(fid_tolerance, pr_tolerance), check_only)
    verdict = result.verdict
    create_markdown_artifact(
        key=ARTIFACT_KEY, markdown=result.markdown, description=f"{model_uri}: {verdict.verdict}"
    )
    print(result.markdown)
    if verdict.verdict == DIFFERENT:
        raise NotReproduced(f"{model_uri} is not reproducible: {verdict.reason}")
    return {
        "model_uri": model_uri,
        "verdict": verdict.verdict,
        "reason": verdict.reason,
        "commit": result.commit,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model_uri", nargs="?", default=DEFAULT_URI, help=f"default {DEFAULT_URI}")
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("--check-only", action="store_true", help="predict the verdict; train nothing")
    args = parser.parse_args(argv)

    def body() -> int:
        load_config(args.params)  # a bad params file is one line and exit 2, before Prefect starts
        with temporary_server():
            reproduce(model_uri=args.model_uri, params_path=args.params, check_only=args.check_only)
        return 0

    # Exit codes: 0 identical or equivalent, 1 different (NotReproduced), 2 cannot reproduce here.
    return run_command("reproduce", body)


if __name__ == "__main__":
    sys.exit(main())
