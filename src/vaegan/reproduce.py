"""`vaegan reproduce MODEL_URI`: rebuild a registered model from what the registry records and say
whether it is the same model.

1. Read the registration (tags and the training's `params.yaml`) and compare this machine's
   environment with the recorded one: the predicted verdict is printed before any training.
2. Check the recorded commit out in a temporary git worktree (the workspace is never touched) and
   compare the inputs: the commit's training code with the recorded `code_sha256`, the params the
   rebuild will use with the recorded ones. A difference is `different` at once (exit 1).
3. Get the data through DVC; its sha256 must be the recorded `data_sha256` (else exit 2).
4. Run every later stage forced (never from DVC's run cache) and compare: weights and ONNX graphs
   bitwise, then FID / precision / recall within the tolerance. Both versions get
   `reproduce.verdict` and `reproduce.at` tags.

Exit codes: 0 `identical` or `equivalent`, 1 `different`, 2 cannot reproduce here (no such
model or commit, data unreachable or not the recorded data, a registration without the record).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaegan.artifacts.atomic_io import output_file_problem, read_json_object, write_text
from vaegan.artifacts.checkpoint import load_checkpoint
from vaegan.artifacts.weights_digest import weights_sha256
from vaegan.config import Config, build_config, output_params, parse_override
from vaegan.data.splits import data_sha256
from vaegan.errors import ConfigError
from vaegan.registry.client import ROLES, connect_registry, mlflow_errors
from vaegan.registry.registration import verified_export_files
from vaegan.reproduction import verdict as verdicts
from vaegan.reproduction.environment import predict, recorded_environment, this_environment
from vaegan.reproduction.record import RecordedModel, read_record
from vaegan.reproduction.verdict import Comparison, Tolerance, Verdict
from vaegan.reproduction.worktree import (
    ReproduceError,
    get_data,
    pipeline_stages,
    rebuild_stages,
    resolve_commit,
    share_dvc_storage,
    stage_environment,
    temporary_worktree,
    worktree_python_path,
    write_params,
)

log = logging.getLogger(__name__)

DEFAULT_URI = "models:/vaegan-decoder@champion"


@dataclass(frozen=True)
class Reproduction:
    """A finished `reproduce`: the verdict, what it was about, and the markdown that explains it."""

    verdict: Verdict
    record: RecordedModel
    commit: str
    markdown: str


def rebuild_params(
    recorded: dict[str, Any], overrides: Sequence[str], tracking: dict[str, str]
) -> tuple[dict[str, Any], Config]:
    """The rebuild's params: the recorded ones with `overrides` (`section.key=value`) and the
    `tracking` section's values (the user's store), keeping the record's keys (a param this code
    added since, with its default, would be unknown to the recorded commit's code and would read as
    a changed param); and this code's validated reading of them. Output paths must be relative."""
    params = {section: dict(values or {}) for section, values in recorded.items()}
    for text in overrides:
        (section, key), value = parse_override(text)
        params.setdefault(section, {})[key] = value
    params.setdefault("tracking", {}).update(tracking)
    config = build_config(params)
    resolved = config.to_dict()
    for key in output_params():  # the files the rebuild writes: they must stay inside its worktree
        section, name = key.split(".")
        value = resolved[section][name]
        if isinstance(value, str) and Path(value).is_absolute():
            raise ConfigError(
                f"{key}={value} is an absolute path: the rebuild writes only inside its temporary "
                f"worktree (pass --set {key}=<relative path>)"
            )
    return params, config


def code_sha256_at(worktree: Path) -> str:
    """The training code's sha256 as the worktree's own code computes it (`code_sha256` of the
    checkpoint's resume key), in a child process that imports the worktree's package."""
    env = {**os.environ, "PYTHONPATH": worktree_python_path(worktree)}
    program = "from vaegan.nn.resume import training_code_sha256; print(training_code_sha256())"
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=worktree, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise ReproduceError(f"cannot hash the training code of the worktree: {done.stderr.strip()[-500:]}")
    return done.stdout.strip().splitlines()[-1]


def _rebuilt_outputs(
    worktree: Path, config: Config, record: RecordedModel, tolerance: Tolerance
) -> tuple[list[Comparison], list[Comparison]]:
    """The bitwise comparisons (weights, both graphs) and the metric ones of the rebuild."""
    weights = weights_sha256(load_checkpoint(worktree / config.train.model_path))
    export_metrics = read_json_object(worktree / config.export.metrics_path)
    verified_export_files(worktree / config.export.dir, export_metrics)
    bitwise = [verdicts.digest_comparison("weights", record.tag("weights_sha256"), weights)]
    bitwise += [
        verdicts.digest_comparison(
            f"{role} ONNX", record.export_sha256[role], str(export_metrics[role]["sha256"])
        )
        for role in ROLES
    ]
    metrics = read_json_object(worktree / config.evaluate.metrics_path)
    return bitwise, verdicts.metric_comparisons(record.tags, metrics, tolerance)


