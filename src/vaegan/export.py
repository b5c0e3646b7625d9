"""The export stage: rebuild the trained model from `train.model_path`, export its encoder and decoder
as ONNX graphs, verify them (`vaegan.nn.onnx_graphs`: what each graph holds, parity, latency) and
write metrics/export.json.
"""

from __future__ import annotations

import argparse
import logging

from vaegan.artifacts.atomic_io import write_json
from vaegan.artifacts.provenance import sha256_file
from vaegan.config import Config
from vaegan.nn.checkpoint_payload import load_model
from vaegan.nn.onnx_graphs import export_model

log = logging.getLogger(__name__)


def run(config: Config, args: argparse.Namespace) -> int:
    """`vaegan export`: rebuild the trained model, export and verify it, write metrics/export.json."""
    cfg = config.export
    checkpoint = config.train.model_path
    model = load_model(checkpoint)  # CheckpointError when missing, unreadable or mismatched
    checkpoint_sha256 = sha256_file(checkpoint)
    result = export_model(
        model=model, out_dir=cfg.dir, opset=cfg.opset, tolerance=cfg.parity_tolerance,
        batch_sizes=cfg.parity_batch_sizes, device="auto", seed=0,
    )  # fmt: skip
    metrics = {**result.to_metrics(), "checkpoint": str(checkpoint), "checkpoint_sha256": checkpoint_sha256}
    write_json(cfg.metrics_path, metrics)
    for graph in result.graphs:
        latency = graph.latency_ms
        log.info(
            "%s -> %s (%d bytes, sha256 %s...): batch 1 %.3f ms ORT vs %.3f ms torch, "
            "batch 256 %.3f ms vs %.3f ms",
            graph.name, result.path(graph.name), graph.bytes, graph.sha256[:12],
            latency[1]["onnxruntime"], latency[1]["torch"],
            latency[256]["onnxruntime"], latency[256]["torch"],
        )  # fmt: skip
    print(
        f"exported decoder and encoder to {result.out_dir} ({result.provider}), "
        f"max abs error {metrics['max_abs_error']:.3g} <= {cfg.parity_tolerance:g}; "
        f"metrics in {cfg.metrics_path}"
    )
    return 0
