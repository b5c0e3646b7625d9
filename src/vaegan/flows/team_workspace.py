"""What a flow does in team mode (the variables of `.team/env` are set): use the team's DVC remote
(`vaegan.dvc_commands.use_team_remote`), and, in a per-run clone of the team's git remote, publish
what the run produced as a branch.

A worker runs each flow run in a fresh clone of the team's git remote (prefect.yaml's pull steps),
inside a temporary folder that the worker deletes afterwards. Nothing of the run may live only
there: its DVC outputs go to the team remote (`dvc push`), its MLflow runs and registered versions
to the tracking server, and its params.yaml, dvc.lock and metrics to a branch `runs/<flow run>` of
the team's git remote, so that anyone can `git checkout runs/<flow run> && dvc pull` what it built.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from vaegan.dvc_commands import REMOTE_URL_VARIABLE
from vaegan.errors import VaeganError

GIT_REMOTE_VARIABLE = "VAEGAN_GIT_REMOTE"
RUN_BRANCH_PREFIX = "runs/"


class PublishFailed(VaeganError):
    """The run's params and dvc.lock could not be pushed to the team's git remote."""

    exit_code = 1


def in_team_mode() -> bool:
    return bool(os.environ.get(REMOTE_URL_VARIABLE))


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)


def is_team_clone(repo_dir: str | os.PathLike[str] = ".") -> bool:
    """True when `repo_dir` is a clone of the team's git remote (a worker's per-run workspace)."""
    remote = os.environ.get(GIT_REMOTE_VARIABLE)
    if not remote:
        return False
    origin = _git(Path(repo_dir), "remote", "get-url", "origin")
    return origin.returncode == 0 and _same_remote(origin.stdout.strip(), remote)


def _same_remote(a: str, b: str) -> bool:
    def norm(url: str) -> str:
        return url.removeprefix("file://").rstrip("/")

    return norm(a) == norm(b)


def publish_run(run_name: str, message: str, repo_dir: str | os.PathLike[str] = ".") -> str:
    """Commit the tracked files the run changed (params.yaml, dvc.lock, metrics) and push them as
    branch `runs/<run_name>` of origin; the branch name. PublishFailed when git refuses."""
    repo = Path(repo_dir)
    branch = RUN_BRANCH_PREFIX + run_name
    identity = ["-c", "user.name=vaegan worker", "-c", "user.email=worker@vaegan.invalid"]
    steps = [
        ["add", "--update"],
        [*identity, "commit", "--allow-empty", "--quiet", "-m", message],
        ["push", "--quiet", "origin", f"HEAD:refs/heads/{branch}"],
    ]
    for args in steps:
        done = _git(repo, *args)
        if done.returncode != 0:
            verb = next(arg for arg in args if arg in ("add", "commit", "push"))
            raise PublishFailed(f"git {verb} of {branch} failed: {(done.stderr or done.stdout).strip()}")
    return branch
