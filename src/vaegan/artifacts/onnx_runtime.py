"""ONNX Runtime sessions for the exported graphs, with onnxruntime and numpy alone (no torch).

Provider choice (`device`):

- `cpu`: CPUExecutionProvider.
- `cuda`: CUDAExecutionProvider, or a `ConfigError` when ONNX Runtime cannot activate it.
- `auto`: CUDA when this onnxruntime build offers it *and* the CUDA driver reports a GPU, else CPU.

`get_available_providers()` lists CUDA on any onnxruntime-gpu install, GPU or not, and a session
asked for CUDA on a machine without one silently falls back to CPU (after logging errors). So the
provider a session really uses is read back from `session.get_providers()`; `active_provider`
returns it. CUDA runs in strict fp32 (TF32 off), so its results are comparable with PyTorch's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from vaegan.errors import CheckpointError, ConfigError, first_line

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")

# Graph I/O names of the exported models (see docs/export.md).
DECODER_INPUT = "z"
DECODER_OUTPUT = "x"
ENCODER_INPUT = "x"
ENCODER_OUTPUTS = ("mu", "logvar", "reconstruction")


def cuda_driver_sees_gpu() -> bool:
    """True when the NVIDIA driver library loads and reports at least one device."""
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1", ctypes.util.find_library("cuda")]
    for name in names:
        if not name:
            continue
        try:
            driver = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if driver.cuInit(0) == 0 and driver.cuDeviceGetCount(ctypes.byref(count)) == 0:
            return count.value > 0
    return False


def _wants_cuda(device: str) -> bool:
    if device not in DEVICES:
        raise ConfigError(f"ONNX Runtime device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "cpu":
        return False
    offered = CUDA in ort.get_available_providers()
    if device == "cuda" and not offered:
        raise ConfigError(f"device 'cuda' requested but this onnxruntime build offers no {CUDA}")
    return offered and (device == "cuda" or cuda_driver_sees_gpu())


def session_options() -> ort.SessionOptions:
    """Options for one deterministic session: full graph optimisation, warnings and up only."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def create_session(
    path_or_bytes: str | os.PathLike[str] | bytes, device: str = "auto"
) -> ort.InferenceSession:
    """An inference session on CUDA when it is really active (see the module docstring), else CPU."""
    providers: list[Any] = [CPU]
    if _wants_cuda(device):
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels torch installs
        providers.insert(0, (CUDA, {"use_tf32": "0"}))
    model: str | bytes = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    if isinstance(model, str) and not Path(model).is_file():
        raise CheckpointError(f"ONNX model {model} does not exist")
    try:
        session = ort.InferenceSession(model, session_options(), providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        where = "ONNX model" if isinstance(model, bytes) else f"ONNX model {model}"
        raise CheckpointError(f"{where} cannot be loaded by ONNX Runtime: {first_line(exc)}") from exc
    if device == "cuda" and active_provider(session) != CUDA:
        raise ConfigError(f"device 'cuda' requested but ONNX Runtime could not activate {CUDA}")
    return session


def active_provider(session: ort.InferenceSession) -> str:
    """The execution provider the session really runs on (the first of `get_providers()`)."""
    return str(session.get_providers()[0])


def io_names(session: ort.InferenceSession) -> tuple[list[str], list[str]]:
    """(input names, output names) of a session's graph."""
    return [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]


def decoder_latent_dim(session: ort.InferenceSession) -> int:
    """The latent size a decoder graph expects; `CheckpointError` when it is not a vaegan decoder."""
    inputs, outputs = io_names(session)
    shape = session.get_inputs()[0].shape if inputs else []
    if inputs != [DECODER_INPUT] or outputs != [DECODER_OUTPUT] or len(shape) != 2:
        raise CheckpointError(
            f"not a vaegan decoder graph: inputs {inputs}, outputs {outputs} "
            f"(expected {DECODER_INPUT!r} (batch, latent_dim) -> {DECODER_OUTPUT!r})"
        )
    if not isinstance(shape[1], int):
        raise CheckpointError(f"decoder input {DECODER_INPUT!r} has no fixed latent size: {shape}")
    return shape[1]


def run_decoder(session: ort.InferenceSession, z: np.ndarray) -> np.ndarray:
    """Noise z (B, latent_dim) -> pixel probabilities (B, 1, 28, 28) float32 in [0, 1] (generator graphs;
    exports from before the fitted prior decode z as the code itself)."""
    (images,) = session.run([DECODER_OUTPUT], {DECODER_INPUT: np.ascontiguousarray(z, dtype=np.float32)})
    return np.asarray(images)


def run_encoder(session: ort.InferenceSession, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (B, 1, 28, 28) in [0, 1] -> (mu, logvar), each (B, latent_dim) float32."""
    mu, logvar = session.run(
        list(ENCODER_OUTPUTS[:2]), {ENCODER_INPUT: np.ascontiguousarray(x, dtype=np.float32)}
    )
    return np.asarray(mu), np.asarray(logvar)


def has_reconstruction(session: ort.InferenceSession) -> bool:
    """True for encoder graphs that also decode their mean (exports since the fitted prior)."""
    return io_names(session)[1] == list(ENCODER_OUTPUTS)


def run_autoencoder(
    session: ort.InferenceSession, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (B, 1, 28, 28) in [0, 1] -> (mu, logvar, reconstruction (B, 1, 28, 28)) float32."""
    outputs = session.run(list(ENCODER_OUTPUTS), {ENCODER_INPUT: np.ascontiguousarray(x, dtype=np.float32)})
    mu, logvar, reconstruction = (np.asarray(o) for o in outputs)
    return mu, logvar, reconstruction
