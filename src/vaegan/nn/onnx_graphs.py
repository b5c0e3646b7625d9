"""Encoder and decoder as ONNX graphs, verified before they replace the last export (the core of
the export stage, `vaegan.export`).

- `decoder.onnx`, the generator: `z` float32 (batch, latent_dim), standard-normal noise ->
  `x` float32 (batch, 1, 28, 28), pixel probabilities in [0, 1]. The model's latent prior (N(0, I)
  or the one fitted after training, `train.prior`) is inside the graph: noise in, image out, so
  every consumer draws the way the evaluation did (`VAEGAN.generate`).
- `encoder.onnx`: `x` float32 (batch, 1, 28, 28) in [0, 1] -> `mu`, `logvar` (batch, latent_dim)
  and `reconstruction` (batch, 1, 28, 28), the decoded posterior mean (the decoder itself, without
  the prior, lives here so that reconstructions need no code-space input on the generator).

Both come from `torch.onnx.export(dynamo=True)` in eval mode, traced at batch 2 with a dynamic axis
named `batch`, and are saved as single self-contained files (no external `.data`). `export_model`
writes them into a staging directory, runs `onnx.checker`, compares ONNX Runtime with PyTorch on
fresh seeded inputs at every parity batch size, times both runtimes, and only then swaps the
staging directory in for `out_dir`: a failed check raises `ParityError` and keeps the old export.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import torch
from torch import nn

from vaegan.artifacts import onnx_runtime
from vaegan.artifacts.atomic_io import atomic_directory, atomic_path
from vaegan.artifacts.provenance import sha256_file
from vaegan.errors import ConfigError, VaeganError, first_line
from vaegan.nn.networks import IMAGE_SHAPE, VAEGAN

log = logging.getLogger(__name__)

DECODER_FILE = "decoder.onnx"
ENCODER_FILE = "encoder.onnx"
TRACE_BATCH = 2  # >= 2, or the exporter freezes the batch axis to 1 (pytorch#148629)
LATENCY_BATCHES = (1, 256)


class ExportError(VaeganError):
    """The exporter or `onnx.checker` rejected a graph."""


class ParityError(VaeganError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance."""


class GeneratorGraph(nn.Module):
    """noise (B, Z) -> images (B, 1, 28, 28) in [0, 1] (`VAEGAN.generate`): the graph `decoder.onnx` holds."""

    def __init__(self, model: VAEGAN) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.generate(z)


