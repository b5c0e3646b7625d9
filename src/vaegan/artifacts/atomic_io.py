"""Atomic writes: a reader sees the old file or the new one, never half of one; a write that runs
out of space is an `OutputError` naming the path and the free space, and leaves no staging behind.
And the one reader of the JSON objects they write (`read_json_object`)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vaegan.errors import OutputError

# A write that failed for want of space: the disk, the user's quota, or the largest file allowed.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _staging_prefix(target: Path) -> str:
    """`.<name>.<pid>.`: the staging file or folder says which process writes it."""
    return f".{target.name}.{os.getpid()}."


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_staging(target: Path) -> list[Path]:
    """Remove the staging files and folders of `target` left by a process that is gone (a SIGKILL
    between staging and rename); those of live processes stay. Returns what was removed."""
    removed = []
    for staging in target.parent.glob(f".{target.name}.*.tmp"):
        pid = staging.name[len(target.name) + 2 :].split(".", 1)[0]
        if not pid.isdigit() or _is_running(int(pid)):
            continue
        if staging.is_dir() and not staging.is_symlink():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)
        removed.append(staging)
    return removed


@contextlib.contextmanager
def _out_of_space_is_output_error(target: Path, remove_staging: Callable[[], None]) -> Iterator[None]:
    """An OSError for want of space becomes an OutputError naming `target` and the space that is
    free once the staging is removed (`remove_staging`); so does the OutputError of a file written
    inside a staging folder (it names the folder's target, not the staging); other errors pass."""
    try:
        yield
    except (OSError, OutputError) as exc:
        cause = exc.__cause__ if isinstance(exc, OutputError) else exc
        if not (isinstance(cause, OSError) and cause.errno in NO_SPACE):
            raise
        remove_staging()
        free = shutil.disk_usage(target.parent).free
        raise OutputError(
            f"cannot write {target}: {cause.strerror or os.strerror(cause.errno)} "
            f"({free / 1e6:.1f} MB free in {target.parent}); the previous output is kept"
        ) from cause


def output_file_problem(path: Path) -> str | None:
    """Why a file cannot be written at `path` (a directory there, its folder missing or not
    writable), for a check before the work that produces it; None when it can. A missing folder is
    a problem: a typo in a path should not create folders."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        return f"{path} is a directory; name a file in it"
    if not parent.is_dir():
        return f"directory {parent} does not exist"
    if not os.access(parent, os.W_OK):
        return f"directory {parent} is not writable"
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else delete it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    fd, tmp_name = tempfile.mkstemp(prefix=_staging_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        with _out_of_space_is_output_error(target, lambda: tmp.unlink(missing_ok=True)):
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON to `path` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object in `path`. FileNotFoundError when there is no file; ValueError naming the
    problem when it is not UTF-8 JSON or not an object; other OSErrors as raised."""
    text = Path(path).read_bytes()
    try:
        data = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return data


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces `path` as a whole.

    The previous directory is kept until the new one is complete, so a failure leaves it in place.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), suffix=".tmp", dir=target.parent))
    os.chmod(staging, 0o777 & ~_umask())
    old = target.parent / f".{target.name}.old"
    try:
        with _out_of_space_is_output_error(target, lambda: shutil.rmtree(staging, ignore_errors=True)):
            yield staging
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
