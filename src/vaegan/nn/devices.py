"""The device and numeric precision of a training run, chosen once at the edge (nanoGPT's way).

`train.device: auto` picks CUDA, then MPS, then CPU. `train.precision: bf16` autocasts the forward
pass to bfloat16 on CUDA and on CPUs with native bf16 instructions (AVX512-BF16 or AMX; oneDNN's
bf16 convolutions there are ~1.8x fp32 on 2 cores, docs/performance.md); `auto` is bf16 where it is
native and fp32 elsewhere (`resolve_precision`). Without native bf16 the CPU would emulate it,
slower than fp32, so `bf16` on such a CPU runs fp32 with a warning (once per process).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
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


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively: CUDA with compute capability 8.0 or newer, a CPU
    with AVX512-BF16 or AMX tiles."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def resolve_precision(device: torch.device, precision: str) -> str:
    """The precision a run uses on `device` for `train.precision` (fp32 | bf16 | auto)."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and not native_bf16(device):
        _warn_no_native_bf16(device.type)
        return "fp32"
    return precision


@functools.cache
def _warn_no_native_bf16(device_type: str) -> None:
    """Once per process and device type, however many places resolve the precision."""
    log.warning("train.precision=bf16: %s has no native bf16; running fp32", device_type)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else `platform.processor()`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def training_environment(device: torch.device, precision: str) -> dict[str, str]:
    """What a trained model's bits depend on besides params, data and code: library versions, the
    CPU and the instruction sets that select its kernels, threads, device and precision. Stored in
    every checkpoint and on the MLflow run and registered versions as `env.*` tags."""
    env = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion would not load with weights_only=True
        "numpy": str(np.__version__),
        "cpu": cpu_model(),
        "cpu_isa": ",".join(
            name
            for name, supported in (
                ("avx2", torch.cpu._is_avx2_supported()),
                ("avx512", torch.cpu._is_avx512_supported()),
                ("avx512_bf16", torch.cpu._is_avx512_bf16_supported()),
                ("amx", torch.cpu._is_amx_tile_supported()),
            )
            if supported
        )
        or "baseline",
        "torch_threads": str(torch.get_num_threads()),
        "device": device.type,
        "precision": resolve_precision(device, precision),
        "deterministic": "true" if device.type == "cpu" else "false",
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = str(torch.version.cuda)
    return env


def autocast_factory(device: torch.device, precision: str) -> Callable[[], AbstractContextManager[object]]:
    """A zero-argument callable returning the forward pass's context (bf16 autocast or a null
    context) for `precision` as `resolve_precision` resolves it on `device`."""
    if resolve_precision(device, precision) == "fp32":
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)


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
