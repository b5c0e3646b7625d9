"""The `check-champion` flow: the scheduled check of the model in production.

    python -m pipelines.check_champion               # fresh seed
    python -m pipelines.check_champion --seed 7      # repeat a past check exactly

It makes sure the DVC-tracked test data and evaluator are in the workspace (`dvc pull` when they
are missing), loads `vaegan-decoder@champion` and its encoder from the MLflow registry as ONNX with
their sha256 verified, scores them with ONNX Runtime exactly as the `evaluate` stage scores, logs
the result to the MLflow experiment `check-champion`, and publishes a Prefect markdown artifact
(`champion-evaluation`). When the FID degraded beyond `registry.max_fid_drift`, it also publishes
`champion-drift` and the flow fails, so Prefect automations (or any alerting on failed runs) fire.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from pipelines.flow_run import label_flow_run
from vaegan import check_champion as champion
from vaegan import dvc_commands
from vaegan.config import Config, check_seed, load_config
from vaegan.errors import run_command
from vaegan.flows.failures import worth_retrying
from vaegan.flows.prefect_server import temporary_server


@task(retries=2, retry_delay_seconds=15, task_run_name="dvc pull test data")
def ensure_test_data(config: Config, remote: str | None) -> list[str]:
    """Pull the prepared data and the evaluator from the DVC remote when they are not here."""
    missing = [
        stage
        for stage, path in (("prepare", config.data.prepared_dir), ("evaluator", config.evaluator.path))
        if not Path(path).exists()
    ]
    if missing:
        dvc_commands.pull(missing, ".", remote, on_line=get_run_logger().info)
    return missing


@task(
    retries=2, retry_delay_seconds=15, retry_condition_fn=worth_retrying, task_run_name="score the champion"
)
def score_champion(config: Config, seed: int, device: str) -> champion.ChampionReport:
    report = champion.check_champion(config=config, seed=seed, device=device)
    champion.log_check(config, report)
    get_run_logger().info(report.message())
    return report


@flow(name="check-champion", log_prints=True)
def check_champion(
    seed: int | None = None,
    params_path: str = "params.yaml",
    device: str = "auto",
    remote: str | None = None,
    repo_dir: str = ".",
) -> dict[str, object]:
    """Score the registry's champion on the current test data; fail on FID drift."""
    os.chdir(repo_dir)
    label_flow_run()
    remote = remote or dvc_commands.use_team_remote(".")
    config = load_config(params_path)
    ensure_test_data(config, remote)
    chosen_seed = champion.fresh_seed() if seed is None else seed
    report = score_champion(config, chosen_seed, device)
    markdown = champion.report_markdown(report)
    create_markdown_artifact(key="champion-evaluation", markdown=markdown, description=report.message())
    if not report.passed:
        create_markdown_artifact(key="champion-drift", markdown=markdown, description=report.message())
        raise champion.ChampionDrift(report.message())
    return {
        "passed": report.passed,
        "fid": report.fid,
        "fid_drift": report.fid_drift,
        "run_id": report.run_id,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: a fresh one)")
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--remote", default=None, help="DVC remote to pull from (default: the default remote)"
    )
    args = parser.parse_args(argv)

    def body() -> int:
        load_config(args.params)  # a bad params file is one line and exit 2, before Prefect starts
        if args.seed is not None:
            check_seed(args.seed)
        with temporary_server():
            check_champion(seed=args.seed, params_path=args.params, device=args.device, remote=args.remote)
        return 0

    # Exit codes: 0 pass, 1 drift (ChampionDrift), 2 refusal: bad params, no champion, an artifact
    # whose sha256 differs from the registered one (never retried).
    return run_command("check-champion", body)


if __name__ == "__main__":
    sys.exit(main())
