"""The `train` stage: fit the VAE/GAN (or the `vae` baseline) with resumable, reproducible state.

`fit_vaegan(...)` is the core: it takes arrays and a device and returns the trained model, its
history and metrics; it reports checkpoints, metrics and image grids to an observer and does no
I/O itself. `run(config, args)` is the thin entry: device, data, resume decision, MLflow, files.

Data order and noise are functions of (train.seed, epoch, step, rank) alone: each epoch draws a
permutation from a generator seeded with (seed, epoch); each step seeds its noise generator with
(seed, step, rank). Together with the networks, optimizers, schedulers and running sums saved in
the checkpoint, a resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vaegan.artifacts.atomic_io import write_json, write_text
from vaegan.artifacts.checkpoint import load_checkpoint, model_from_checkpoint, prior_payload, save_checkpoint
from vaegan.artifacts.provenance import git_commit
from vaegan.data.splits import data_sha256, load_split
from vaegan.errors import ConfigError, TrainingError
from vaegan.nn import distributed
from vaegan.nn.devices import autocast_factory, deterministic_algorithms, select_device
from vaegan.nn.distributed import Distributed
from vaegan.nn.latent_prior import encoder_means, fit_prior
from vaegan.nn.networks import VAEGAN, ModelArgs, build_model, model_args_for
from vaegan.nn.resume import capture_rng, decide_resume, restore_rng, resume_key
from vaegan.nn.step import LossSettings, StepModules, reparameterize, train_step

if TYPE_CHECKING:
    from vaegan.config import Config

log = logging.getLogger(__name__)

KIND = "vaegan"
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
GRID_SAMPLES = 64
GRID_RECONSTRUCTIONS = 32
VAL_IMAGES = 1000


class TrainingObserver(Protocol):
    """Where the core reports; the entry implements it with files and MLflow (rank 0 only)."""

    def on_log(self, step: int, values: dict[str, float]) -> None: ...

    def on_epoch(self, epoch: int, row: dict[str, Any], grids: dict[str, np.ndarray]) -> None: ...

    def on_checkpoint(self, payload: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    """A finished training: the model (CPU, eval mode), the final checkpoint payload, its trainer
    state and the metrics."""

    model: VAEGAN
    payload: dict[str, Any]
    history: list[dict[str, Any]]
    metrics: dict[str, Any]

    @property
    def state(self) -> dict[str, Any]:
        return self.payload["state"]


@dataclass
class _Accumulator:
    """Device-side running sums of the step metrics (no host sync until read)."""

    total: torch.Tensor
    count: int = 0

    def add(self, values: torch.Tensor) -> None:
        self.total += values
        self.count += 1

    def mean(self) -> list[float]:
        return (self.total / max(self.count, 1)).tolist()

    def reset(self) -> None:
        self.total.zero_()
        self.count = 0

    def to_state(self) -> dict[str, Any]:
        return {"total": self.total.detach().cpu().clone(), "count": self.count}


@dataclass
class _NonFinite:
    """Remembers the first step whose metrics were not finite, on the device."""

    step: torch.Tensor
    values: torch.Tensor
    seen_names: tuple[str, ...] = field(default_factory=tuple)

    def update(self, metrics: torch.Tensor, step: int) -> None:
        first = (~torch.isfinite(metrics)).any() & (self.step < 0)
        self.step = torch.where(first, torch.full_like(self.step, step), self.step)
        self.values = torch.where(first, metrics, self.values)

    def check(self, names: tuple[str, ...]) -> None:
        bad_step = int(self.step.item())
        if bad_step < 0:
            return
        values = self.values.tolist()
        bad = [
            f"{name}={value}" for name, value in zip(names, values, strict=True) if not math.isfinite(value)
        ]
        raise TrainingError(f"non-finite loss at step {bad_step}: {', '.join(bad)}")


def steps_per_epoch(num_images: int, batch_size: int, world_size: int) -> int:
    """Full global batches per epoch (the last partial batch is dropped); ConfigError when none fit."""
    steps = num_images // (batch_size * world_size)
    if steps == 0:
        raise ConfigError(
            f"train.batch_size: {batch_size} x {world_size} rank(s) is larger than the {num_images} "
            "training images"
        )
    return steps


def target_steps(num_images: int, config: Config, world_size: int) -> int:
    """The step budget: train.epochs full epochs, capped by train.max_steps when set."""
    total = config.train.epochs * steps_per_epoch(num_images, config.train.batch_size, world_size)
    return min(total, config.train.max_steps) if config.train.max_steps else total


def images_to_device(images: np.ndarray, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1] on `device`, one tensor."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).unsqueeze(1).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _seed_for(*parts: int) -> int:
    """A 63-bit seed mixing integers (seed, epoch/step, rank) without collisions in practice."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part + 0x632BE59BD9B4E019 + (value << 6) + (value >> 2))) & ((1 << 63) - 1)
    return value


