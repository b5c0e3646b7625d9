"""A Ctrl-C that Python drops (raised inside a finalizer) is raised again by the next check, and
`run_dvc` makes that check at every line: the flow stops instead of running the stage to its end."""

from __future__ import annotations

import gc
import os
import signal
from pathlib import Path

import pytest

from vaegan import interrupts
from vaegan.dvc_commands import run_dvc

# The dropped KeyboardInterrupt is reported as unraisable: that report is the loss these tests make.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class _SwallowsCtrlC:
    """Sends this process SIGINT from its finalizer: the KeyboardInterrupt raised there is dropped
    ("Exception ignored"), as it is when the garbage collector runs a finalizer at that moment."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs at one of these bytecodes, inside the finalizer
            pass


def _lose_a_ctrl_c() -> None:
    _SwallowsCtrlC()  # freed at once: its finalizer runs here and the interrupt is dropped
    gc.collect()


def test_a_ctrl_c_dropped_in_a_finalizer_is_raised_by_the_next_check() -> None:
    with interrupts.recorded():
        _lose_a_ctrl_c()  # no KeyboardInterrupt here: that is the loss
        with pytest.raises(KeyboardInterrupt):
            interrupts.raise_if_requested()
        interrupts.raise_if_requested()  # raised once, not again


def test_without_the_record_the_same_ctrl_c_is_lost() -> None:
    previous = signal.getsignal(signal.SIGINT)
    assert previous is signal.default_int_handler
    _lose_a_ctrl_c()
    interrupts.raise_if_requested()  # nothing recorded: nothing raised
    with interrupts.recorded():
        assert signal.getsignal(signal.SIGINT) is not previous
    assert signal.getsignal(signal.SIGINT) is previous  # put back


def test_forget_and_the_end_of_the_record_clear_it() -> None:
    with interrupts.recorded():
        _lose_a_ctrl_c()
        interrupts.forget()  # the code that handles the interrupt (restoring the workspace)
        interrupts.raise_if_requested()
        _lose_a_ctrl_c()
    interrupts.raise_if_requested()  # the record ended with the body


def test_run_dvc_raises_a_lost_ctrl_c_at_the_first_line_and_stops_dvc(tmp_path: Path) -> None:
    lines: list[str] = []
    with interrupts.recorded():
        _lose_a_ctrl_c()
        with pytest.raises(KeyboardInterrupt):
            run_dvc(["--help"], tmp_path, on_line=lines.append)
    assert len(lines) == 1  # the first line of DVC's output, then the interrupt
    code, output = run_dvc(["--help"], tmp_path)  # nothing pending afterwards
    assert code == 0 and "usage: dvc" in output
