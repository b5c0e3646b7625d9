"""One retrain per workspace and what a killed one leaves (issue: a run interrupted, killed, started
twice), with real processes: a holder of the workspace lock in a child process, a second
`python -m pipelines.retrain` refused at once, a holder SIGKILLed after it edited params.yaml and
the next holder restoring it; and the process groups that die with the process that started them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from vaegan import process_group
from vaegan.dvc_commands import StageFailed, repro_stage, run_dvc
from vaegan.flows import workspace_lock
from vaegan.flows.workspace import WorkspaceSnapshot

REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS = "train:\n  epochs: 1\n"

# A retrain's first steps in a child process: hold the workspace, keep the snapshot, edit
# params.yaml, say so, then wait to be killed.
HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from vaegan.flows import workspace_lock
    from vaegan.flows.workspace import WorkspaceSnapshot

    repo = Path(sys.argv[1])
    with workspace_lock.hold(repo, command="the first retrain") as held:
        held.keep(WorkspaceSnapshot.take(repo))
        (repo / "params.yaml").write_text("train:\\n  epochs: 99\\n")
        print("edited", flush=True)
        time.sleep(600)
    """
)


def _child_env() -> dict[str, str]:
    paths = [str(REPO_ROOT / "src"), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A git + DVC workspace holding params.yaml (no stages)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    assert run_dvc(["init", "-q"], repo)[0] == 0
    (repo / "params.yaml").write_bytes((REPO_ROOT / "params.yaml").read_bytes())
    return repo


@pytest.fixture
def holder(workspace: Path) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workspace)], stdout=subprocess.PIPE, text=True, env=_child_env()
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "edited"
    yield process
    process.kill()
    process.wait()


def test_a_second_retrain_exits_2_at_once_naming_the_running_one(
    workspace: Path, holder: subprocess.Popen[str]
) -> None:
    """It used to start Prefect, rewrite params.yaml under the running stage and fail 55 s later on
    DVC's lock message, cut before the line naming the other process."""
    params_during_run = (workspace / "params.yaml").read_bytes()
    started = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "pipelines.retrain", "--profile", "none", "--no-push"],
        cwd=workspace,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.monotonic() - started
    assert second.returncode == 2, second.stderr[-2000:]
    err = second.stderr.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"retrain: error: {workspace} is in use by another retrain (pid {holder.pid}, ")
    assert "started 20" in err[0] and "command `the first retrain`" in err[0]
    assert "Starting temporary server" not in second.stdout + second.stderr  # Prefect never started
    assert seconds < 60  # imports on a busy 2-core machine; the flow's run took minutes
    assert (workspace / "params.yaml").read_bytes() == params_during_run  # the first run's, untouched
    assert holder.poll() is None


def test_the_next_holder_takes_a_killed_runs_lock_over_and_restores_params(
    workspace: Path, holder: subprocess.Popen[str]
) -> None:
    before_run = (REPO_ROOT / "params.yaml").read_bytes()
    assert (workspace / "params.yaml").read_text() == "train:\n  epochs: 99\n"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lines: list[str] = []
    with workspace_lock.hold(workspace, command="the next retrain", on_line=lines.append) as held:
        assert held.record["pid"] == os.getpid()
        assert (workspace / "params.yaml").read_bytes() == before_run  # restored before the body
        assert not workspace_lock.snapshot_dir(workspace).exists()
        with pytest.raises(workspace_lock.WorkspaceBusy, match=f"pid {os.getpid()}.*the next retrain"):
            workspace_lock.check_free(workspace)
    assert lines[0] == (
        f"a retrain was killed in this workspace (pid {holder.pid}, started "
        f"{lines[0].split('started ')[1].split(',')[0]}, command `the first retrain`): taking its lock over"
    )
    assert lines[-1].startswith("its changes are undone: the workspace is at its last good state")
    assert "files put back: params.yaml" in lines[-1]
    # released cleanly: the next one takes it over silently
    workspace_lock.check_free(workspace)
    quiet: list[str] = []
    with workspace_lock.hold(workspace, on_line=quiet.append):
        pass
    assert quiet == []


def test_a_snapshot_round_trips_through_disk(workspace: Path, tmp_path: Path) -> None:
    snapshot = WorkspaceSnapshot.take(workspace)
    assert (
        snapshot.files["dvc.lock"] is None
        and snapshot.files["params.yaml"] == (REPO_ROOT / "params.yaml").read_bytes()
    )
    snapshot.save(tmp_path / "kept")
    assert WorkspaceSnapshot.load(tmp_path / "kept") == snapshot


def _descendants_alive(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def test_a_group_dies_with_the_process_that_started_it_even_by_sigkill(tmp_path: Path) -> None:
    """The command's own children too (a stage under `dvc repro`): the kernel tells the keeper."""
    starter = textwrap.dedent(
        """
        import sys, time
        from vaegan import process_group
        process = process_group.start(["sh", "-c", "sleep 600 & sleep 600"])
        print(process.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True, env=_child_env()
    )
    assert parent.stdout is not None
    keeper = int(parent.stdout.readline())
    deadline = time.monotonic() + 30
    while len(psutil.Process(keeper).children(recursive=True)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    group = [psutil.Process(keeper), *psutil.Process(keeper).children(recursive=True)]
    assert len(group) == 4 and {os.getpgid(p.pid) for p in group} == {keeper} != {os.getpgid(parent.pid)}
    parent.kill()
    parent.wait()
    assert _descendants_alive(group, timeout_s=10) == []


def test_stop_ends_the_whole_group_and_the_exit_status_is_the_commands() -> None:
    process = process_group.start(["sh", "-c", "sleep 600 & sleep 600"])
    time.sleep(0.5)
    process_group.stop(process)
    assert not process_group.group_alive(process.pid)
    assert process_group.start(["sh", "-c", "exit 3"]).wait() == 3
    assert process_group.start(["sh", "-c", "kill -9 $$"]).wait() == 128 + 9


def test_a_stage_blocked_by_another_dvc_command_says_which(workspace: Path) -> None:
    """DVC names the blocking process on the lines after its error line; they used to be cut."""
    (workspace / "dvc.yaml").write_text(
        "stages:\n  hello:\n    cmd: echo hi > out.txt\n    outs:\n      - out.txt\n"
    )
    blocker = {"pid": os.getpid(), "cmd": "dvc repro train (the other run)"}
    rwlock = {"read": {}, "write": {str(workspace / "out.txt"): blocker}}
    (workspace / ".dvc" / "tmp").mkdir(exist_ok=True)
    (workspace / ".dvc" / "tmp" / "rwlock").write_text(json.dumps(rwlock))
    with pytest.raises(StageFailed) as failure:
        repro_stage("hello", workspace)
    message = str(failure.value).splitlines()
    assert message[1].endswith(f"{workspace / 'out.txt'}' is busy, it is being blocked by:"), message
    assert message[2] == f"  (PID {os.getpid()}): dvc repro train (the other run)"
