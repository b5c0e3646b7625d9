"""One retrain at a time in a workspace, and the last good state kept on disk until a run is over.

`hold(repo_dir)` takes an exclusive flock on `.dvc/tmp/vaegan-retrain/lock` before the run touches
anything, and writes into that file who holds it (pid, start time, command). A second run finds the
lock taken and stops at once naming the holder (`WorkspaceBusy`, exit 2); `check_free` asks the same
question without taking the lock (the flow commands ask it before they start Prefect).

A flock dies with its process. A lock that is free while its file still names a holder was held by a
run that was killed (a holder that ends, however it ends short of a kill, empties the file): the
next run takes the lock over and says so. The run saves its pre-run `WorkspaceSnapshot` into
`.dvc/tmp/vaegan-retrain/snapshot/` before it edits params.yaml (`HeldWorkspace.keep`) and drops it
when the run is over, completed or restored (`HeldWorkspace.settled`). A snapshot still there when
the lock is taken is a killed run's (or one whose restore failed): the workspace is put back from it
(params.yaml, dvc.lock, the uncached outputs, then `dvc checkout` of the cached ones) before
anything else, and the run says so.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaegan.artifacts.atomic_io import remove_stale_staging
from vaegan.errors import VaeganError
from vaegan.flows.workspace import KEPT_FILES, MANIFEST, WorkspaceSnapshot

STATE_DIR = Path(".dvc") / "tmp" / "vaegan-retrain"  # DVC's own .gitignore leaves .dvc/tmp out of git
_RECORD_WAIT_S = 2.0  # how long a holder may take to write its record after taking the lock


class WorkspaceBusy(VaeganError):
    """Another retrain holds the workspace."""


def lock_path(repo_dir: str | os.PathLike[str]) -> Path:
    """The lock file of the workspace `repo_dir`."""
    return Path(repo_dir).resolve() / STATE_DIR / "lock"


def snapshot_dir(repo_dir: str | os.PathLike[str]) -> Path:
    """Where the running retrain keeps the workspace as it was before it."""
    return Path(repo_dir).resolve() / STATE_DIR / "snapshot"


def describe(record: dict[str, Any]) -> str:
    """`pid 123, started 2025-01-01T10:00:00+00:00, command `python -m pipelines.retrain``."""
    return (
        f"pid {record.get('pid', '?')}, started {record.get('started_at', '?')}, "
        f"command `{record.get('command', '?')}`"
    )


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


def _read_record(fd: int) -> dict[str, Any]:
    text = os.pread(fd, 1 << 16, 0)
    if not text.strip():
        return {}
    try:
        record = json.loads(text)
    except ValueError:
        return {"command": f"unreadable record {text[:80]!r}"}
    return record if isinstance(record, dict) else {}


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _busy(fd: int, root: Path) -> WorkspaceBusy:
    deadline = time.monotonic() + _RECORD_WAIT_S
    record = _read_record(fd)
    while not record and time.monotonic() < deadline:  # the holder is writing it now
        time.sleep(0.05)
        record = _read_record(fd)
    pid = record.get("pid", "?")
    return WorkspaceBusy(
        f"{root} is in use by another retrain ({describe(record)}): wait for it to end, "
        f"or stop it with Ctrl-C in its terminal or `kill -INT {pid}` (its run is then undone)"
    )


def check_free(repo_dir: str | os.PathLike[str] = ".") -> None:
    """WorkspaceBusy naming the holder when a retrain holds `repo_dir`; touches nothing else."""
    path = lock_path(repo_dir)
    if not path.is_file():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if not _try_lock(fd):
            raise _busy(fd, Path(repo_dir).resolve())
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class HeldWorkspace:
    """The lock of a workspace, held by this process (`hold`)."""

    repo_dir: Path
    record: dict[str, Any]

    def keep(self, snapshot: WorkspaceSnapshot) -> WorkspaceSnapshot:
        """Save `snapshot` where a later run finds it should this one be killed; returns it."""
        snapshot.save(snapshot_dir(self.repo_dir))
        return snapshot

    def settled(self) -> None:
        """The run is over and the workspace is good (completed, or restored): drop the snapshot."""
        shutil.rmtree(snapshot_dir(self.repo_dir), ignore_errors=True)


def recover_unfinished_run(
    repo_dir: Path, previous: dict[str, Any], on_line: Callable[[str], None]
) -> list[str] | None:
    """Put back the workspace a killed run left: its staging files removed, its snapshot restored.
    The files put back; None when no run was left unfinished."""
    folder = snapshot_dir(repo_dir)
    if not previous and not folder.is_dir():
        return None
    if previous:
        on_line(f"a retrain was killed in this workspace ({describe(previous)}): taking its lock over")
    else:
        on_line("the last retrain in this workspace did not finish putting it back: doing it now")
    for name in KEPT_FILES:
        for staging in remove_stale_staging(repo_dir / name):
            on_line(f"removed its unfinished write {staging.relative_to(repo_dir)}")
    if not (folder / MANIFEST).is_file():  # killed before it saved the snapshot: nothing was touched
        shutil.rmtree(folder, ignore_errors=True)
        return []
    restored = WorkspaceSnapshot.load(folder).restore(on_line=on_line)
    shutil.rmtree(folder, ignore_errors=True)
    on_line(
        "its changes are undone: the workspace is at its last good state "
        f"(files put back: {', '.join(restored) or 'none'}; cached outputs checked out again)"
    )
    return restored


@contextlib.contextmanager
def hold(
    repo_dir: str | os.PathLike[str] = ".",
    *,
    command: str | None = None,
    on_line: Callable[[str], None] = print,
) -> Iterator[HeldWorkspace]:
    """Hold the workspace `repo_dir` for the `with` body: WorkspaceBusy at once when another retrain
    holds it; a killed run's leftovers are restored first (module docstring). `command` is what the
    record names (default: this process's command line)."""
    root = Path(repo_dir).resolve()
    path = lock_path(root)
    fd = _open(path)
    try:
        if not _try_lock(fd):
            raise _busy(fd, root)
        try:
            previous = _read_record(fd)
            record = {
                "pid": os.getpid(),
                "started_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": command or shlex.join(sys.orig_argv),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
            recover_unfinished_run(root, previous, on_line)
            yield HeldWorkspace(root, record)
        finally:
            os.ftruncate(fd, 0)  # ended, not killed
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
