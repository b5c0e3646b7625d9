"""The `retrain` flow: every DVC stage as its own Prefect task, then register, promote, push.

    python -m pipelines.retrain                      # quick profile (CPU, a few minutes)
    python -m pipelines.retrain --profile full       # the GPU-sized profile
    python -m pipelines.retrain --set train.lr=0.001 --no-promote --remote myremote

Stages run through `dvc repro <stage>` in dependency order, so an unchanged stage is skipped by
DVC and dvc.lock records what ran. Params overrides are written into params.yaml first (as
`dvc exp run -S` does in the workspace), so params.yaml and dvc.lock agree; commit both.
Only the tasks that do I/O against a service (registry calls, `dvc push`) retry, and never on a
refusal. A run that fails puts the workspace back as it found it (params.yaml, dvc.lock and every
output: `vaegan.flows.workspace`) and says so.

One retrain at a time per workspace: a second one exits 2 at once naming the running one. Ctrl-C
stops the running stage, restores the workspace and exits 130. The stages and the command's
temporary Prefect server die with the command, even by SIGKILL, and the next run puts back what a
killed run left changed (`vaegan.flows.workspace_lock`, `vaegan.process_group`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from pipelines.flow_run import label_flow_run
from vaegan import dvc_commands
from vaegan.artifacts.atomic_io import read_json_object
from vaegan.artifacts.provenance import git_commit
from vaegan.config import Config, load_config
from vaegan.errors import ConfigError, VaeganError, run_command
from vaegan.flows import workspace_lock
from vaegan.flows.failures import (
    check_dvc_lock,
    parse_overrides,
    validate_params,
    worth_retrying,
)
from vaegan.flows.prefect_server import temporary_server
from vaegan.flows.retrain_summary import RetrainSummary, summary_markdown
from vaegan.flows.team_workspace import is_team_clone, publish_run
from vaegan.flows.workspace import WorkspaceSnapshot
from vaegan.registry.promotion import PromotionDecision, promote_challenger
from vaegan.registry.registration import Registration, register_models
from vaegan.registry.verified import champion_metric_tags
from vaegan.tracking.store import tracking_uri

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"


def _profile_file(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {})


def profile_overrides(profile: str) -> dict[str, Any]:
    """The `section.key -> value` overrides of a profile: its file under profiles/ and, for every
    other key some profile sets, the embedded default. A profile is written into params.yaml, so
    without the defaults `--profile quick` after `--profile long` would keep long's learning rate."""
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ConfigError(f"--profile: unknown profile {profile!r} (known: {', '.join(known)}, none)")
    defaults = Config().flat()
    managed = {key for other in sorted(PROFILES_DIR.glob("*.yaml")) for key in _profile_file(other)}
    return {**{key: defaults[key] for key in sorted(managed) if key in defaults}, **_profile_file(path)}


@task(task_run_name="apply params")
def apply_params(overrides: dict[str, Any]) -> dict[str, Any]:
    changes = dvc_commands.apply_params(overrides)
    logger = get_run_logger()
    for key, (old, new) in changes.items():
        logger.info("params.yaml: %s %r -> %r", key, old, new)
    return {key: new for key, (_old, new) in changes.items()}


@task(task_run_name="dvc repro {stage}")
def repro(stage: str, pull: bool = False) -> dvc_commands.StageOutcome:
    """`dvc repro <stage>`; with `pull`, outputs DVC can fetch from the remote are pulled, not rebuilt."""
    logger = get_run_logger()
    outcome = dvc_commands.repro_stage(stage, ".", on_line=logger.info, flags=("--pull",) if pull else ())
    logger.info("stage %s %s in %.1f s", stage, "ran" if outcome.ran else "was cached", outcome.seconds)
    return outcome


@task(
    retries=2, retry_delay_seconds=10, retry_condition_fn=worth_retrying, task_run_name="register in MLflow"
)
def register(config: Config) -> Registration:
    registration = register_models(config=config)
    get_run_logger().info("registered %s", ", ".join(registration.model_uris.values()))
    return registration


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=worth_retrying, task_run_name="champion metrics")
def champion_metrics(config: Config) -> dict[str, Any]:
    """The current champion's `metric.*` tags (before any promotion), {} when there is none."""
    return champion_metric_tags(config=config)


@task(
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=worth_retrying,
    task_run_name="promote if the gate passes",
)
def promote(config: Config, registration: Registration) -> PromotionDecision:
    """The gate on exactly this run's registration (not whatever `challenger` points at now)."""
    versions = (registration.decoder_version, registration.encoder_version)
    decision = promote_challenger(config=config, versions=versions)
    logger = get_run_logger()
    logger.info("promotion: %s", "promoted" if decision.promoted else "champion kept")
    for reason in decision.reasons:
        logger.info("  %s", reason)
    return decision


@task(retries=3, retry_delay_seconds=15, task_run_name="dvc push")
def push(remote: str | None, run_cache: bool = False) -> str:
    dvc_commands.push(".", remote, on_line=get_run_logger().info, run_cache=run_cache)
    return remote or "default"


