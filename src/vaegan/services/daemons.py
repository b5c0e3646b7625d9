"""Long-running server processes: start one detached with its log and pid file, notice at once when it
dies during start-up, find it again from its pid file, stop it with its children.

A daemon runs in a process group of its own (`start_new_session`), so that stopping it reaches the
processes it started (MLflow's uvicorn workers, Prefect's services) and a Ctrl-C in the terminal
that started the stack does not. Its pid file holds the pid and the command line, so a pid that the
system has given to another program since is recognised as stale, not killed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vaegan.artifacts.atomic_io import write_text
from vaegan.errors import VaeganError

STOP_TIMEOUT_S = 20.0


class ServiceError(VaeganError):
    """A server could not be started, found or stopped; the message names which and why."""


@dataclass(frozen=True)
class Daemon:
    """A named server process: its pid file and its log."""

    name: str
    pid_file: Path
    log_file: Path

    def pid(self) -> int | None:
        """The pid of the running server, None when there is none (or only a stale pid file)."""
        record = self._record()
        if record is None or _start_time(record[0]) != record[1]:
            return None
        return record[0]

    def stale(self) -> bool:
        """True when a pid file is there but its process is gone (the previous run was killed)."""
        record = self._record()
        return record is not None and _start_time(record[0]) != record[1]

    def _record(self) -> tuple[int, int] | None:
        try:
            data = json.loads(self.pid_file.read_text(encoding="utf-8"))
            return int(data["pid"]), int(data["start_time"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` detached (own session), output appended to the log, pid file written."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                user=user,
            )
        record = {"pid": process.pid, "start_time": _start_time(process.pid), "argv": list(argv)}
        write_text(self.pid_file, json.dumps(record))
        return process

    def clear_stale(self) -> bool:
        """Remove a stale pid file; True when there was one."""
        if self.stale():
            self.pid_file.unlink(missing_ok=True)
            return True
        return False

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """SIGTERM to the server's process group, SIGKILL after `timeout_s`; False when none ran."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        stop_group(pid, timeout_s)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the log since this daemon's last start, for error messages."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        since_start = text.rsplit(f"starting {self.name}\n", 1)[-1]
        kept = [line for line in since_start.splitlines() if line.strip()]
        return "\n".join(kept[-lines:])


def stop_group(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to the process group that `pid` leads, then SIGKILL when it outlives `timeout_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _group_alive(pid):
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    """True while a live (not zombie) process is in group `pgid`; reaps a leader that is our child."""
    _reap(pgid)
    return bool(_group_members(pgid))


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        fields = _stat_fields(int(entry.name)) if entry.name.isdigit() else []
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]; [] when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_time(pid: int) -> int:
    """When a live process started (clock ticks after boot), -1 when it is gone or a zombie: with
    the pid it names one process for ever, whatever pid the system hands out later."""
    fields = _stat_fields(pid)
    if not fields or fields[0] == "Z":
        return -1
    return int(fields[19])


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on `host:port`, or the address cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def answers(url: str, auth: str | None = None, *, ok_only: bool = True) -> bool:
    """True when `url` answers (200 when `ok_only`, any HTTP status otherwise)."""
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200 or not ok_only
    except urllib.error.HTTPError:
        return not ok_only
    except (urllib.error.URLError, OSError):
        return False


def wait_until(
    ready: Callable[[], bool],
    *,
    daemon: Daemon,
    process: subprocess.Popen[bytes] | None,
    timeout_s: float,
    what: str,
) -> None:
    """Poll `ready` until it is true; ServiceError at once when the process exits first (with the
    last lines of its log), or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if process is not None and process.poll() is not None:
            raise ServiceError(
                f"{what} exited during start-up (exit {process.returncode}); "
                f"last lines of {daemon.log_file}:\n{daemon.log_tail()}"
            )
        time.sleep(0.5)
    raise ServiceError(f"{what} did not answer within {timeout_s:.0f} s; see {daemon.log_file}")
