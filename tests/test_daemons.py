"""Server processes the project starts itself: a daemon and its children stop together, a pid file
whose process is gone is stale (also when the pid is reused), a server that dies during start-up is
noticed at once with its own last lines, a taken port is named (`make serve` included)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vaegan.services.daemons import Daemon, ServiceError, port_in_use, wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
PARENT_WITH_CHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_daemon_stops_with_its_children_and_its_pid_file_goes(tmp_path: Path) -> None:
    daemon = Daemon("server", tmp_path / "run" / "server.pid", tmp_path / "logs" / "server.log")
    process = daemon.start([sys.executable, "-c", PARENT_WITH_CHILD])
    deadline = time.monotonic() + 30
    while not daemon.log_file.read_text().strip().splitlines()[-1].isdigit():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    child = int(daemon.log_file.read_text().strip().splitlines()[-1])
    assert daemon.pid() == process.pid and alive(child)
    assert os.getpgid(process.pid) == process.pid != os.getpgid(0)  # its own group, not ours
    assert daemon.stop() is True
    assert not alive(process.pid) and not alive(child)
    assert not daemon.pid_file.exists() and daemon.pid() is None
    assert daemon.stop() is False  # nothing runs


def test_a_pid_file_of_a_dead_process_is_stale_even_when_its_pid_is_taken_again(tmp_path: Path) -> None:
    daemon = Daemon("server", tmp_path / "server.pid", tmp_path / "server.log")
    process = daemon.start([sys.executable, "-c", "import time; time.sleep(600)"])
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert daemon.stale() and daemon.pid() is None
    assert daemon.clear_stale() and not daemon.pid_file.exists() and not daemon.clear_stale()
    # a live process of somebody else's with the recorded pid is not ours: only its start time differs
    other = daemon.start([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        record = daemon.pid_file.read_text().replace('"start_time": ', '"start_time": 1')
        daemon.pid_file.write_text(record)
        assert daemon.stale() and daemon.pid() is None
    finally:
        other.kill()
        other.wait()


def test_a_server_that_dies_during_start_up_is_noticed_at_once_with_its_last_lines(tmp_path: Path) -> None:
    daemon = Daemon("mlflow", tmp_path / "mlflow.pid", tmp_path / "mlflow.log")
    dying = (
        "import sys, time; time.sleep(0.5); print('ERROR: [Errno 98] Address already in use'); sys.exit(1)"
    )
    process = daemon.start([sys.executable, "-c", dying])
    started = time.monotonic()
    with pytest.raises(ServiceError) as failure:
        wait_until(lambda: False, daemon=daemon, process=process, timeout_s=300, what="the mlflow server")
    assert time.monotonic() - started < 10
    assert str(failure.value).startswith("the mlflow server exited during start-up (exit 1); last lines of")
    assert str(failure.value).endswith("ERROR: [Errno 98] Address already in use")


def test_serve_names_a_taken_port_in_one_line_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")
        }
        env["PYTHONPATH"] = str(REPO_ROOT)
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.serve", "--mlflow-port", str(port)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"serve: error: port {port} on 127.0.0.1 (mlflow) is taken by another program: "
        "stop it or pass --mlflow-port"
    ]
    assert time.monotonic() - started < 60
    assert not (tmp_path / ".serve" / "mlflow.pid").exists()