@task(retries=3, retry_delay_seconds=15, task_run_name="publish runs/{run_name}")
def publish(run_name: str) -> str:
    """Push the run's params.yaml, dvc.lock and metrics as a branch of the team's git remote."""
    branch = publish_run(run_name, f"retrain {run_name}: params.yaml, dvc.lock and metrics of the run")
    get_run_logger().info("published the run as branch %s of the team's git remote", branch)
    return branch


RESTORED = "the workspace is as before this run: params.yaml, dvc.lock and every output restored"


@task(task_run_name="restore the workspace")
def restore_workspace(snapshot: WorkspaceSnapshot, ended: str) -> list[str]:
    """Put params.yaml, dvc.lock and the outputs back as they were before the run (that `ended`:
    failed, interrupted)."""
    logger = get_run_logger()
    changed = snapshot.restore(on_line=logger.info)
    logger.warning("run %s: %s (changed files put back: %s)", ended, RESTORED, ", ".join(changed) or "none")
    return changed


def _read_json(path: str | None) -> dict[str, Any] | None:
    if not path or not Path(path).is_file():
        return None
    return read_json_object(path)


@flow(name="retrain", log_prints=True)
def retrain(
    params: dict[str, Any] | None = None,
    profile: str | None = "quick",
    promote_model: bool = True,
    push_remote: bool = True,
    remote: str | None = None,
    repo_dir: str = ".",
) -> dict[str, Any]:
    """Reproduce the DVC pipeline, register the exported models, promote when the gate passes,
    and push the new artifacts to the DVC remote. Returns a digest of the run.

    One retrain at a time holds the workspace (another one running: WorkspaceBusy, exit 2), and the
    workspace as it was before the run is kept on disk until the run is over, so that the next run
    puts it back should this one be killed (`vaegan.flows.workspace_lock`)."""
    os.chdir(repo_dir)
    run_name = label_flow_run()
    commit = git_commit(".")  # before params.yaml changes: what the run's code and params came from
    overrides = {**(profile_overrides(profile) if profile else {}), **(params or {})}
    with workspace_lock.hold(".", on_line=get_run_logger().warning) as held:
        # team mode: outputs come from and go to the team's S3 remote
        team_remote = dvc_commands.use_team_remote(".")
        snapshot = held.keep(WorkspaceSnapshot.take("."))
        try:
            changed = apply_params(overrides)
            outcomes = [repro(stage, pull=team_remote is not None) for stage in dvc_commands.PIPELINE_STAGES]
            config = load_config("params.yaml")
            registration = register(config)
            previous = champion_metrics(config)
            decision = promote(config, registration) if promote_model else None
            pushed_to = (
                push(remote or team_remote, run_cache=team_remote is not None) if push_remote else None
            )
            run_branch = publish(run_name) if is_team_clone(".") else None
        except BaseException as exc:
            ended = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            if is_team_clone("."):  # a worker's own clone, removed with its folder: nothing to put back
                get_run_logger().warning(
                    "run %s in a clone of the team's git remote: nothing to restore", ended
                )
            else:
                restore_workspace(snapshot, ended)
            held.settled()
            if isinstance(exc, VaeganError):
                raise type(exc)(f"{exc}\n{RESTORED}") from exc
            raise
        held.settled()
    summary = RetrainSummary(
        params_changed=changed,
        stages=outcomes,
        metrics=_read_json(config.evaluate.metrics_path) or {},
        baseline=_read_json(config.evaluate.baseline_metrics),
        registration=registration,
        decision=decision,
        tracking_uri=tracking_uri(config.tracking),
        pushed_to=pushed_to,
        champion_metrics=previous,
        commit=commit,
        run_branch=run_branch,
    )
    markdown = summary_markdown(summary)
    create_markdown_artifact(key="retrain-summary", markdown=markdown, description="retrain summary")
    print(markdown)
    return summary.as_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--profile",
        default="quick",
        help="params profile under profiles/ written into params.yaml before the run: quick (the CPU "
        "default), long (full's 60 epochs at batch 256 on a CPU), full (GPU), smoke, or none (params.yaml "
        "as it is). A profile also resets to the embedded default every key another profile sets",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one param in params.yaml (repeatable)",
    )
    parser.add_argument("--no-promote", action="store_true", help="register but never move `champion`")
    parser.add_argument("--no-push", action="store_true", help="skip `dvc push`")
    parser.add_argument("--remote", default=None, help="DVC remote to push to (default: the default remote)")
    args = parser.parse_args(argv)
    profile = None if args.profile == "none" else args.profile

    def body() -> int:
        params = parse_overrides(args.overrides)
        # The whole resolved config, before Prefect starts: a bad key or value never runs a stage.
        validate_params({**(profile_overrides(profile) if profile else {}), **params})
        check_dvc_lock("dvc.lock")  # a lock file DVC cannot read fails every stage: say so now
        workspace_lock.check_free(".")  # a second run stops here, before Prefect starts
        with temporary_server():
            retrain(
                params=params,
                profile=profile,
                promote_model=not args.no_promote,
                push_remote=not args.no_push,
                remote=args.remote,
            )
        return 0

    return run_command("retrain", body)


if __name__ == "__main__":
    sys.exit(main())