class EncoderGraph(nn.Module):
    """x (B, 1, 28, 28) -> (mu, logvar, decoded mu): the graph `encoder.onnx` holds."""

    def __init__(self, model: VAEGAN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.model.encoder(x)
        return mu, logvar, self.model.decoder.decode(mu)


@dataclass(frozen=True)
class GraphSpec:
    """What one exported graph is: its file, I/O names and how to build its inputs."""

    name: str
    file: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


DECODER = GraphSpec("decoder", DECODER_FILE, (onnx_runtime.DECODER_INPUT,), (onnx_runtime.DECODER_OUTPUT,))
ENCODER = GraphSpec("encoder", ENCODER_FILE, (onnx_runtime.ENCODER_INPUT,), onnx_runtime.ENCODER_OUTPUTS)


def graph_module(model: VAEGAN, spec: GraphSpec) -> nn.Module:
    """The module whose forward pass the graph of `spec` holds."""
    module = GeneratorGraph(model) if spec is DECODER else EncoderGraph(model)
    return module.train(model.training)


def _example_input(model: VAEGAN, spec: GraphSpec, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Fresh float32 inputs: standard-normal latents for the decoder, uniform images for the encoder."""
    if spec is DECODER:
        return rng.standard_normal((batch, model.args.latent_dim), dtype=np.float32)
    return rng.random((batch, *IMAGE_SHAPE), dtype=np.float32)


def _export_graph(model: VAEGAN, spec: GraphSpec, path: str | Path, opset: int) -> Path:
    """Export one graph of `model` (eval mode, dynamic batch) to a self-contained ONNX file."""
    target = Path(path)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    module = graph_module(model, spec)
    device = next(model.parameters()).device
    example = torch.from_numpy(_example_input(model, spec, TRACE_BATCH, np.random.default_rng(0)))
    try:
        program = torch.onnx.export(
            module,
            (example.to(device),),
            dynamo=True,
            verbose=False,
            opset_version=opset,
            input_names=list(spec.input_names),
            output_names=list(spec.output_names),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 20)},),
        )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed for the {spec.name}: {first_line(exc)}") from exc
    finally:
        for submodule, training in modes:
            submodule.training = training
    if program is None:  # only the legacy exporter returns None
        raise ExportError(f"torch.onnx.export returned no program for the {spec.name}")
    _drop_stack_traces(program.model)
    with atomic_path(target) as tmp:
        program.save(tmp, external_data=False)
    return target


# The exporter's per-node source stack trace: absolute paths of the checkout that exported, which
# would make the same weights give different graph bytes in another folder (`vaegan reproduce`).
STACK_TRACE = "pkg.torch.onnx.stack_trace"


def _drop_stack_traces(model: ir.Model) -> None:
    """Remove `STACK_TRACE` from every node of `model`, its subgraphs and functions."""
    graphs: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
    for graph in graphs:
        for node in ir.traversal.RecursiveGraphIterator(graph):
            node.metadata_props.pop(STACK_TRACE, None)


def export_decoder_onnx(model: VAEGAN, path: str | Path, opset: int = 18) -> Path:
    """Write the generator graph (noise `z` -> `x` in [0, 1], prior inside) of `model` to `path`."""
    return _export_graph(model, DECODER, path, opset)


def export_encoder_onnx(model: VAEGAN, path: str | Path, opset: int = 18) -> Path:
    """Write the encoder graph (`x` -> `mu`, `logvar`, `reconstruction`) of `model` to `path`."""
    return _export_graph(model, ENCODER, path, opset)


@dataclass
class GraphReport:
    """One verified graph: file facts, parity errors per batch size, latencies."""

    name: str
    file: str
    sha256: str
    bytes: int
    input_names: list[str]
    output_names: list[str]
    providers: list[str]
    errors: dict[int, float]
    latency_ms: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def max_abs_error(self) -> float:
        return max(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "files": [self.file],
            "sha256": self.sha256,
            "bytes": self.bytes,
            "input_names": self.input_names,
            "output_names": self.output_names,
            "providers": self.providers,
            "max_abs_error": self.max_abs_error,
            "errors_by_batch": {str(batch): error for batch, error in self.errors.items()},
            "latency_ms": {f"batch_{batch}": values for batch, values in self.latency_ms.items()},
        }


@dataclass
class ExportResult:
    """What `export_model` wrote and measured."""

    out_dir: Path
    decoder: GraphReport
    encoder: GraphReport
    provider: str
    torch_device: str
    latent_dim: int
    opset: int
    tolerance: float
    batch_sizes: list[int]

    @property
    def graphs(self) -> tuple[GraphReport, GraphReport]:
        return self.decoder, self.encoder

    def path(self, graph: str) -> Path:
        return self.out_dir / getattr(self, graph).file

    def to_metrics(self) -> dict[str, Any]:
        """The body of metrics/export.json (without the checkpoint's provenance)."""
        return {
            "parity_passed": True,
            "parity_tolerance": self.tolerance,
            "parity_batch_sizes": self.batch_sizes,
            "max_abs_error": max(g.max_abs_error for g in self.graphs),
            "provider": self.provider,
            "torch_device": self.torch_device,
            "latent_dim": self.latent_dim,
            "opset": self.opset,
            "dir": str(self.out_dir),
            "input_names": {g.name: g.input_names for g in self.graphs},
            "output_names": {g.name: g.output_names for g in self.graphs},
            "decoder": self.decoder.to_dict(),
            "encoder": self.encoder.to_dict(),
        }


def _torch_outputs(module: nn.Module, x: np.ndarray, device: torch.device) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(torch.from_numpy(x).to(device))
    outs = out if isinstance(out, tuple) else (out,)
    return [o.float().cpu().numpy() for o in outs]


def _median_ms(fn: Callable[[], object], reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1e3, 4)


def _verify_graph(
    *,
    model: VAEGAN,
    spec: GraphSpec,
    path: Path,
    device: str,
    tolerance: float,
    batch_sizes: Sequence[int],
    rng: np.random.Generator,
) -> tuple[GraphReport, Any]:
    """Check, load and compare one exported graph with the CPU fp32 PyTorch model."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected the {spec.name}: {first_line(exc)}") from exc
    session = onnx_runtime.create_session(path, device)
    inputs, outputs = onnx_runtime.io_names(session)
    if (tuple(inputs), tuple(outputs)) != (spec.input_names, spec.output_names):
        raise ExportError(f"the {spec.name} graph has I/O {inputs} -> {outputs}, expected {spec}")
    reference = graph_module(model, spec)
    errors: dict[int, float] = {}
    for batch in batch_sizes:
        x = _example_input(model, spec, batch, rng)
        ort_out = session.run(list(spec.output_names), {spec.input_names[0]: x})
        torch_out = _torch_outputs(reference, x, torch.device("cpu"))
        if any(o.shape != t.shape for o, t in zip(ort_out, torch_out, strict=True)):
            raise ParityError(
                f"{spec.name} at batch {batch}: ONNX Runtime output shapes "
                f"{[o.shape for o in ort_out]} differ from PyTorch's {[t.shape for t in torch_out]}"
            )
        errors[batch] = max(
            float(np.max(np.abs(o.astype(np.float64) - t))) for o, t in zip(ort_out, torch_out, strict=True)
        )
    report = GraphReport(
        name=spec.name,
        file=path.name,
        sha256=sha256_file(path),
        bytes=path.stat().st_size,
        input_names=inputs,
        output_names=outputs,
        providers=list(session.get_providers()),
        errors=errors,
    )
    return report, session


def _check_parity(report: GraphReport, tolerance: float) -> None:
    for batch, error in report.errors.items():
        if not error <= tolerance:  # also catches NaN
            raise ParityError(
                f"{report.name} parity failed at batch {batch}: max abs error {error:.3g} "
                f"exceeds the tolerance {tolerance:.3g} (ONNX Runtime {report.providers[0]} vs PyTorch)"
            )


def _measure_latency(
    *,
    model: VAEGAN,
    spec: GraphSpec,
    session: Any,
    eager: nn.Module,
    device: torch.device,
    rng: np.random.Generator,
    reps: int,
) -> dict[int, dict[str, float]]:
    """Median ms per call at batch 1 and 256: ORT and PyTorch eager, both host-in, host-out."""
    latency: dict[int, dict[str, float]] = {}
    for batch in LATENCY_BATCHES:
        x = _example_input(model, spec, batch, rng)
        feed = {spec.input_names[0]: x}
        ort_ms = _median_ms(lambda feed=feed: session.run(None, feed), reps)  # type: ignore[misc]
        torch_ms = _median_ms(lambda x=x: _torch_outputs(eager, x, device), reps)  # type: ignore[misc]
        latency[batch] = {
            "onnxruntime": ort_ms,
            "torch": torch_ms,
            "speedup": round(torch_ms / max(ort_ms, 1e-4), 3),
        }
    return latency


def _torch_device(device: str) -> torch.device:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def export_model(
    *,
    model: VAEGAN,
    out_dir: str | Path,
    opset: int,
    tolerance: float,
    batch_sizes: Sequence[int],
    device: str = "auto",
    seed: int = 0,
    latency_reps: int = 5,
) -> ExportResult:
    """Export, check and time both graphs; replace `out_dir` only when every parity check passes."""
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ConfigError(f"export.parity_batch_sizes: need positive batch sizes, got {list(batch_sizes)}")
    cpu_model = copy.deepcopy(model).cpu().eval()
    torch_device = _torch_device(device)
    eager_model = copy.deepcopy(cpu_model).to(torch_device).eval()
    rng = np.random.default_rng(seed)
    target = Path(out_dir)
    reports: dict[str, GraphReport] = {}
    with atomic_directory(target) as staging:
        for spec in (DECODER, ENCODER):
            path = _export_graph(cpu_model, spec, staging / spec.file, opset)
            report, session = _verify_graph(
                model=cpu_model, spec=spec, path=path, device=device, tolerance=tolerance,
                batch_sizes=batch_sizes, rng=rng,
            )  # fmt: skip
            _check_parity(report, tolerance)
            report.latency_ms = _measure_latency(
                model=cpu_model, spec=spec, session=session, eager=graph_module(eager_model, spec),
                device=torch_device, rng=rng, reps=latency_reps,
            )  # fmt: skip
            reports[spec.name] = report
            log.info(
                "%s: max abs error %.3g over batches %s on %s (tolerance %.3g)",
                spec.name, report.max_abs_error, list(batch_sizes), report.providers[0], tolerance,
            )  # fmt: skip
    return ExportResult(
        out_dir=target,
        decoder=reports["decoder"],
        encoder=reports["encoder"],
        provider=reports["decoder"].providers[0],
        torch_device=str(torch_device),
        latent_dim=model.args.latent_dim,
        opset=opset,
        tolerance=tolerance,
        batch_sizes=list(batch_sizes),
    )
