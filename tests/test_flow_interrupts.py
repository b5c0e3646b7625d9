"""`python -m pipelines.retrain` on a real day: started twice, interrupted with Ctrl-C, killed.

Each test runs the real command in a subprocess on a copy of a tiny pipeline that DVC has built
once (real stages, training included), in a process group of its own as a terminal runs a job, and
sends the signals a user does: Ctrl-C to the whole group, SIGKILL to the command."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from tests.test_flows import TINY_PARAMS, _tree_digest, make_pipeline_repo
from vaegan import dvc_commands

pytestmark = pytest.mark.slow  # real DVC stages, training, a Prefect server per run: minutes

REPO_ROOT = Path(__file__).resolve().parents[1]
LONG_TRAIN = ("--set", "train.epochs=50")  # a train stage still running when the signal comes
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _sigint_at_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Retrain:
    """`python -m pipelines.retrain --profile none --no-push --no-promote ARGS` running in `repo`,
    its output collected line by line."""

    def __init__(self, repo: Path, prefect_home: Path, *args: str) -> None:
        paths = [str(REPO_ROOT / "src"), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "PREFECT_HOME": str(prefect_home),  # one per run: two servers on one SQLite file lock up
        }
        argv = ["-m", "pipelines.retrain", "--profile", "none", "--no-push", "--no-promote", *args]
        self.process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own group, as a terminal's job: Ctrl-C goes to all of it
            # and SIGINT at its default, as a terminal's job has it: a suite started in the
            # background by a non-interactive shell (`make test-slow &`) ignores SIGINT, a child
            # inherits that, and Python then installs no KeyboardInterrupt handler at all
            preexec_fn=_sigint_at_default,
        )
        self.pid = self.process.pid
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.output:
            assert self.process.poll() is None, f"exited {self.process.returncode}:\n{self.output[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} in {timeout_s} s:\n{self.output[-3000:]}"
            time.sleep(0.1)

    def wait_for_training(self) -> list[psutil.Process]:
        """Wait until `vaegan train` runs under the command; every process under it then."""
        self.wait_for("Running stage 'train'")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            family = psutil.Process(self.pid).children(recursive=True)
            if any("vaegan train" in " ".join(p.cmdline()) for p in family if p.is_running()):
                return family
            time.sleep(0.1)
        raise AssertionError(f"no `vaegan train` under the command:\n{self.output[-3000:]}")

    def wait(self, timeout_s: float) -> int:
        code = self.process.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        return code


def alive_after(processes: list[psutil.Process], timeout_s: float) -> list[str]:
    """The command lines of `processes` still running (zombies count as gone) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(" ".join(process.cmdline()))
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


@pytest.fixture(scope="module")
def built_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline, every stage run once by `dvc repro` (params.yaml holds TINY_PARAMS)."""
    repo = make_pipeline_repo(tmp_path_factory.mktemp("built"))
    dvc_commands.apply_params(TINY_PARAMS, repo)
    code, output = dvc_commands.run_dvc(["repro"], repo)
    assert code == 0, dvc_commands.error_lines(output)
    return repo


def kill_processes_in(folder: Path) -> list[str]:
    """Kill every process working in `folder` (what a failing test leaves running); their commands."""
    killed = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if process.pid != os.getpid() and Path(process.cwd()).is_relative_to(folder):
                killed.append(" ".join(process.cmdline()))
                process.kill()
    return killed


@pytest.fixture
def repo(built_repo: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the built pipeline for one test; whatever still works in it at the end is killed."""
    copy = tmp_path / "repo"
    # A copy is a workspace of its own: it starts with its own MLflow store (a copied store is
    # refused, `vaegan.tracking.store`), DVC's outputs and cache as built.
    shutil.copytree(
        built_repo, copy, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db*", "mlartifacts")
    )
    yield copy
    kill_processes_in(copy)


def test_a_second_retrain_exits_2_naming_the_first_which_finishes_intact(repo: Path, tmp_path: Path) -> None:
    """The second used to write its params under the running stage and restore over it."""
    lr = yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"]
    first = Retrain(repo, tmp_path / "prefect-1", "--set", "train.epochs=2")
    first.wait_for_training()
    second = Retrain(repo, tmp_path / "prefect-2", "--set", f"train.lr={lr * 2}")
    assert second.wait(timeout_s=120) == 2, second.output[-3000:]
    assert f"retrain: error: {repo} is in use by another retrain (pid {first.pid}, started " in second.output
    assert "--set train.epochs=2`" in second.output  # the first one's command
    assert "Starting temporary server" not in second.output
    assert first.wait(timeout_s=900) == 0, first.output[-3000:]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert (params["train"]["epochs"], params["train"]["lr"]) == (2, lr)
    code, status = dvc_commands.run_dvc(["status"], repo)
    assert code == 0 and "Data and pipelines are up to date." in status, status  # models/vaegan.pt too


def test_one_ctrl_c_stops_the_stage_restores_stops_the_server_and_exits_130(
    repo: Path, tmp_path: Path
) -> None:
    """One Ctrl-C used to stop the flow's Prefect server with it: the flow then hung for minutes."""
    before = _tree_digest(repo)
    run = Retrain(repo, tmp_path / "prefect", *LONG_TRAIN)
    family = run.wait_for_training()
    sent = time.monotonic()
    os.killpg(run.pid, signal.SIGINT)  # a terminal's Ctrl-C: every process of the foreground group
    code = run.wait(timeout_s=120)
    from_signal = run.output[run.output.find("Running stage 'train'") :]
    assert code == 130, f"{from_signal[:3000]}\n[...]\n{from_signal[-3000:]}"  # from the signal, the end
    assert time.monotonic() - sent < 30
    assert run.output.rstrip().endswith("retrain: interrupted")
    assert "run interrupted: the workspace is as before this run" in run.output
    assert alive_after(family, timeout_s=5) == []
    assert _tree_digest(repo) == before


def test_a_killed_retrain_takes_its_children_along_and_the_next_run_restores(
    repo: Path, tmp_path: Path
) -> None:
    """SIGKILL used to leave the Prefect server, `dvc repro` and `vaegan train` running, params.yaml
    edited and models/vaegan.pt deleted, and the next run started from that."""
    before = _tree_digest(repo)
    run = Retrain(repo, tmp_path / "prefect", *LONG_TRAIN)
    family = run.wait_for_training()
    assert len(family) >= 3  # the Prefect server, DVC, the stage (and the keepers now)
    os.kill(run.pid, signal.SIGKILL)
    run.wait(timeout_s=30)
    assert alive_after(family, timeout_s=10) == []
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["epochs"] == 50
    assert not (repo / "models" / "vaegan.pt").exists()  # what the kill left: DVC removed it

    following = Retrain(repo, tmp_path / "prefect-next")
    assert following.wait(timeout_s=600) == 0, following.output[-3000:]
    assert f"a retrain was killed in this workspace (pid {run.pid}, started " in following.output
    assert "its changes are undone: the workspace is at its last good state" in following.output
    assert "stage train was cached" in following.output  # it started from the last good state
    after = _tree_digest(repo)
    assert after.pop("mlflow.db.registry.lock") == EMPTY_SHA256  # its registration's lock: new
    assert after == before
