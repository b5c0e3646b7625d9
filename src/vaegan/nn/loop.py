"""The training loop of `vaegan train`: fit the VAE/GAN (or the `vae` baseline) on images in memory.

`fit_vaegan(...)` takes arrays and a device and returns the trained model, its history and
metrics; it reports log windows, epochs and checkpoints to an observer (rank 0 only) and does no
I/O itself. Its loop reads top to bottom: the step (`vaegan.nn.step_builder`: the batch, then
`train_step`), then the log window, the epoch end and the checkpoint, each a named call on the
networks (`vaegan.nn.training_networks.Networks`) and the loop state
(`vaegan.nn.loop_state.LoopState`) under the run's fixed facts (`vaegan.nn.plan.Plan`).

Data order and noise are functions of (train.seed, epoch, step, rank) alone (`vaegan.nn.batches`).
Together with the networks, optimizers, schedulers and running sums saved in the checkpoint, a
resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vaegan.config import Config
from vaegan.errors import TrainingError
from vaegan.nn import distributed
from vaegan.nn.checkpoint_payload import model_payload
from vaegan.nn.devices import deterministic_algorithms, resolve_precision
from vaegan.nn.distributed import Distributed
from vaegan.nn.loop_state import LoopState
from vaegan.nn.networks import VAEGAN, Decoder
from vaegan.nn.plan import Plan
from vaegan.nn.reporter import Reporter, TrainingObserver
from vaegan.nn.resume import capture_rng
from vaegan.nn.standing_statistics import recompute_decoder_statistics
from vaegan.nn.step_builder import build_training_step
from vaegan.nn.training_networks import Networks
from vaegan.nn.validation import Validation

HISTORY_COLUMNS = (
    "epoch",
    "step",
    "loss_prior",
    "loss_llike",
    "loss_pixel",
    "loss_dis",
    "loss_gan",
    "d_real",
    "d_fake",
    "val_loss",
    "lr",
    "images_per_s",
)


@dataclass
class TrainResult:
    """A finished training: the model as the final checkpoint describes it (its decoder the moving
    average when training kept one; CPU, eval mode), the final checkpoint payload, its trainer
    state and the metrics."""

    model: VAEGAN
    payload: dict[str, Any]
    history: list[dict[str, Any]]
    metrics: dict[str, Any]

    @property
    def state(self) -> dict[str, Any]:
        return self.payload["state"]


def fit_vaegan(
    *,
    config: Config,
    train_images: np.ndarray,
    val_images: np.ndarray,
    device: torch.device,
    dist_ctx: Distributed | None = None,
    resume: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    observer: TrainingObserver | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train `config.model` with `config.train` on uint8 images (N, 28, 28); return the result.

    `resume` is a checkpoint payload (same resume key) to continue from; `provenance` entries
    (data sha256, git commit, MLflow run id, ...) are stored in every checkpoint's `state`.
    The observer is called on rank 0 only. Raises TrainingError on a non-finite loss, before
    any checkpoint holds the diverged weights.
    """
    ctx = dist_ctx or Distributed()
    step = build_training_step(
        config=config, train_images=train_images, device=device, dist_ctx=ctx, resume=resume,
        provenance=provenance,
    )  # fmt: skip
    plan, nets = step.plan, step.nets
    run = LoopState.start(len(plan.names), device, resume)
    validation = Validation.on_device(val_images, plan.seed, nets.model.args.latent_dim, device)
    report = Reporter(observer, ctx.is_main, plan.total_steps, run.step, progress)

    run.start_clocks()
    with deterministic_algorithms(device.type == "cpu"):
        while run.step < plan.total_steps:
            metrics = step(run.step)
            if nets.ema is not None:
                nets.ema.update_parameters(nets.model.decoder)
            run.count_step(metrics, plan.images_per_step)
            report.stepped()
            if run.step % plan.log_every == 0 or run.step == plan.total_steps:
                log_window(plan, nets, run, report)
            if run.step % plan.per_epoch == 0:
                end_epoch(plan, nets, run, validation, report)
            if run.step % plan.checkpoint_every == 0 and run.step < plan.total_steps:
                checkpoint(plan, nets, run, report)
    return finish(plan, nets, run, report, ctx, device, step.batches.images)


# The named calls of the loop.


