"""The `evaluate` stage: score a trained VAE-GAN with `vaegan.scoring.core` (FID, reconstruction
metrics, precision/recall, class statistics), then write metrics/eval.json and the report and log
to MLflow.

`run` is the stage entry: read params, load the scoring inputs and the checkpoint, call
`Scoring.score`, write the outputs, log.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaegan.artifacts.atomic_io import read_json_object, write_json
from vaegan.artifacts.checkpoint import load_checkpoint
from vaegan.artifacts.provenance import sha256_file
from vaegan.data.splits import data_sha256
from vaegan.errors import ConfigError
from vaegan.nn.checkpoint_payload import model_from_checkpoint
from vaegan.scoring.core import METRIC_KEYS, load_scoring
from vaegan.scoring.report import write_report
from vaegan.tracking.store import connect, ensure_experiment, log_metrics, orchestration_tags

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from vaegan.config import Config

log = logging.getLogger(__name__)


def checkpoint_path(config: Config) -> str:
    """The model file `evaluate` reads: evaluate.checkpoint, else train.model_path."""
    return config.evaluate.checkpoint or config.train.model_path


def load_baseline(path: str | None) -> dict[str, Any] | None:
    """The baseline's metrics JSON, or None when there is none (yet)."""
    if not path or not Path(path).is_file():
        return None
    try:
        return read_json_object(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"evaluate.baseline_metrics: {path} is not a readable JSON object: {exc}") from exc


def run(config: Config, args: argparse.Namespace) -> int:
    """`vaegan evaluate`: metrics JSON, report directory, MLflow metrics and artifacts."""
    cfg = config.evaluate
    started = time.perf_counter()
    # The tracking store first: an unreachable server fails in seconds, before minutes of scoring
    # and before the previous metrics and report are replaced.
    client = connect(config.tracking)
    scoring = load_scoring(config)
    device = scoring.device
    model_path = checkpoint_path(config)
    payload = load_checkpoint(model_path, "vaegan")
    model = model_from_checkpoint(payload, model_path)
    log.info(
        "evaluating %s on %s: %d test images, %d prior samples (seed %d), %s features",
        model_path,
        device,
        len(scoring.test),
        cfg.num_samples,
        cfg.seed,
        cfg.feature_extractor,
    )
    evaluation = scoring.score(model, seed=cfg.seed)
    state = payload.get("state") or {}
    evaluation.metrics["provenance"] = {
        "checkpoint": str(model_path),
        "checkpoint_sha256": sha256_file(model_path),
        "evaluator_sha256": sha256_file(config.evaluator.path),
        "data_sha256": data_sha256(config.data.prepared_dir),
        "objective": str(
            state.get("objective") or payload.get("config", {}).get("train", {}).get("objective")
        ),
    }
    baseline = load_baseline(cfg.baseline_metrics)
    evaluation.info["device"] = str(device)
    evaluation.info["seconds"] = round(time.perf_counter() - started, 2)
    write_report(
        out_dir=cfg.report_dir, model=model, evaluation=evaluation, test=scoring.test, baseline=baseline,
        baseline_path=cfg.baseline_metrics, seed=cfg.seed, device=device,
    )  # fmt: skip
    write_json(cfg.metrics_path, evaluation.metrics)
    seconds = time.perf_counter() - started
    log.info(
        "fid %.3f (floor %.3f, recon %.3f), precision %.3f recall %.3f, psnr %.2f dB, ssim %.4f "
        "in %.1f s -> %s",
        evaluation.metrics["fid"], evaluation.metrics["fid_floor"], evaluation.metrics["fid_recon"],
        evaluation.metrics["precision"], evaluation.metrics["recall"], evaluation.metrics["psnr"],
        evaluation.metrics["ssim"], seconds, cfg.metrics_path,
    )  # fmt: skip
    log_to_mlflow(client, config, evaluation.metrics, state.get("mlflow_run_id"), seconds)
    return 0


def log_to_mlflow(
    client: MlflowClient, config: Config, values: dict[str, Any], run_id: str | None, seconds: float
) -> str:
    """Log the metrics (as `eval/<key>`), the metrics JSON and the report to the training's MLflow run
    when it exists in this tracking store, else to a new run; return the run id."""
    own_run = False
    if run_id:
        try:
            client.get_run(run_id)
        except Exception:  # mlflow raises MlflowException for an unknown run
            log.warning(
                "MLflow run %s (from the checkpoint) is not in this store; logging to a new run", run_id
            )
            run_id = None
    if not run_id:
        experiment_id = ensure_experiment(client, config.tracking)
        run_id = client.create_run(
            experiment_id, run_name="evaluate", tags={"vaegan.stage": "evaluate", **orchestration_tags()}
        ).info.run_id
        own_run = True
    keys = (*METRIC_KEYS, "num_samples", "num_test")
    numeric = {key: float(values[key]) for key in keys if values.get(key) is not None}
    log_metrics(client, run_id, {**numeric, "seconds": seconds}, prefix="eval/")
    client.set_tag(run_id, "eval.feature_extractor", str(values.get("feature_extractor")))
    client.log_artifact(run_id, config.evaluate.metrics_path, artifact_path="evaluation")
    client.log_artifacts(run_id, config.evaluate.report_dir, artifact_path="evaluation/report")
    if own_run:
        client.set_terminated(run_id)
    log.info("logged evaluation to MLflow run %s", run_id)
    return run_id