def initial_model(args: ModelArgs, seed: int) -> VAEGAN:
    """The freshly initialised networks for `seed`, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(args)


def _optimizers(model: VAEGAN, config: Config) -> dict[str, torch.optim.Optimizer]:
    train = config.train
    betas = (train.beta1, train.beta2)
    optimizers: dict[str, torch.optim.Optimizer] = {
        "encoder": torch.optim.Adam(model.encoder.parameters(), lr=train.lr, betas=betas),
        "decoder": torch.optim.Adam(model.decoder.parameters(), lr=train.lr, betas=betas),
    }
    if train.objective == "vaegan":
        optimizers["discriminator"] = torch.optim.Adam(
            model.discriminator.parameters(), lr=train.lr_discriminator, betas=betas
        )
    return optimizers


@torch.no_grad()
def _evaluate_epoch(
    model: VAEGAN, val: torch.Tensor, sample_z: torch.Tensor, recon_eps: torch.Tensor
) -> tuple[float, dict[str, np.ndarray]]:
    """(validation negative ELBO in nats per image (Bernoulli decoder), sample/reconstruction grids)."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=val.device, dtype=torch.float64)
    for start in range(0, val.shape[0], 500):
        x = val[start : start + 500]
        mu, logvar = model.encoder(x)
        logits = model.decoder(reparameterize(mu, logvar, recon_eps[start : start + 500]))
        bce = nn.functional.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="sum")
        kl = 0.5 * (mu.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).sum()
        total += (bce + kl).double()
    val_loss = float(total.item()) / val.shape[0]
    samples = model.decoder.decode(sample_z).float().cpu().numpy()[:, 0]  # (64, 28, 28)
    originals = val[:GRID_RECONSTRUCTIONS]
    mu, _ = model.encoder(originals)
    recons = model.decoder.decode(mu).float().cpu().numpy()[:, 0]
    originals_np = originals.float().cpu().numpy()[:, 0]
    # Rows of 8: originals, then their reconstructions (from the posterior mean).
    rows = []
    for start in range(0, GRID_RECONSTRUCTIONS, 8):
        rows += [originals_np[start : start + 8], recons[start : start + 8]]
    model.train(was_training)
    return val_loss, {"samples": samples, "reconstructions": np.concatenate(rows)}


def _compiled(module: nn.Module) -> nn.Module:
    compiled: nn.Module = torch.compile(module)  # type: ignore[assignment]
    return compiled


