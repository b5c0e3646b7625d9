"""Inference: ONNX Runtime against PyTorch eager for the decoder (z -> images in [0, 1]) and the
encoder (images -> mu, logvar), at batch 1 (latency) and 256 (throughput).

The ONNX files come from the project's own exporter (`vaegan.nn.onnx_graphs.export_decoder_onnx` /
`export_encoder_onnx`: `torch.onnx.export(dynamo=True)`, traced at batch 2 with a dynamic batch
axis, opset 18), so the bench measures exactly the graphs `vaegan export` ships.
Both sides take host (numpy/CPU) inputs and return host outputs, so a GPU run includes the copies
on both sides. ORT's providers are the ones the session really uses (`session.get_providers()`).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from vaegan.nn.networks import build_model, model_args_for
from vaegan.nn.onnx_graphs import DECODER, ENCODER, export_decoder_onnx, export_encoder_onnx, graph_module


def export_models(model: Any, out_dir: Path) -> dict[str, Any]:
    """{decoder_path, encoder_path, exporter}: ONNX files of `model`'s decoder and encoder."""
    decoder_path, encoder_path = out_dir / "decoder.onnx", out_dir / "encoder.onnx"
    export_decoder_onnx(model, decoder_path)
    export_encoder_onnx(model, encoder_path)
    return {"decoder_path": decoder_path, "encoder_path": encoder_path, "exporter": "vaegan.nn.onnx_graphs"}


def ort_session(path: Path, device: torch.device) -> Any:
    """An ORT session on CUDA when the bench's device is CUDA and ORT offers it, else CPU."""
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), providers=providers)


def _paired_times(first: Any, second: Any, calls: int, warmup: int) -> tuple[list[float], list[float]]:
    """Per-call seconds of two functions, called alternately (so that load drifts hit both alike)."""
    for _ in range(warmup):
        first()
        second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(calls):
        for fn, out in ((first, times[0]), (second, times[1])):
            started = time.perf_counter()
            fn()
            out.append(time.perf_counter() - started)
    return times


def measure_inference(
    *, batches: tuple[int, ...], calls: dict[int, int], device: torch.device, warmup: int = 10
) -> dict[str, Any]:
    """Per-call seconds for each (network, batch, runtime), the ORT providers used, versions."""
    torch.manual_seed(0)
    model = build_model(model_args_for("default")).eval()
    results: dict[str, Any] = {"ort_version": ort.__version__}
    with tempfile.TemporaryDirectory(prefix="vaegan-bench-onnx-") as tmp:
        exported = export_models(model, Path(tmp))
        results["exporter"] = exported["exporter"]
        sessions = {
            "decoder": ort_session(exported["decoder_path"], device),
            "encoder": ort_session(exported["encoder_path"], device),
        }
        results["providers"] = {name: list(s.get_providers()) for name, s in sessions.items()}
        model = model.to(device)
        eager = {
            "decoder": graph_module(model, DECODER).eval(),
            "encoder": graph_module(model, ENCODER).eval(),
        }
        rng = np.random.default_rng(0)
        times: dict[str, Any] = {}
        for name, session in sessions.items():
            input_name = session.get_inputs()[0].name
            for batch in batches:
                shape = (batch, model.args.latent_dim) if name == "decoder" else (batch, 1, 28, 28)
                x = rng.random(shape, dtype=np.float32)
                x_torch = torch.from_numpy(x)

                feed = {input_name: x}

                def run_ort(session: Any = session, feed: dict[str, np.ndarray] = feed) -> Any:
                    return session.run(None, feed)

                @torch.inference_mode()
                def run_eager(module: nn.Module = eager[name], xt: torch.Tensor = x_torch) -> Any:
                    out = module(xt.to(device))
                    outs = out if isinstance(out, tuple) else (out,)
                    return [o.cpu().numpy() for o in outs]  # host outputs, as ORT returns

                ort_out, eager_out = run_ort(), run_eager()
                max_diff = max(float(np.abs(a - b).max()) for a, b in zip(ort_out, eager_out, strict=True))
                ort_times, eager_times = _paired_times(run_ort, run_eager, calls[batch], warmup)
                times[f"{name}/{batch}"] = {
                    "ort": ort_times,
                    "eager": eager_times,
                    "batch": batch,
                    "max_abs_diff": max_diff,
                }
        results["times"] = times
    return results
