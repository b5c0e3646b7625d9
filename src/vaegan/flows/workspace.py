"""Putting a DVC workspace back as it was before a failed flow run.

`dvc repro` removes a stage's outputs before running it, so a stage that fails leaves them gone,
and the flow has already written its overrides into params.yaml. `WorkspaceSnapshot.take` keeps
what DVC's cache cannot give back: the bytes of params.yaml and dvc.lock, and of every output
declared `cache: false` (the metrics and history files; `persist` outputs such as the resume
checkpoints are never removed by DVC and are left alone). `restore` writes those back and runs
`dvc checkout`, which brings every cached output back to the version the restored dvc.lock names
(the new versions a partly successful run produced stay in the cache and in DVC's run cache, so
re-running the same params restores them instead of recomputing).

A snapshot is kept on disk too (`save`, `load`): a run that is killed cannot restore anything, so
the next run restores from what the killed one saved (`vaegan.flows.workspace_lock`). Restoring
is not interrupted by Ctrl-C: an interrupt stops the run and its restore goes on to the end.

By hand, after a failed `dvc repro`: `git checkout -- params.yaml dvc.lock metrics && dvc checkout`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dvc.repo import Repo

from vaegan.artifacts.atomic_io import atomic_directory, read_json_object, write_bytes, write_json
from vaegan.dvc_commands import StageFailed, run_dvc

KEPT_FILES = ("params.yaml", "dvc.lock")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class WorkspaceSnapshot:
    """The bytes of params.yaml, dvc.lock and the uncached outputs (None: the file did not exist)."""

    repo_dir: Path
    files: dict[str, bytes | None]

    @classmethod
    def take(cls, repo_dir: str | os.PathLike[str] = ".") -> WorkspaceSnapshot:
        root = Path(repo_dir).resolve()
        with Repo(str(root)) as repo:
            uncached = [
                Path(out.fs_path).relative_to(root).as_posix()
                for out in repo.index.outs
                if not out.use_cache and not out.persist
            ]
        files: dict[str, bytes | None] = {}
        for name in (*KEPT_FILES, *uncached):
            path = root / name
            if path.is_dir():
                continue  # an uncached directory output: none in this pipeline
            files[name] = _read(path)
        return cls(root, files)

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write the snapshot into `folder` (replaced as a whole, atomically): one file per kept file
        and a manifest naming them."""
        with atomic_directory(folder) as staging:
            stored: dict[str, str | None] = {}
            for index, (name, data) in enumerate(self.files.items()):
                stored[name] = None if data is None else str(index)
                if data is not None:
                    (staging / str(index)).write_bytes(data)
            write_json(staging / MANIFEST, {"repo_dir": str(self.repo_dir), "files": stored})

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> WorkspaceSnapshot:
        """The snapshot `save` wrote into `folder`."""
        manifest = read_json_object(Path(folder) / MANIFEST)
        files = {
            name: None if stored is None else (Path(folder) / stored).read_bytes()
            for name, stored in manifest["files"].items()
        }
        return cls(Path(manifest["repo_dir"]), files)

    def changed(self) -> list[str]:
        """The kept files whose bytes differ now from the snapshot's."""
        return [name for name, data in self.files.items() if _read(self.repo_dir / name) != data]

    def restore(self, on_line: Callable[[str], None] | None = None) -> list[str]:
        """Write the kept files back (deleting those that did not exist), then `dvc checkout`; the
        names of the files that had changed. StageFailed when the checkout fails."""
        with _ctrl_c_deferred(on_line):
            return self._restore(on_line)

    def _restore(self, on_line: Callable[[str], None] | None) -> list[str]:
        changed = self.changed()
        for name in changed:
            data, path = self.files[name], self.repo_dir / name
            if data is None:
                path.unlink(missing_ok=True)
            else:
                write_bytes(path, data)
        if (self.repo_dir / "dvc.lock").is_file():
            code, output = run_dvc(["checkout", "--force"], self.repo_dir, on_line)
            if code != 0:
                raise StageFailed(f"dvc checkout failed restoring the workspace (exit {code}):\n{output}")
        return changed


@contextlib.contextmanager
def _ctrl_c_deferred(on_line: Callable[[str], None] | None) -> Iterator[None]:
    """Ctrl-C does not stop the `with` body (it says so); run in the main thread, else a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def deferred(_signum: int, _frame: object) -> None:
        if on_line is not None:
            on_line("interrupt ignored: the workspace is being restored, it takes a few seconds")

    previous = signal.signal(signal.SIGINT, deferred)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None