def _all_finite(modules: list[nn.Module]) -> bool:
    return all(
        bool(torch.isfinite(t).all())
        for m in modules
        for t in m.state_dict().values()
        if t.is_floating_point()
    )


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
    train_cfg = config.train
    settings = LossSettings.from_config(train_cfg)
    names = settings.metric_names
    args = model_args_for(config.model.preset, config.model.latent_dim)
    world, rank = ctx.world_size, ctx.rank
    batch = train_cfg.batch_size
    per_epoch = steps_per_epoch(len(train_images), batch, world)
    total_steps = target_steps(len(train_images), config, world)

    model = initial_model(args, train_cfg.seed)
    optimizers = _optimizers(model, config)
    schedulers = {
        name: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=train_cfg.lr_decay)
        for name, opt in optimizers.items()
    }
    state: dict[str, Any] = {"history": [], "best_metric": None, "train_wall_s": 0.0, "images_seen": 0}
    step = 0
    if resume is not None:
        model.encoder.load_state_dict(resume["encoder"])
        model.decoder.load_state_dict(resume["decoder"])
        model.discriminator.load_state_dict(resume["discriminator"])
    model.to(device)
    if train_cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = decoder_ema(model, train_cfg.ema_decay, resume)
    epoch_acc = _Accumulator(torch.zeros(len(names), device=device))
    window_acc = _Accumulator(torch.zeros(len(names), device=device))
    if resume is not None:
        saved = resume["state"]
        for name, opt in optimizers.items():
            opt.load_state_dict(saved["optimizers"][name])
        for name, sched in schedulers.items():
            sched.load_state_dict(saved["schedulers"][name])
        step = int(saved["step"])
        for acc, key in ((epoch_acc, "epoch_sums"), (window_acc, "window_sums")):
            acc.total.copy_(saved[key]["total"])
            acc.count = int(saved[key]["count"])
        restore_rng(saved["rng"])
        state.update({k: saved[k] for k in ("history", "best_metric", "train_wall_s", "images_seen")})

    model.train()
    use_disc = settings.objective == "vaegan"
    encoder: nn.Module = distributed.wrap(model.encoder, ctx, device)
    decoder: nn.Module = distributed.wrap(model.decoder, ctx, device)
    discriminator: nn.Module | None = distributed.wrap(model.discriminator, ctx, device) if use_disc else None
    if train_cfg.compile:
        encoder, decoder = _compiled(encoder), _compiled(decoder)
        discriminator = _compiled(discriminator) if discriminator is not None else None
    modules = StepModules(encoder, decoder, discriminator, optimizers)
    autocast = autocast_factory(device, train_cfg.precision)

    x_all = images_to_device(train_images, device, train_cfg.channels_last)
    val = images_to_device(val_images[:VAL_IMAGES], device, False)
    grid_gen = torch.Generator(device="cpu").manual_seed(train_cfg.seed)
    sample_z = torch.randn(GRID_SAMPLES, args.latent_dim, generator=grid_gen).to(device)
    recon_eps = torch.randn(val.shape[0], args.latent_dim, generator=grid_gen).to(device)
    noise_gen = torch.Generator(device=device)
    perm_gen = torch.Generator(device=device)
    nonfinite = _NonFinite(
        torch.full((), -1, dtype=torch.long, device=device), torch.zeros(len(names), device=device)
    )

    def make_payload(completed: bool) -> dict[str, Any]:
        return {
            "kind": KIND,
            "model_args": args.to_dict(),
            "config": config.to_dict(),
            "encoder": model.encoder.state_dict(),
            "decoder": model.decoder.state_dict(),
            "discriminator": model.discriminator.state_dict(),
            "decoder_ema": ema.state_dict() if ema is not None else None,
            "state": {
                **(provenance or {}),
                "step": step,
                "epoch": step // per_epoch,
                "completed": completed,
                "objective": settings.objective,
                "preset": config.model.preset,
                "world_size": world,
                "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
                "schedulers": {name: sched.state_dict() for name, sched in schedulers.items()},
                "rng": capture_rng(),
                "epoch_sums": epoch_acc.to_state(),
                "window_sums": window_acc.to_state(),
                "history": list(state["history"]),
                "best_metric": state["best_metric"],
                "train_wall_s": state["train_wall_s"],
                "images_seen": state["images_seen"],
                "metric_names": list(names),
            },
        }

    def checkpoint(completed: bool = False) -> None:
        nonfinite.check(names)
        if not _all_finite([model.encoder, model.decoder, model.discriminator]):
            raise TrainingError(f"non-finite weights after step {step}")
        if ctx.is_main and observer is not None:
            observer.on_checkpoint(make_payload(completed))

    bar = None
    if progress and ctx.is_main:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr)
    started = time.perf_counter()
    segment_start, segment_images = started, 0
    window_start, window_images = started, 0
    perm: torch.Tensor | None = None
    with deterministic_algorithms(device.type == "cpu"):
        while step < total_steps:
            epoch, position = divmod(step, per_epoch)
            if position == 0 or perm is None:
                perm_gen.manual_seed(_seed_for(train_cfg.seed, epoch))
                perm = torch.randperm(len(train_images), generator=perm_gen, device=device)
            start = (position * world + rank) * batch
            x = x_all[perm[start : start + batch]]  # (B, 1, 28, 28), indexed on the device
            noise_gen.manual_seed(_seed_for(train_cfg.seed, step, rank))
            noise = torch.randn(2, batch, args.latent_dim, generator=noise_gen, device=device)
            metrics = train_step(
                modules,
                x,
                noise[0],
                noise[1],
                settings,
                autocast,
                average=(lambda t: distributed.average(t, ctx)) if ctx.enabled else None,
            )
            if ema is not None:
                ema.update_parameters(model.decoder)
            step += 1
            nonfinite.update(metrics, step)
            epoch_acc.add(metrics)
            window_acc.add(metrics)
            window_images += batch * world
            segment_images += batch * world
            if bar is not None:
                bar.update(1)
            if step % train_cfg.log_every == 0 or step == total_steps:
                nonfinite.check(names)
                now = time.perf_counter()
                values = dict(zip(names, window_acc.mean(), strict=True))
                values["images_per_s"] = window_images / max(now - window_start, 1e-9)
                values["lr"] = optimizers["encoder"].param_groups[0]["lr"]
                window_acc.reset()
                window_start, window_images = now, 0
                if bar is not None:
                    bar.set_postfix(
                        {
                            k: f"{v:.3g}"
                            for k, v in values.items()
                            if k in ("loss_pixel", "loss_dis", "images_per_s")
                        }
                    )
                elif ctx.is_main:
                    log.info(
                        "step %d/%d epoch %d %s",
                        step,
                        total_steps,
                        epoch + 1,
                        " ".join(f"{k}={v:.4g}" for k, v in values.items()),
                    )
                if ctx.is_main and observer is not None:
                    observer.on_log(step, values)
            if step % per_epoch == 0:
                nonfinite.check(names)
                for sched in schedulers.values():
                    sched.step()
                now = time.perf_counter()
                state["train_wall_s"] += now - segment_start
                state["images_seen"] += segment_images
                segment_start, segment_images = now, 0
                epoch_values = dict(zip(names, epoch_acc.mean(), strict=True))
                epoch_acc.reset()
                if ctx.is_main:
                    val_loss, grids = _evaluate_epoch(model, val, sample_z, recon_eps)
                    row = {column: epoch_values.get(column, "") for column in HISTORY_COLUMNS}
                    row.update(
                        epoch=epoch + 1,
                        step=step,
                        val_loss=val_loss,
                        lr=optimizers["encoder"].param_groups[0]["lr"],
                        images_per_s=state["images_seen"] / max(state["train_wall_s"], 1e-9),
                    )
                    state["history"].append(row)
                    best = state["best_metric"]
                    if best is None or val_loss < best["value"]:
                        state["best_metric"] = {"name": "val_loss", "value": val_loss, "epoch": epoch + 1}
                    if observer is not None:
                        observer.on_epoch(epoch + 1, row, grids)
                    if bar is None:
                        log.info("epoch %d done: val_loss=%.3f", epoch + 1, val_loss)
            if step % train_cfg.checkpoint_every == 0 and step < total_steps:
                checkpoint()
    if bar is not None:
        bar.close()
    now = time.perf_counter()
    state["train_wall_s"] += now - segment_start
    state["images_seen"] += segment_images
    nonfinite.check(names)
    divergence = distributed.max_divergence_from_rank0(
        [model.encoder, model.decoder, model.discriminator], ctx
    )
    if divergence != 0.0:
        raise TrainingError(f"DDP ranks ended with different weights (max |difference| {divergence:.3g})")
    metrics_out = final_metrics(state, settings, step, per_epoch, device, ctx, divergence)
    final_payload = make_payload(completed=True)
    final_payload["state"]["final_metrics"] = metrics_out
    if ctx.is_main:
        nonfinite.check(names)
        if observer is not None:
            observer.on_checkpoint(final_payload)
    model.cpu().eval()
    return TrainResult(
        model=model, payload=final_payload, history=list(state["history"]), metrics=metrics_out
    )


