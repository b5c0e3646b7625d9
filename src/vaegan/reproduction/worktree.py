"""The rebuild's sandbox: the recorded commit in a temporary git worktree, with the user's DVC cache
and remotes, the recorded params, and the pipeline's stages run through DVC.

The user's workspace is never touched: the worktree is a separate checkout (`git worktree add
--detach`), removed afterwards. While it runs, the rebuild holds a flock on `owner.lock` beside the
worktree; a `vaegan-reproduce-*` worktree whose lock is free was left by a rebuild that was killed
(its stages died with it: `vaegan.process_group`), and the next rebuild removes it and says
so (`prune_stale_worktrees`). A worktree kept with `--keep` has no lock file and stays.

DVC in the worktree uses the repository's cache directory (data the user already has is not copied
around) and its remotes with their URLs made absolute (a relative local remote is relative to the
repository's `.dvc/`). The stages run the worktree's own code: its `src/` comes first on
PYTHONPATH, ahead of the editable install of the user's checkout.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from vaegan.artifacts.atomic_io import write_text
from vaegan.dvc_commands import error_lines, repro_stage, run_dvc
from vaegan.errors import VaeganError

# The stages that produce the data; every stage after them is rebuilt.
DATA_STAGES = ("fetch", "prepare")
DIRTY = "-dirty"
PREFIX = "vaegan-reproduce-"
OWNER_LOCK = "owner.lock"


class ReproduceError(VaeganError):
    """The rebuild cannot start or go on here: a missing commit, unreachable data, a failed stage."""


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)


def resolve_commit(repo: Path, recorded: str) -> str:
    """The full hash of the recorded commit in `repo` (a `-dirty` suffix stripped); exit 2 when the
    repository does not have it."""
    commit = recorded.removesuffix(DIRTY)
    if commit in ("", "unknown"):
        raise ReproduceError("the model records no git commit (trained outside a git checkout)")
    found = _git(repo, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    if found.returncode != 0 and _git(repo, "rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        # a shallow clone (a worker's `git clone --depth 1` of the team's remote): get the history
        _git(repo, "fetch", "--quiet", "--unshallow", "origin")
        found = _git(repo, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    if found.returncode != 0:
        raise ReproduceError(
            f"commit {commit} is not in the repository {repo}: fetch it (`git fetch origin {commit}`) "
            "or run reproduce in the repository the model was trained from"
        )
    return found.stdout.strip()


def _left_by_killed_rebuild(parent: Path) -> bool:
    """Whether the temporary folder `parent` has an owner lock that nobody holds: its rebuild was
    killed (one that ends removes the folder, or the lock file with `--keep`)."""
    if not parent.name.startswith(PREFIX):
        return False
    try:
        fd = os.open(parent / OWNER_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def registered_worktrees(repo: Path) -> list[Path]:
    """The paths of `repo`'s linked worktrees, as `git worktree list` gives them."""
    listed = _git(repo, "worktree", "list", "--porcelain").stdout.splitlines()
    paths = [Path(line.removeprefix("worktree ")) for line in listed if line.startswith("worktree ")]
    return paths[1:]  # the first is the main working tree


def prune_stale_worktrees(repo: Path, on_line: Callable[[str], None] | None = None) -> list[Path]:
    """Remove the temporary worktrees of rebuilds that were killed (their owner lock is free) and
    `git worktree prune` the registrations of folders already gone; the worktrees removed."""
    removed = []
    for worktree in registered_worktrees(repo):
        if not _left_by_killed_rebuild(worktree.parent):
            continue
        _git(repo, "worktree", "remove", "--force", str(worktree))
        shutil.rmtree(worktree.parent, ignore_errors=True)
        removed.append(worktree)
        if on_line is not None:
            on_line(f"removed the worktree {worktree} that a killed `vaegan reproduce` left behind")
    _git(repo, "worktree", "prune")
    return removed


