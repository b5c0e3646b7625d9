"""The device and numeric precision of a training run, chosen once at the edge (nanoGPT's way).

`train.device: auto` picks CUDA, then MPS, then CPU. `train.precision: bf16` autocasts the forward
pass on CUDA; on CPU and MPS the same code runs under a null context in fp32.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.utils.deterministic

from vaegan.errors import ConfigError

log = logging.getLogger(__name__)


def select_device(requested: str, local_rank: int = 0) -> torch.device:
    """The torch device for `train.device` (auto | cpu | cuda | mps); CUDA uses the local rank's GPU."""
    if requested == "auto":
        if torch.cuda.is_available():
            requested = "cuda"
        elif torch.backends.mps.is_available():
            requested = "mps"
        else:
            requested = "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device: 'cuda' requested but torch sees no CUDA device")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device: 'mps' requested but MPS is not available")
    return torch.device(requested)


def autocast_factory(device: torch.device, precision: str) -> Callable[[], AbstractContextManager[object]]:
    """A zero-argument callable returning the forward pass's context (autocast or a null context)."""
    if precision == "fp32":
        return contextlib.nullcontext
    if precision == "bf16" and device.type == "cuda":
        return functools.partial(torch.autocast, device_type="cuda", dtype=torch.bfloat16)
    log.warning("train.precision=%s is only used on CUDA; running fp32 on %s", precision, device.type)
    return contextlib.nullcontext


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Turn on torch's deterministic algorithms for the block (CPU training), then restore.

    Without the NaN fill of every new tensor that comes with them (`fill_uninitialized_memory`,
    ~7% of a CPU step, bench/profile): no code here reads memory it did not write, and the
    bitwise-identical rerun and resume tests hold without it.
    """
    settings: Any = torch.utils.deterministic  # a module object with a property; untyped in torch
    previous = torch.are_deterministic_algorithms_enabled()
    previous_fill = settings.fill_uninitialized_memory
    if enabled:
        torch.use_deterministic_algorithms(True)
        settings.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        settings.fill_uninitialized_memory = previous_fill