def final_metrics(
    state: dict[str, Any],
    settings: LossSettings,
    step: int,
    per_epoch: int,
    device: torch.device,
    ctx: Distributed,
    divergence: float = 0.0,
) -> dict[str, Any]:
    """The metrics JSON of a run: last epoch's losses, budget, throughput and timing."""
    last = state["history"][-1] if state["history"] else {}
    metrics: dict[str, Any] = {
        name: last.get(name) for name in settings.metric_names if last.get(name, "") != ""
    }
    metrics.update(
        objective=settings.objective,
        steps=step,
        epochs=step / per_epoch,
        val_loss=last.get("val_loss"),
        best_val_loss=(state["best_metric"] or {}).get("value"),
        images_per_s=state["images_seen"] / max(state["train_wall_s"], 1e-9),
        wall_time_s=state["train_wall_s"],
        device=device.type,
        world_size=ctx.world_size,
        ddp_max_weight_difference=divergence,
    )
    return metrics


def history_csv(rows: list[dict[str, Any]]) -> str:
    """The per-epoch history as CSV text with HISTORY_COLUMNS (blank where an objective has no term)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def decoder_ema(model: VAEGAN, decay: float, resume: dict[str, Any] | None) -> AveragedModel | None:
    """The decoder's exponential moving average (torch.optim.swa_utils), resumed when the checkpoint
    holds one; None when `decay` is 0."""
    if decay == 0.0:
        return None
    ema = AveragedModel(model.decoder, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    if resume is not None and resume.get("decoder_ema") is not None:
        ema.load_state_dict(resume["decoder_ema"])
    return ema


def final_model_payload(checkpoint_payload: dict[str, Any]) -> dict[str, Any]:
    """The `train.model_path` file: the checkpoint without optimizer/scheduler/RNG/accumulator state,
    with the decoder's moving average as its decoder when training kept one."""
    heavy = {"optimizers", "schedulers", "rng", "epoch_sums", "window_sums"}
    payload = {k: v for k, v in checkpoint_payload.items() if k not in ("format", "state", "decoder_ema")}
    payload["state"] = {k: v for k, v in checkpoint_payload["state"].items() if k not in heavy}
    ema_state = checkpoint_payload.get("decoder_ema")
    if ema_state is not None:
        prefix = "module."  # AveragedModel's copy of the decoder; n_averaged is its own
        payload["decoder"] = {k.removeprefix(prefix): v for k, v in ema_state.items() if k.startswith(prefix)}
    return payload


