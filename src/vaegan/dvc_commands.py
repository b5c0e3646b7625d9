"""Running the DVC pipeline from Python, one stage at a time, through DVC's command line.

The command line is DVC's stable interface (treeverse/dvc#3278); one DVC command runs at a time in
a workspace (DVC takes a lock). Params overrides are written into params.yaml before any stage
runs, the way `dvc exp run -S` does in the workspace, so params.yaml and dvc.lock always agree.
In team mode (`.team/env` sourced), `use_team_remote` makes the team's S3 remote the default.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedSeq

from vaegan import process_group
from vaegan.artifacts.atomic_io import write_text
from vaegan.config import load_config
from vaegan.errors import ConfigError, VaeganError

# dvc.yaml's stages in an order that respects their dependencies.
PIPELINE_STAGES = (
    "fetch",
    "prepare",
    "evaluator",
    "train",
    "train-baseline",
    "evaluate-baseline",
    "evaluate",
    "export",
)

# The team mode's DVC remote (`vaegan.team` writes its URL and endpoint into `.team/env`).
TEAM_REMOTE = "team"
REMOTE_URL_VARIABLE = "VAEGAN_DVC_REMOTE_URL"
ENDPOINT_VARIABLE = "VAEGAN_DVC_ENDPOINT_URL"

_RAN = re.compile(r"Running stage '([^']+)'")


class StageFailed(VaeganError):
    """A DVC stage exited non-zero; the message carries the stage's own error lines."""

    exit_code = 1


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    ran: bool  # False when DVC found nothing changed and skipped it
    seconds: float
    output: str


def dvc_command(*args: str) -> list[str]:
    """The argv that runs DVC from this interpreter's environment. It waits for DVC's repository
    lock instead of failing after 3 s: a `dvc pull` of a champion check, say, waits for a `dvc push`
    of a retrain in the same checkout (one retrain holds a workspace: `workspace_lock`)."""
    return [sys.executable, "-m", "dvc", "--wait-for-lock", *args]


def error_lines(output: str, limit: int = 12) -> str:
    """The lines that explain a failure: the stage's own `error:` lines with the indented lines that
    go on from them (DVC's `is busy, it is being blocked by:` names the process there), else the tail."""
    lines = [line for line in output.splitlines() if line.strip()]
    errors, in_error = [], False
    for line in lines:
        in_error = "error" in line.lower() or (in_error and line[:1].isspace())
        if in_error:
            errors.append(line)
    return "\n".join((errors or lines)[-limit:])


def run_dvc(
    args: list[str],
    repo_dir: str | os.PathLike[str],
    on_line: Callable[[str], None] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> tuple[int, str]:
    """Run one DVC command in `repo_dir`, streaming its output lines to `on_line`; `env` adds to
    (or replaces in) this process's environment."""
    # dvc.yaml's commands call `vaegan`: put this interpreter's scripts first on PATH, so the stages
    # run with the same environment whether or not the virtualenv is activated.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    environment = {
        **os.environ,
        "PATH": path,
        "DVC_NO_ANALYTICS": "1",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    # DVC and the stage it runs are one process group that dies with this process and that an
    # interrupt here (Ctrl-C) stops before it goes on: nothing keeps writing the workspace after us.
    process = process_group.start(
        dvc_command(*args),
        cwd=repo_dir,
        env=environment,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines = []
    assert process.stdout is not None
    try:
        for line in process.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))
        return process.wait(), "".join(lines)
    finally:
        if process.poll() is None:
            process_group.stop(process)
        process.stdout.close()


def repro_stage(
    stage: str,
    repo_dir: str | os.PathLike[str] = ".",
    on_line: Callable[[str], None] | None = None,
    *,
    flags: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
) -> StageOutcome:
    """`dvc repro [flags] <stage>`: runs it when its deps, params or code changed, else DVC skips
    it (`--force` runs it anyway); `env` is added to the stage's environment."""
    started = time.perf_counter()
    code, output = run_dvc(["repro", *flags, stage], repo_dir, on_line, env=env)
    seconds = time.perf_counter() - started
    if code != 0:
        raise StageFailed(f"DVC stage '{stage}' failed (exit {code}):\n{error_lines(output)}")
    return StageOutcome(stage=stage, ran=stage in _RAN.findall(output), seconds=seconds, output=output)


