"""The `train` stage: fit the VAE/GAN (or the `vae` baseline) with resumable, reproducible state.

`run(config, args)` is the thin entry: device and DDP, data, the resume decision, MLflow, then
the loop (`vaegan.nn.loop.fit_vaegan`, the core: arrays in, trained model, history and metrics
out), then the files: the model with its fitted latent prior, the metrics and the history.
Only rank 0 writes files and logs to MLflow, through `_StageObserver`.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaegan.artifacts.atomic_io import write_json, write_text
from vaegan.artifacts.checkpoint import MODEL_KIND, load_checkpoint, save_checkpoint
from vaegan.artifacts.provenance import git_commit
from vaegan.config import Config
from vaegan.data.splits import data_sha256, load_split
from vaegan.errors import CheckpointError, TrainingError
from vaegan.nn import distributed
from vaegan.nn.batches import images_to_device
from vaegan.nn.checkpoint_payload import final_model_payload, model_from_checkpoint, prior_payload
from vaegan.nn.cuda_graph import check_graphable
from vaegan.nn.devices import select_device, training_environment
from vaegan.nn.distributed import Distributed
from vaegan.nn.latent_prior import check_prior_components, fit_trained_prior
from vaegan.nn.loop import HISTORY_COLUMNS, TrainResult, fit_vaegan
from vaegan.nn.networks import VAEGAN
from vaegan.nn.plan import target_steps
from vaegan.nn.resume import ResumeDecision, decide_resume, resume_key
from vaegan.tracking.training_run import TrainingRun

log = logging.getLogger(__name__)


def history_csv(rows: list[dict[str, Any]]) -> str:
    """The per-epoch history as CSV text with HISTORY_COLUMNS (blank where an objective has no term)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


class _StageObserver:
    """Rank 0's side effects: checkpoints, MLflow metrics and image grids."""

    def __init__(self, checkpoint_path: Path, tracker: TrainingRun) -> None:
        self.checkpoint_path = checkpoint_path
        self.tracker = tracker

    def on_log(self, step: int, values: dict[str, float]) -> None:
        self.tracker.log_metrics(values, step, prefix="step")

    def on_epoch(self, epoch: int, row: dict[str, Any], grids: dict[str, np.ndarray]) -> None:
        values = {k: v for k, v in row.items() if isinstance(v, float) and k not in ("epoch",)}
        self.tracker.log_metrics(values, epoch, prefix="epoch")
        self.tracker.log_grids(epoch, grids)

    def on_checkpoint(self, payload: dict[str, Any]) -> None:
        save_checkpoint(self.checkpoint_path, payload)


def with_fitted_prior(
    config: Config, payload: dict[str, Any], model: VAEGAN, images: np.ndarray
) -> dict[str, Any]:
    """The finished checkpoint with `train.prior` fitted to the encoder means of `images` under
    `model` (the checkpoint's model, on CPU: the same prior for the same weights wherever it
    trained) and the fit's log-likelihood in its final metrics."""
    x = images_to_device(images, torch.device("cpu"), channels_last=False)
    prior, log_likelihood, count = fit_trained_prior(model.encoder, x, config.train)
    log.info("latent prior: %s, %d component(s), fitted to %d codes", prior.kind, prior.components, count)
    metrics = {**payload["state"]["final_metrics"], "prior": prior.kind}
    metrics["prior_log_likelihood"] = log_likelihood
    return {
        **payload,
        "prior": prior_payload(prior),
        "state": {**payload["state"], "final_metrics": metrics},
    }


def write_outputs(config: Config, payload: dict[str, Any], model: VAEGAN, images: np.ndarray) -> None:
    """Write train.model_path (with the latent prior fitted to the training `images`),
    train.metrics_path and train.history_path from a finished checkpoint and its model."""
    payload = with_fitted_prior(config, payload, model, images)
    state = payload["state"]
    save_checkpoint(config.train.model_path, final_model_payload(payload))
    # The run id links `dvc exp show` / `dvc metrics show` to the MLflow run.
    metrics = {**state["final_metrics"], "mlflow_run_id": state.get("mlflow_run_id")}
    write_json(config.train.metrics_path, metrics)
    write_text(config.train.history_path, history_csv(state["history"]))


def _resumable_checkpoint(path: Path, policy: str) -> dict[str, Any] | None:
    """The checkpoint at `path` when `train.resume` may use it; `never` does not read it at all, so
    that a corrupt file cannot block a fresh start (it is overwritten at the first checkpoint)."""
    if policy == "never" or not path.exists():
        return None
    try:
        return load_checkpoint(path, MODEL_KIND)
    except CheckpointError as exc:
        raise CheckpointError(
            f"{exc}. To train from scratch, move it away or pass --set train.resume=never "
            "(the file is then replaced at the first checkpoint)"
        ) from exc


def run(config: Config, args: argparse.Namespace) -> int:
    """`vaegan train`: resume or start, train, write the model, metrics and history (rank 0)."""
    ctx = distributed.environment()
    device = select_device(config.train.device, ctx.local_rank)
    if config.train.cuda_graph:  # before a process group or an MLflow run is opened
        check_graphable(device, ctx.world_size)
    distributed.init_process_group(ctx, device)
    try:
        return _run(config, ctx, device)
    finally:
        distributed.destroy_process_group(ctx)