class _StageObserver:
    """Rank 0's side effects: checkpoints, MLflow metrics and image grids."""

    def __init__(self, checkpoint_path: Path, tracker: Any) -> None:
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


def with_fitted_prior(config: Config, payload: dict[str, Any], images: np.ndarray) -> dict[str, Any]:
    """The finished checkpoint with `train.prior` fitted to its encoder's means of `images` (on CPU:
    the same prior for the same weights wherever it trained) and the fit's log-likelihood in its
    final metrics."""
    model = model_from_checkpoint(payload)
    codes = encoder_means(model.encoder, images_to_device(images, torch.device("cpu"), channels_last=False))
    train = config.train
    prior, log_likelihood = fit_prior(codes, train.prior, train.prior_components, train.seed)
    log.info(
        "latent prior: %s, %d component(s), fitted to %d codes", prior.kind, prior.components, len(codes)
    )
    metrics = {**payload["state"]["final_metrics"], "prior": prior.kind}
    metrics["prior_log_likelihood"] = log_likelihood
    return {
        **payload,
        "prior": prior_payload(prior),
        "state": {**payload["state"], "final_metrics": metrics},
    }


def write_outputs(config: Config, payload: dict[str, Any], images: np.ndarray) -> None:
    """Write train.model_path (with the latent prior fitted to the training `images`),
    train.metrics_path and train.history_path from a finished checkpoint."""
    payload = with_fitted_prior(config, payload, images)
    state = payload["state"]
    save_checkpoint(config.train.model_path, final_model_payload(payload))
    # The run id links `dvc exp show` / `dvc metrics show` to the MLflow run.
    metrics = {**state["final_metrics"], "mlflow_run_id": state.get("mlflow_run_id")}
    write_json(config.train.metrics_path, metrics)
    write_text(config.train.history_path, history_csv(state["history"]))


