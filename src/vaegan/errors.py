"""User-facing errors: each one ends a command with a one-line message and a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable

INTERRUPTED = 130  # 128 + SIGINT


class VaeganError(Exception):
    """A problem the user can fix (bad params, bad data file, bad checkpoint). Exit code 2."""

    exit_code = 2


class ConfigError(VaeganError):
    """An unknown key, wrong type or out-of-range value in params or --set overrides."""


class DataError(VaeganError):
    """A missing, truncated or corrupted data file, or a failed download."""


class OutputError(VaeganError):
    """An output cannot be written (a full disk or quota); the previous output is left as it was."""


class WorkspaceError(VaeganError):
    """A file of the workspace's own state (dvc.lock) that its tools cannot read."""


class CheckpointError(VaeganError):
    """A checkpoint that is missing, unreadable or from an incompatible model."""


class TrainingError(VaeganError):
    """Training cannot go on (for example a non-finite loss)."""

    exit_code = 1


class RegistryError(VaeganError):
    """The MLflow tracking server or model registry refused or failed a request."""


class ServiceUnavailable(RegistryError):
    """A service (the MLflow tracking server) did not answer: the one failure worth retrying."""


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message (its type name when the message is empty), for one-line
    errors that wrap a library's multi-line one."""
    message = str(exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__


def run_command(prog: str, body: Callable[[], int]) -> int:
    """Run a command's `body` (a flow's, `vaegan.team`'s); a `VaeganError` becomes its message on
    stderr (one line, or the failed stage's error lines) and its exit code, Ctrl-C exit 130 (the
    shell's code for SIGINT)."""
    try:
        return body()
    except VaeganError as exc:
        message = str(exc).strip() or first_line(exc)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
