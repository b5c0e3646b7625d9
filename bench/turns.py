"""Training processes that take turns: one trains while the others wait, window by window.

On a shared 2-core VM the throughput of the same code drifts by up to 25% over minutes, which is
more than the margins the speed targets are judged by. Running the implementations one after the
other, whole process by whole process, lets a slow spell hit one side only. Here the processes of
one (preset, batch) cell are started together and pass a token around a ring of pipes: a process
times one window while it holds the token, passes it on, and waits for it to come back. Window k of
every implementation then runs within seconds of window k of the others, and the ratio of two
implementations is taken window by window (`paired_ratio`).

Only one process computes at a time, so the windows are not slowed by each other; each process
keeps its own peak memory (`ru_maxrss`). After its last window a process does not pass the token:
it exits, and the next one reads end-of-file once this one is completely gone (its closing work and
interpreter teardown would otherwise slow the next window). A process that fails exits the same way.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Turns:
    """This process's place in the ring: the pipe it reads the token from and the one it passes it on to."""

    read_fd: int
    write_fd: int

    @classmethod
    def parse(cls, text: str) -> Turns:
        """`IN,OUT` file descriptors, as `--turn-fds` gives them."""
        read_fd, write_fd = (int(part) for part in text.split(","))
        return cls(read_fd, write_fd)

    def wait(self) -> None:
        """Block until the token or end-of-file (the process before has exited) arrives."""
        os.read(self.read_fd, 1)

    def pass_on(self) -> None:
        """Hand the token to the next process (which may have exited: then nobody is waiting)."""
        with contextlib.suppress(BrokenPipeError):
            os.write(self.write_fd, b"t")

    def hand_over(self) -> float:
        """Pass the token on and wait for it to come round again; the seconds this took."""
        started = time.perf_counter()
        self.pass_on()
        self.wait()
        return time.perf_counter() - started


def ring(size: int) -> list[tuple[int, int]]:
    """Pipes for `size` processes: (read fd, write fd) of each; process i passes to process i + 1.

    The caller hands these to the processes (`pass_fds`), closes its own copies, and starts the ring
    by writing one byte into process 0's pipe (`start`)."""
    pipes = [os.pipe() for _ in range(size)]  # pipe i: read by process i
    return [(pipes[i][0], pipes[(i + 1) % size][1]) for i in range(size)]


def start(ends: list[tuple[int, int]]) -> None:
    """Give process 0 the token, then close this process's copies of every pipe end."""
    last_write = ends[-1][1]  # the last process writes into process 0's pipe
    os.write(last_write, b"t")
    for read_fd, write_fd in ends:
        os.close(read_fd)
        os.close(write_fd)


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float], digits: int = 4) -> float:
    """The median over windows k of numerator[k] / denominator[k]: windows k ran back to back."""
    if not numerator or len(numerator) != len(denominator):
        raise ValueError(f"paired windows needed: {len(numerator)} against {len(denominator)}")
    return round(statistics.median(n / d for n, d in zip(numerator, denominator, strict=True)), digits)