def run(config: Config, args: argparse.Namespace) -> int:
    """`vaegan train`: resume or start, train, write the model, metrics and history (rank 0)."""
    ctx = distributed.environment()
    device = select_device(config.train.device, ctx.local_rank)
    distributed.init_process_group(ctx, device)
    try:
        return _run(config, ctx, device)
    finally:
        distributed.destroy_process_group(ctx)


def _run(config: Config, ctx: Distributed, device: torch.device) -> int:
    from vaegan.tracking.training_run import TrainingRun

    prepared = config.data.prepared_dir
    train_split, val_split = load_split(prepared, "train"), load_split(prepared, "val")
    images = train_split.images
    if config.train.limit_train_images:
        images = images[: config.train.limit_train_images]
    sha = data_sha256(prepared)
    key = resume_key(config, sha, ctx.world_size)
    total = target_steps(len(images), config, ctx.world_size)
    checkpoint_path = Path(config.train.checkpoint_dir) / "last.pt"
    existing = load_checkpoint(checkpoint_path, KIND) if checkpoint_path.exists() else None
    decision = decide_resume(
        existing["state"] if existing else None, key, total, config.train.resume, str(checkpoint_path)
    )
    if ctx.is_main:
        log.info("%s", decision.reason)
    if decision.action == "complete":
        assert existing is not None
        if ctx.is_main:
            write_outputs(config, existing, images)
            log.info("outputs rewritten from the finished checkpoint: %s", config.train.model_path)
        return 0
    resume = existing if decision.action == "resume" else None
    provenance: dict[str, Any] = {
        "data_sha256": sha,
        "git_commit": git_commit(),
        "resume_key": key,
        "mlflow_run_id": None,
    }
    tracker = None
    if ctx.is_main:
        tags = {
            "git_commit": str(provenance["git_commit"]),
            "data_sha256": sha,
            "objective": config.train.objective,
            "preset": config.model.preset,
            "world_size": str(ctx.world_size),
            "device": device.type,
        }
        previous_run = resume["state"].get("mlflow_run_id") if resume else None
        tracker = TrainingRun.open(config, tags, previous_run)
        provenance["mlflow_run_id"] = tracker.run_id
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
    try:
        result = fit_vaegan(
            config=config,
            train_images=images,
            val_images=val_split.images,
            device=device,
            dist_ctx=ctx,
            resume=resume,
            provenance=provenance,
            observer=observer,
            progress=sys.stderr.isatty(),
        )
    except TrainingError as exc:
        if tracker is not None:
            tracker.finish("FAILED")
        kept = f"; last good checkpoint kept: {checkpoint_path}" if checkpoint_path.exists() else ""
        raise TrainingError(f"{exc}{kept}") from exc
    except BaseException:
        if tracker is not None:
            tracker.finish("KILLED")
        raise
    if ctx.is_main:
        assert tracker is not None
        write_outputs(config, result.payload, images)
        tracker.log_metrics(
            {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
            result.metrics["steps"],
            "final",
        )
        tracker.finish("FINISHED")
        log.info(
            "done: %d steps, %.1f images/s, model %s, metrics %s",
            result.metrics["steps"],
            result.metrics["images_per_s"],
            config.train.model_path,
            config.train.metrics_path,
        )
    return 0
