"""How the flows fail: which task failures Prefect retries, and the one line a flow's command prints.

A refusal (bad params, a tampered artifact, no champion: any `VaeganError` but `ServiceUnavailable`)
gives the same answer every time, so it is not retried; an unreachable server or an unexpected
error is. The flows' `main`s validate their arguments with the CLI's own code before any task runs
and end a `VaeganError` with `<command>: error: <first line>` and its exit code (2 for bad input and
refusals, 1 for drift and failed training), not with Prefect's traceback; Ctrl-C ends them with
exit 130 once the flow has cleaned up (`vaegan.errors.run_command`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dvc.exceptions import DvcException
from dvc.schema import COMPILED_LOCKFILE_SCHEMA
from dvc.utils.serialize import load_yaml
from voluptuous import Invalid

from vaegan.config import load_config, parse_override
from vaegan.errors import ServiceUnavailable, VaeganError, WorkspaceError, first_line


def worth_retrying(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a failed task unless it failed with a refusal."""
    try:
        state.result()
    except ServiceUnavailable:
        return True
    except VaeganError:
        return False
    except Exception:  # anything unexpected may be transient (a network hiccup in a client library)
        return True
    return True


def parse_overrides(texts: Iterable[str]) -> dict[str, Any]:
    """`--set section.key=value` texts -> {"section.key": value}, parsed as `vaegan --set` parses them."""
    overrides: dict[str, Any] = {}
    for text in texts:
        path, value = parse_override(text)
        overrides[".".join(path)] = value
    return overrides


def validate_params(overrides: Mapping[str, Any], params_path: str = "params.yaml") -> None:
    """ConfigError when params.yaml with `overrides` applied is not a valid config (every field and
    the cross-field checks), before any stage runs."""
    load_config(params_path, [f"{key}={json.dumps(value)}" for key, value in overrides.items()])


def check_dvc_lock(path: str | os.PathLike[str] = "dvc.lock") -> None:
    """WorkspaceError when the lock file at `path` exists but DVC cannot read it (not UTF-8 YAML, or
    not a lock file's schema: DVC then refuses every stage), read with DVC's own loader and schema,
    before Prefect starts. No lock file is fine: the first run writes it."""
    lock = Path(path)
    if not lock.exists():
        return
    try:
        COMPILED_LOCKFILE_SCHEMA(load_yaml(lock))
    except (DvcException, Invalid) as exc:
        raise WorkspaceError(
            f"{lock} is not a DVC lock file DVC can read ({first_line(exc)}): restore it "
            f"(`git checkout -- {lock.name}`) or delete it to run every stage again"
        ) from exc