def push(
    repo_dir: str | os.PathLike[str] = ".",
    remote: str | None = None,
    on_line: Callable[[str], None] | None = None,
    *,
    run_cache: bool = False,
) -> str:
    """`dvc push` of every tracked output to `remote` (DVC's default remote when None); with
    `run_cache`, DVC's run cache too, so that `dvc repro --pull` elsewhere restores a stage that ran
    here with the same deps and params instead of running it again."""
    args = ["push", *(["-r", remote] if remote else []), *(["--run-cache"] if run_cache else [])]
    code, output = run_dvc(args, repo_dir, on_line)
    if code != 0:
        raise StageFailed(f"dvc push failed (exit {code}):\n{error_lines(output)}")
    return output


def pull(
    targets: list[str],
    repo_dir: str | os.PathLike[str] = ".",
    remote: str | None = None,
    on_line: Callable[[str], None] | None = None,
) -> str:
    """`dvc pull` of the outputs of `targets` (stages or paths) from `remote` (default remote)."""
    code, output = run_dvc(["pull", *(["-r", remote] if remote else []), *targets], repo_dir, on_line)
    if code != 0:
        raise StageFailed(f"dvc pull {' '.join(targets)} failed (exit {code}):\n{error_lines(output)}")
    return output


def apply_params(
    overrides: Mapping[str, Any], repo_dir: str | os.PathLike[str] = "."
) -> dict[str, tuple[Any, Any]]:
    """Validate `section.key -> value` overrides and write them into params.yaml.

    Comments and layout are kept (ruamel round trip); the file is rewritten only when a value
    changes. Returns the changes as `key -> (old, new)`. An invalid override raises `ConfigError`
    before anything is written.
    """
    params_path = Path(repo_dir) / "params.yaml"
    as_text = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    new_config = load_config(params_path, as_text).to_dict()
    old_config = load_config(params_path).to_dict()
    changes: dict[str, tuple[Any, Any]] = {}
    for key in overrides:
        section, name = key.split(".")
        if old_config[section][name] != new_config[section][name]:
            changes[key] = (old_config[section][name], new_config[section][name])
    if not changes:
        return changes
    round_trip = YAML()
    round_trip.preserve_quotes = True
    round_trip.representer.add_representer(
        type(None), lambda rep, _data: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    document = round_trip.load(params_path.read_text(encoding="utf-8")) or {}
    for key, (_old, new) in changes.items():
        section, name = key.split(".")
        if section not in document or document[section] is None:
            document[section] = {}
        document[section][name] = _flow_style(new)
    buffer = StringIO()
    round_trip.dump(document, buffer)
    write_text(params_path, buffer.getvalue())
    if load_config(params_path).to_dict() != new_config:  # a bug here must not go unnoticed
        raise ConfigError(f"{params_path}: rewriting the overrides did not give the expected params")
    return changes


def _flow_style(value: Any) -> Any:
    """Lists as `[a, b]` on one line, the way params.yaml writes them."""
    if not isinstance(value, list):
        return value
    seq = CommentedSeq(value)
    seq.fa.set_flow_style()
    return seq


def use_team_remote(repo_dir: str | os.PathLike[str] = ".") -> str | None:
    """Make the team's S3 remote the default DVC remote of `repo_dir` (in `.dvc/config.local`, which
    git never sees); its name, or None outside team mode. The keys come from the environment."""
    url = os.environ.get(REMOTE_URL_VARIABLE)
    if not url:
        return None
    commands = [["remote", "add", "--local", "--force", "--default", TEAM_REMOTE, url]]
    endpoint = os.environ.get(ENDPOINT_VARIABLE)
    if endpoint:
        commands.append(["remote", "modify", "--local", TEAM_REMOTE, "endpointurl", endpoint])
    for args in commands:
        code, output = run_dvc(args, repo_dir)
        if code != 0:
            raise StageFailed(f"dvc {' '.join(args[:3])} {TEAM_REMOTE} failed:\n{error_lines(output)}")
    return TEAM_REMOTE


def stage_lock_md5(stage: str, repo_dir: str | os.PathLike[str] = ".") -> str:
    """The md5 of a stage's outputs as dvc.lock records them (joined when several), or `none`."""
    lock_path = Path(repo_dir) / "dvc.lock"
    if not lock_path.is_file():
        return "none"
    lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}
    outs = lock.get("stages", {}).get(stage, {}).get("outs", [])
    hashes = [str(out.get("md5")) for out in outs if out.get("md5")]
    return ",".join(hashes) if hashes else "none"
