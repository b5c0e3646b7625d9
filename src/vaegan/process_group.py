"""Commands that die with the process that started them, however it ends.

`start` runs a command in a process group of its own (a new session) under a keeper: this file, run
as a script. The keeper asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG, so a
SIGKILL of the flow counts) and then kills its whole group: the command and everything the command
started (`dvc repro` runs the stage's `vaegan train` as its child, the same group). A terminal's
Ctrl-C reaches the flow only (the group is not in the terminal's foreground), and the flow stops the
group itself (`stop`) before it restores the workspace.

The parent-death signal fires when the *thread* that started the keeper ends: start a group from the
thread that waits for it (`vaegan.dvc_commands.run_dvc`), or from the main thread for one that
lives as long as the process (the flow commands' Prefect server). On systems without
PR_SET_PDEATHSIG (not Linux) the groups still keep Ctrl-C away from the commands, but outlive a
killed flow.

The keeper imports only the standard library and runs isolated (`python -I`): it works whatever
PYTHONPATH the command gets (`vaegan reproduce` runs the stages with another commit's code first).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_GRACE_S = 10.0


def ask_parent_death_signal(sig: int) -> bool:
    """Have the kernel send `sig` to this process when its parent (thread) dies; False where the
    system cannot (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0)


def start(argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
    """Run `argv` in a new process group under a keeper that kills the group when this process
    dies; `popen_kwargs` go to `subprocess.Popen` (cwd, env, stdout, text...). The keeper's pid is
    the group's id; its exit status is the command's."""
    keeper = [sys.executable, "-I", os.path.abspath(__file__), str(os.getpid()), *argv]
    return subprocess.Popen(keeper, start_new_session=True, **popen_kwargs)


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the process group `pgid`; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` is still there (zombies not reaped yet count)."""
    return signal_group(pgid, 0)


def stop(process: subprocess.Popen[Any], grace_s: float = STOP_GRACE_S) -> int:
    """Stop the group `start` made (SIGTERM, then SIGKILL after `grace_s`), wait until every
    process of it is gone, and return the keeper's exit status."""
    pgid = process.pid
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while True:
        process.poll()  # reap the keeper, or the group never empties
        if not group_alive(pgid):
            break
        if time.monotonic() > deadline:
            signal_group(pgid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.05)
    return process.wait()


def _kill_own_group(_signum: int = 0, _frame: object = None) -> None:
    os.killpg(0, signal.SIGKILL)  # the keeper too: it has nothing left to do


def keep(parent: int, argv: Sequence[str]) -> int:
    """The keeper: run `argv` in this (new) group, kill the group on SIGTERM, SIGHUP or SIGINT and
    when `parent` dies; the command's exit status (128 + N for a death by signal N)."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _kill_own_group)
    ask_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the kernel was asked to tell
        _kill_own_group()
    code = subprocess.Popen(argv).wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(keep(int(sys.argv[1]), sys.argv[2:]))
