"""The flow commands' temporary Prefect server, owned by the command.

Without `PREFECT_API_URL` Prefect starts a temporary API server as a plain child of the flow: in the
terminal's process group, so one Ctrl-C stops it under the flow (which then hangs on `ConnectError`
while it tries to record the interrupt and restore the workspace), and a SIGKILL of the flow leaves
it running. `temporary_server` starts the same server (Prefect's uvicorn app factory, as
`prefect.server.api.server.SubprocessASGIServer` runs it) in a process group of its own that dies
with the command (`vaegan.process_group`), points Prefect at it for the `with` body, and stops
it at the end. A server the user configured (`PREFECT_API_URL`) is used as it is.

Start it from the main thread: the server dies with the thread that started it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import prefect
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    get_current_settings,
    temporary_settings,
)

from vaegan import process_group
from vaegan.errors import VaeganError


class ServerDidNotStart(VaeganError):
    """The temporary Prefect server exited or did not answer in time."""

    exit_code = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(port: int) -> list[str]:
    """Prefect's temporary API server on `port` (the command SubprocessASGIServer runs)."""
    return [
        sys.executable, "-m", "uvicorn",
        "--app-dir", str(Path(prefect.__file__).parent.parent),
        "--factory", "prefect.server.api.server:create_app",
        "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "error", "--lifespan", "on",
    ]  # fmt: skip


def server_environment() -> dict[str, str]:
    """This process's environment and Prefect settings, the UI off, marked temporary (as Prefect does)."""
    return {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
    }


def wait_until_healthy(process: subprocess.Popen[Any], api_url: str, timeout_s: float) -> None:
    """Return once `api_url/health` answers 200; ServerDidNotStart when the server exits first or
    `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServerDidNotStart(f"the temporary Prefect server exited (status {process.returncode})")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{api_url}/health").status_code == 200:
                    return
            time.sleep(0.1)
    raise ServerDidNotStart(
        f"the temporary Prefect server did not answer within {timeout_s:g} s "
        "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)"
    )


def _drain_prefect_workers() -> None:
    """Send the logs and events still queued, while the server is there to take them."""
    with contextlib.suppress(RuntimeError):  # a worker that never started
        APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


@contextlib.contextmanager
def temporary_server() -> Iterator[str]:
    """A Prefect API server for the `with` body, stopped at its end or with this process; yields
    its API URL (the user's own, untouched, when `PREFECT_API_URL` is set)."""
    configured = PREFECT_API_URL.value()
    if configured:
        yield str(configured)
        return
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    process = process_group.start(server_command(port), env=server_environment())
    try:
        wait_until_healthy(process, api_url, float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
        with temporary_settings({PREFECT_API_URL: api_url}):
            try:
                yield api_url
            finally:
                _drain_prefect_workers()
    finally:
        process_group.stop(process)