def reproduce_model(
    *,
    config: Config,
    model_uri: str = DEFAULT_URI,
    repo_dir: str | Path = ".",
    overrides: Sequence[str] = (),
    tolerance: Tolerance | None = None,
    check_only: bool = False,
    keep: bool = False,
    tracking_uri: str | None = None,
    on_line: Callable[[str], None] = log.info,
) -> Reproduction:
    """Rebuild the registration `model_uri` names from its record and compare (module docstring)."""
    client, store_uri = connect_registry(config.tracking, tracking_uri)
    with mlflow_errors(f"read the registration {model_uri}"):
        record = read_record(client, config.registry, model_uri)
    repo = Path(repo_dir).resolve()
    tracking = {
        "uri": store_uri,
        "experiment": f"{config.tracking.experiment}-reproduce",
        "artifact_location": str((Path.cwd() / config.tracking.artifact_location).resolve()),
    }
    params, rebuild_config = rebuild_params(record.params, overrides, tracking)
    prediction = predict(recorded_environment(record.tags), this_environment(rebuild_config))
    on_line(f"{record.label()}: {prediction.reason}")
    commit = resolve_commit(repo, record.git_commit)
    with temporary_worktree(repo, commit, keep, on_line) as worktree:
        on_line(f"commit {commit} checked out in {worktree}")
        inputs = [
            verdicts.digest_comparison("training code", record.tag("code_sha256"), code_sha256_at(worktree)),
            *verdicts.param_comparisons(record.params, params),
        ]
        if check_only or not all(row.same for row in inputs):
            verdict = verdicts.decide(prediction, inputs)
        else:
            share_dvc_storage(repo, worktree)
            write_params(worktree, params)
            env = stage_environment(worktree, store_uri)
            stages = pipeline_stages(worktree)
            get_data(worktree, stages, env, on_line)
            data = data_sha256(worktree / rebuild_config.data.prepared_dir)
            if data != record.tag("data_sha256"):
                raise ReproduceError(
                    f"the data differ: the model was trained on data sha256 {record.tag('data_sha256')}, "
                    f"DVC gives {data} for commit {commit[:12]} with the recorded params"
                )
            inputs.append(verdicts.digest_comparison("data", record.tag("data_sha256"), data))
            rebuild_stages(worktree, stages, env, on_line)
            bitwise, metrics = _rebuilt_outputs(worktree, rebuild_config, record, tolerance or Tolerance())
            verdict = verdicts.decide(prediction, inputs, bitwise, metrics)
    if verdict.verdict != verdicts.UNCHECKED:
        _tag_versions(client, record, verdict)
    markdown = verdicts.verdict_markdown(verdict, f"{model_uri} ({record.label()})", commit)
    return Reproduction(verdict=verdict, record=record, commit=commit, markdown=markdown)


def _tag_versions(client: Any, record: RecordedModel, verdict: Verdict) -> None:
    """`reproduce.verdict` and `reproduce.at` on both versions: the registry shows the last proof."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    with mlflow_errors("tag the reproduced versions"):
        for name, version in record.versions.values():
            client.set_model_version_tag(name, version, "reproduce.verdict", verdict.verdict)
            client.set_model_version_tag(name, version, "reproduce.at", now)


def check_arguments(repo: str, report: str | None) -> None:
    """ConfigError when `--repo` is not a folder or `--report` cannot be written: before the
    registry is read, the rebuild runs and the versions are tagged."""
    if not Path(repo).is_dir():
        raise ConfigError(f"--repo: {repo} is not a directory (the model's git + DVC repository)")
    problem = None if report is None else output_file_problem(Path(report))
    if problem is not None:
        raise ConfigError(f"--report: {problem}")


def run(config: Config, args: argparse.Namespace) -> int:
    """`vaegan reproduce`: print the verdict table; exit 0 identical/equivalent, 1 different."""
    check_arguments(args.repo, args.report)
    defaults = Tolerance()
    tolerance = Tolerance(
        defaults.fid_relative if args.fid_tolerance is None else args.fid_tolerance,
        defaults.precision_recall if args.pr_tolerance is None else args.pr_tolerance,
    )
    if not (tolerance.fid_relative >= 0 and tolerance.precision_recall >= 0):
        raise ConfigError(f"--fid-tolerance and --pr-tolerance must be >= 0, got {tolerance}")
    result = reproduce_model(
        config=config,
        model_uri=args.model_uri,
        repo_dir=args.repo,
        overrides=args.overrides,
        tolerance=tolerance,
        check_only=args.check_only,
        keep=args.keep,
        tracking_uri=args.tracking_uri,
    )
    print(result.markdown, end="")
    if args.report:
        write_text(args.report, result.markdown)
    return result.verdict.exit_code