def _open_tracking(
    config: Config,
    ctx: Distributed,
    device: torch.device,
    provenance: dict[str, Any],
    resume: dict[str, Any] | None,
) -> TrainingRun:
    """The MLflow run of this training (the resumed checkpoint's run, when it has one); its id goes
    into `provenance`, and with it into every checkpoint."""
    tags = {
        **{f"env.{key}": value for key, value in provenance["environment"].items()},
        "git_commit": str(provenance["git_commit"]),
        "data_sha256": provenance["data_sha256"],
        "objective": config.train.objective,
        "preset": config.model.preset,
        "world_size": str(ctx.world_size),
        "device": device.type,
    }
    previous_run = resume["state"].get("mlflow_run_id") if resume else None
    tracker = TrainingRun.open(config, tags, previous_run)
    provenance["mlflow_run_id"] = tracker.run_id
    return tracker


def _training_images(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """The training split's images (the first train.limit_train_images when set) and the
    validation split's."""
    prepared = config.data.prepared_dir
    images = load_split(prepared, "train").images
    if config.train.limit_train_images:
        images = images[: config.train.limit_train_images]
    return images, load_split(prepared, "val").images


def _resume_decision(
    config: Config, ctx: Distributed, key: dict[str, Any], total_steps: int, checkpoint_path: Path
) -> tuple[ResumeDecision, dict[str, Any] | None]:
    """What to do with the checkpoint at `checkpoint_path`, and that checkpoint (None when there is
    none or it is not read); rank 0 logs the reason and sets aside an unfinished run replaced."""
    existing = _resumable_checkpoint(checkpoint_path, config.train.resume)
    state = existing["state"] if existing else None
    decision = decide_resume(state, key, total_steps, config.train.resume, str(checkpoint_path))
    if ctx.is_main:
        log.info("%s", decision.reason)
        if decision.set_aside is not None:
            os.replace(checkpoint_path, decision.set_aside)
    return decision, existing


def _provenance(sha: str, key: dict[str, Any], device: torch.device, precision: str) -> dict[str, Any]:
    """What every checkpoint of this training records of where it came from (the MLflow run id
    is filled in when the run opens)."""
    return {
        "data_sha256": sha,
        "git_commit": git_commit(),
        "resume_key": key,
        "mlflow_run_id": None,
        "environment": training_environment(device, precision),
    }


@contextmanager
def _failures_end_the_run(tracker: TrainingRun | None, checkpoint_path: Path) -> Iterator[None]:
    """End the MLflow run of a training that fails: FAILED for a TrainingError (raised again with
    the last good checkpoint named), KILLED for anything else (an interrupt, a crash)."""
    try:
        yield
    except TrainingError as exc:
        if tracker is not None:
            tracker.finish("FAILED")
        kept = f"; last good checkpoint kept: {checkpoint_path}" if checkpoint_path.exists() else ""
        raise TrainingError(f"{exc}{kept}") from exc
    except BaseException:
        if tracker is not None:
            tracker.finish("KILLED")
        raise


def _finish_run(config: Config, result: TrainResult, images: np.ndarray, tracker: TrainingRun) -> None:
    """Rank 0's end of a training: the output files, the final metrics in MLflow, the run closed."""
    write_outputs(config, result.payload, result.model, images)
    numbers = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    tracker.log_metrics(numbers, result.metrics["steps"], "final")
    tracker.finish("FINISHED")
    log.info(
        "done: %d steps, %.1f images/s, model %s, metrics %s",
        result.metrics["steps"],
        result.metrics["images_per_s"],
        config.train.model_path,
        config.train.metrics_path,
    )


def _run(config: Config, ctx: Distributed, device: torch.device) -> int:
    images, val_images = _training_images(config)
    check_prior_components(config.train, len(images))  # before the run opens: the fit comes last
    sha = data_sha256(config.data.prepared_dir)
    key = resume_key(config, sha, ctx.world_size)
    total = target_steps(len(images), config, ctx.world_size)
    checkpoint_path = Path(config.train.checkpoint_dir) / "last.pt"
    decision, existing = _resume_decision(config, ctx, key, total, checkpoint_path)
    if decision.action == "complete":
        assert existing is not None
        if ctx.is_main:
            write_outputs(config, existing, model_from_checkpoint(existing), images)
            log.info("outputs rewritten from the finished checkpoint: %s", config.train.model_path)
        return 0
    resume = existing if decision.action == "resume" else None
    provenance = _provenance(sha, key, device, config.train.precision)
    tracker = _open_tracking(config, ctx, device, provenance, resume) if ctx.is_main else None
    log.info(
        "training %s (%s) on %s: %d images, %d steps, rank %d/%d",
        config.train.objective,
        config.model.preset,
        device,
        len(images),
        total,
        ctx.rank,
        ctx.world_size,
    )
    observer = _StageObserver(checkpoint_path, tracker) if tracker is not None else None
    with _failures_end_the_run(tracker, checkpoint_path):
        result = fit_vaegan(
            config=config,
            train_images=images,
            val_images=val_images,
            device=device,
            dist_ctx=ctx,
            resume=resume,
            provenance=provenance,
            observer=observer,
            progress=sys.stderr.isatty(),
        )
    if tracker is not None:
        _finish_run(config, result, images, tracker)
    return 0