def log_window(plan: Plan, nets: Networks, run: LoopState, report: Reporter) -> None:
    """The mean metrics since the last log window, with throughput and learning rate."""
    run.nonfinite.check(plan.names)
    now = time.perf_counter()
    values = dict(zip(plan.names, run.window_sums.mean(), strict=True))
    values["images_per_s"] = run.window_images / max(now - run.window_start, 1e-9)
    values["lr"] = nets.lr
    run.window_sums.reset()
    run.window_start, run.window_images = now, 0
    report.window(run.step, (run.step - 1) // plan.per_epoch + 1, values)


def end_epoch(plan: Plan, nets: Networks, run: LoopState, validation: Validation, report: Reporter) -> None:
    """Decay the learning rates, close the epoch's timing; on rank 0 validate, record the history
    row and the best validation loss, and report the epoch."""
    run.nonfinite.check(plan.names)
    for sched in nets.schedulers.values():
        sched.step()
    run.close_segment()
    epoch_values = dict(zip(plan.names, run.epoch_sums.mean(), strict=True))
    run.epoch_sums.reset()
    if not report.is_main:
        return
    epoch = run.step // plan.per_epoch
    val_loss, grids = validation.evaluate(nets.model)
    row = {column: epoch_values.get(column, "") for column in HISTORY_COLUMNS}
    row.update(epoch=epoch, step=run.step, val_loss=val_loss, lr=nets.lr, images_per_s=run.images_per_s)
    run.history.append(row)
    if run.best_metric is None or val_loss < run.best_metric["value"]:
        run.best_metric = {"name": "val_loss", "value": val_loss, "epoch": epoch}
    report.epoch(epoch, row, grids)


def checkpoint(plan: Plan, nets: Networks, run: LoopState, report: Reporter) -> None:
    """Hand rank 0's observer a checkpoint, after checking that no loss or weight diverged."""
    run.nonfinite.check(plan.names)
    if not nets.all_finite():
        raise TrainingError(f"non-finite weights after step {run.step}")
    if report.takes_checkpoints:
        report.checkpoint(training_payload(plan, nets, run, completed=False))


def finish(
    plan: Plan,
    nets: Networks,
    run: LoopState,
    report: Reporter,
    ctx: Distributed,
    device: torch.device,
    images: torch.Tensor,
) -> TrainResult:
    """Check the ranks agree, give the decoder's moving average BatchNorm statistics of its own
    weights (`images`: the training images on the device), compute the metrics, hand over the final
    checkpoint; the model on CPU."""
    report.close()
    run.close_segment()
    run.nonfinite.check(plan.names)
    if nets.ema is not None:
        recompute_decoder_statistics(nets.ema.module, nets.model.encoder, images, plan.batch_size, plan.seed)
    divergence = distributed.max_divergence_from_rank0(nets.parts, ctx)
    if divergence != 0.0:
        raise TrainingError(f"DDP ranks ended with different weights (max |difference| {divergence:.3g})")
    metrics = final_metrics(plan, run, device, divergence)
    payload = training_payload(plan, nets, run, completed=True)
    payload["state"]["final_metrics"] = metrics
    report.checkpoint(payload)
    return TrainResult(model=trained_model(nets), payload=payload, history=list(run.history), metrics=metrics)


def trained_model(nets: Networks) -> VAEGAN:
    """The model as the final checkpoint holds it: the decoder's moving average as its decoder when
    training kept one, on the CPU in the default memory format, in eval mode."""
    model = nets.model
    if nets.ema is not None:
        average = nets.ema.module  # the average's own copy: the payload's tensors stay as saved
        assert isinstance(average, Decoder)
        model.decoder = average
    return model.cpu().to(memory_format=torch.contiguous_format).eval()


def training_payload(plan: Plan, nets: Networks, run: LoopState, completed: bool) -> dict[str, Any]:
    """The checkpoint of the run so far: weights, optimizer, scheduler and RNG states, sums, history."""
    state = {
        **plan.provenance,
        "step": run.step,
        "epoch": run.step // plan.per_epoch,
        "completed": completed,
        "objective": plan.settings.objective,
        "preset": plan.preset,
        "world_size": plan.world_size,
        "optimizers": {name: opt.state_dict() for name, opt in nets.optimizers.items()},
        "schedulers": {name: sched.state_dict() for name, sched in nets.schedulers.items()},
        "rng": capture_rng(),
        "epoch_sums": run.epoch_sums.to_state(),
        "window_sums": run.window_sums.to_state(),
        "history": list(run.history),
        "best_metric": run.best_metric,
        "train_wall_s": run.train_wall_s,
        "images_seen": run.images_seen,
        "metric_names": list(plan.names),
    }
    ema = nets.ema.state_dict() if nets.ema is not None else None
    return model_payload(nets.model, plan.recorded_config, state, decoder_ema=ema)


def final_metrics(plan: Plan, run: LoopState, device: torch.device, divergence: float) -> dict[str, Any]:
    """The metrics JSON of a run: last epoch's losses, budget, throughput and timing."""
    last = run.history[-1] if run.history else {}
    metrics: dict[str, Any] = {name: last.get(name) for name in plan.names if last.get(name, "") != ""}
    metrics.update(
        objective=plan.settings.objective,
        steps=run.step,
        epochs=run.step / plan.per_epoch,
        val_loss=last.get("val_loss"),
        best_val_loss=(run.best_metric or {}).get("value"),
        images_per_s=run.images_per_s,
        wall_time_s=run.train_wall_s,
        device=device.type,
        precision=resolve_precision(device, plan.precision),
        world_size=plan.world_size,
        ddp_max_weight_difference=divergence,
    )
    return metrics