@contextlib.contextmanager
def temporary_worktree(
    repo: Path, commit: str, keep: bool = False, on_line: Callable[[str], None] | None = None
) -> Iterator[Path]:
    """A detached checkout of `commit` in a temporary folder, removed afterwards unless `keep`;
    the worktrees killed rebuilds left are removed first."""
    prune_stale_worktrees(repo, on_line)
    parent = Path(tempfile.mkdtemp(prefix=PREFIX))
    owner = os.open(parent / OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(owner, fcntl.LOCK_EX)  # released by the kernel should this process be killed
    try:
        worktree = parent / "repo"
        added = _git(repo, "worktree", "add", "--detach", str(worktree), commit)
        if added.returncode != 0:
            shutil.rmtree(parent, ignore_errors=True)
            raise ReproduceError(f"git worktree add of {commit} failed: {added.stderr.strip()}")
        try:
            yield worktree
        finally:
            if keep:
                (parent / OWNER_LOCK).unlink()  # kept on purpose: not a killed rebuild's
            else:
                _git(repo, "worktree", "remove", "--force", str(worktree))
                shutil.rmtree(parent, ignore_errors=True)
                _git(repo, "worktree", "prune")
    finally:
        os.close(owner)


def _dvc_output(args: list[str], repo: Path) -> str:
    code, output = run_dvc(args, repo)
    if code != 0:
        raise ReproduceError(f"dvc {' '.join(args)} failed in {repo}:\n{error_lines(output)}")
    return output


def share_dvc_storage(repo: Path, worktree: Path) -> None:
    """Point the worktree's DVC at the repository's cache and remotes (in its `.dvc/config.local`,
    which starts as a copy of the repository's: remote credentials live there)."""
    local = repo / ".dvc" / "config.local"
    if local.is_file():
        shutil.copyfile(local, worktree / ".dvc" / "config.local")
    cache = _dvc_output(["cache", "dir"], repo).strip().splitlines()[-1]
    _dvc_output(["cache", "dir", "--local", cache], worktree)
    for line in _dvc_output(["remote", "list"], repo).splitlines():
        fields = line.split()  # `name url [(default)]`, a local url already made absolute by DVC
        if len(fields) < 2 or "://" in fields[1]:
            continue  # a cloud remote reads the same from anywhere
        name, url = fields[0], fields[1]
        absolute = Path(url) if Path(url).is_absolute() else (repo / ".dvc" / url).resolve()
        _dvc_output(["remote", "modify", "--local", name, "url", str(absolute)], worktree)


def write_params(worktree: Path, params: Mapping[str, Any]) -> None:
    """Replace the worktree's params.yaml with the recorded config."""
    write_text(worktree / "params.yaml", yaml.safe_dump(dict(params), sort_keys=False))


def worktree_python_path(worktree: Path) -> str:
    """PYTHONPATH with the worktree's `src/` first: `import vaegan` then loads the commit's code."""
    return os.pathsep.join(p for p in (str(worktree / "src"), os.environ.get("PYTHONPATH", "")) if p)


def stage_environment(worktree: Path, tracking_uri: str) -> dict[str, str]:
    """What the stages run with: the worktree's code, the user's MLflow store."""
    return {"PYTHONPATH": worktree_python_path(worktree), "MLFLOW_TRACKING_URI": tracking_uri}


def pipeline_stages(worktree: Path) -> list[str]:
    """The stages of the worktree's dvc.yaml, in the file's order (written in dependency order)."""
    document = yaml.safe_load((worktree / "dvc.yaml").read_text(encoding="utf-8")) or {}
    return list(document.get("stages") or {})


def get_data(
    worktree: Path, stages: list[str], env: Mapping[str, str], on_line: Callable[[str], None] | None = None
) -> None:
    """The data stages among `stages` through DVC: outputs from the cache or remote when the
    commit's dvc.lock matches the recorded params, else the stages run (never from the run cache)."""
    targets = [stage for stage in DATA_STAGES if stage in stages]
    code, output = run_dvc(["repro", "--pull", "--no-run-cache", *targets], worktree, on_line, env=env)
    if code != 0:
        raise ReproduceError(f"could not get the data through DVC (exit {code}):\n{error_lines(output)}")


def rebuild_stages(
    worktree: Path, stages: list[str], env: Mapping[str, str], on_line: Callable[[str], None] | None = None
) -> list[str]:
    """Run every stage of `stages` after the data ones, each forced and never from DVC's run cache."""
    rebuilt = [stage for stage in stages if stage not in DATA_STAGES]
    flags = ("--single-item", "--force", "--no-run-cache")
    for stage in rebuilt:
        repro_stage(stage, worktree, on_line, flags=flags, env=env)
    return rebuilt
