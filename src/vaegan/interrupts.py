"""Ctrl-C that a flow does not lose while it waits on a DVC stage.

Python raises KeyboardInterrupt in the main thread at whatever it runs when SIGINT arrives. Raised
where it is swallowed (inside a finalizer that the garbage collector runs at any allocation, which
Python reports as "Exception ignored" and drops, or inside a library call that catches it), it is
gone and the flow carries on: in the slow suite a Ctrl-C sent in a train stage's first seconds was
lost about once in four runs on one machine, the retrain finishing with exit 0. `recorded()`
installs a handler that records the interrupt as well as raising it, and `raise_if_requested()`,
which `vaegan.dvc_commands.run_dvc` checks at every line of a stage's output and when the stage
ends, raises it again if it was lost. `forget()` is for the code that handles it (restoring the
workspace).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_requested = threading.Event()


def _record_and_raise(_signum: int, _frame: FrameType | None) -> None:
    _requested.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def recorded() -> Iterator[None]:
    """Record every Ctrl-C of the `with` body (main thread; elsewhere a no-op), and forget them at
    its end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _record_and_raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()


def raise_if_requested() -> None:
    """Raise KeyboardInterrupt when a recorded Ctrl-C has not been handled yet."""
    if _requested.is_set():
        _requested.clear()
        raise KeyboardInterrupt


def forget() -> None:
    """The recorded Ctrl-C is being handled: later checks do not raise it again."""
    _requested.clear()
