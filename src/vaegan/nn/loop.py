"""The training loop of `vaegan train`: fit the VAE/GAN (or the `vae` baseline) on images in memory.

`fit_vaegan(...)` takes arrays and a device and returns the trained model, its history and
metrics; it reports log windows, epochs and checkpoints to an observer (rank 0 only) and does no
I/O itself. Its loop reads top to bottom: the batch, the step, then the log window, the epoch end
and the checkpoint, each a named call on the networks (`Networks`) and the loop state
(`LoopState`) under the run's fixed facts (`Plan`).

Data order and noise are functions of (train.seed, epoch, step, rank) alone: each epoch draws a
permutation from a generator seeded with (seed, epoch); each step seeds its noise generator with
(seed, step, rank). Together with the networks, optimizers, schedulers and running sums saved in
the checkpoint, a resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from vaegan.config import Config
from vaegan.errors import ConfigError, TrainingError
from vaegan.nn import augment as aug
from vaegan.nn import distributed
from vaegan.nn.checkpoint_payload import model_payload
from vaegan.nn.cuda_graph import GraphedStep, check_graphable
from vaegan.nn.devices import autocast_factory, deterministic_algorithms, resolve_precision
from vaegan.nn.distributed import Distributed
from vaegan.nn.networks import VAEGAN, ModelArgs, build_model, model_args_for
from vaegan.nn.resume import capture_rng, restore_rng
from vaegan.nn.step import LossSettings, StepModules, reparameterize, train_step

log = logging.getLogger(__name__)

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
    """Where the loop reports; the stage implements it with files and MLflow (rank 0 only)."""

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
    plan = Plan.of(config, len(train_images), ctx, provenance or {})
    train = config.train
    nets = Networks.build(config, device, resume)
    run = LoopState.start(len(plan.names), device, resume)
    modules = step_modules(nets, plan, ctx, device)
    autocast = autocast_factory(device, train.precision)
    average: Callable[[torch.Tensor], torch.Tensor] | None = None
    if ctx.enabled:
        average = functools.partial(distributed.average, ctx=ctx)
    latent_dim = nets.model.args.latent_dim
    batches = Batches.on_device(train_images, plan, latent_dim, device)
    validation = Validation.on_device(val_images, train.seed, latent_dim, device)
    report = Reporter(observer, ctx.is_main, plan, run.step, progress)
    step = step_function(modules, plan, autocast, average, device, ctx)

    run.start_clocks()
    with deterministic_algorithms(device.type == "cpu"):
        while run.step < plan.total_steps:
            metrics = step(*batches.batch(run.step))
            if nets.ema is not None:
                nets.ema.update_parameters(nets.model.decoder)
            run.count_step(metrics, plan.images_per_step)
            report.stepped()
            if run.step % train.log_every == 0 or run.step == plan.total_steps:
                log_window(plan, nets, run, report)
            if run.step % plan.per_epoch == 0:
                end_epoch(plan, nets, run, validation, report)
            if run.step % train.checkpoint_every == 0 and run.step < plan.total_steps:
                checkpoint(plan, nets, run, report)
    return finish(plan, nets, run, report, ctx, device)


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
    plan: Plan, nets: Networks, run: LoopState, report: Reporter, ctx: Distributed, device: torch.device
) -> TrainResult:
    """Check the ranks agree, compute the metrics, hand over the final checkpoint; the model on CPU."""
    report.close()
    run.close_segment()
    run.nonfinite.check(plan.names)
    divergence = distributed.max_divergence_from_rank0(nets.parts, ctx)
    if divergence != 0.0:
        raise TrainingError(f"DDP ranks ended with different weights (max |difference| {divergence:.3g})")
    metrics = final_metrics(plan, run, device, divergence)
    payload = training_payload(plan, nets, run, completed=True)
    payload["state"]["final_metrics"] = metrics
    report.checkpoint(payload)
    nets.model.cpu().eval()
    return TrainResult(model=nets.model, payload=payload, history=list(run.history), metrics=metrics)


def training_payload(plan: Plan, nets: Networks, run: LoopState, completed: bool) -> dict[str, Any]:
    """The checkpoint of the run so far: weights, optimizer, scheduler and RNG states, sums, history."""
    state = {
        **plan.provenance,
        "step": run.step,
        "epoch": run.step // plan.per_epoch,
        "completed": completed,
        "objective": plan.settings.objective,
        "preset": plan.config.model.preset,
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
    return model_payload(nets.model, plan.config.to_dict(), state, decoder_ema=ema)


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
        precision=resolve_precision(device, plan.config.train.precision),
        world_size=plan.world_size,
        ddp_max_weight_difference=divergence,
    )
    return metrics


# The parts the loop is made of.


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


def decoder_ema(model: VAEGAN, decay: float, resume: dict[str, Any] | None) -> AveragedModel | None:
    """The decoder's exponential moving average (torch.optim.swa_utils), resumed when the checkpoint
    holds one; None when `decay` is 0."""
    if decay == 0.0:
        return None
    ema = AveragedModel(model.decoder, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    if resume is not None and resume.get("decoder_ema") is not None:
        ema.load_state_dict(resume["decoder_ema"])
    return ema


def adam_optimizers(model: VAEGAN, config: Config, device: torch.device) -> dict[str, torch.optim.Optimizer]:
    """Adam per network, with PyTorch's fused kernel (one vectorised pass over all of a network's
    parameters; the per-tensor loop took 13% of a default-preset step on CPU). Under
    `train.cuda_graph` the kernels are capturable and read their learning rate from a tensor on
    `device`, which the lr schedule updates in place (a float would be frozen into the graph)."""
    train = config.train
    graphed = train.cuda_graph

    def adam(module: nn.Module, lr: float) -> torch.optim.Optimizer:
        rate: float | torch.Tensor = torch.tensor(lr, device=device) if graphed else lr
        betas = (train.beta1, train.beta2)
        return torch.optim.Adam(module.parameters(), lr=rate, betas=betas, fused=True, capturable=graphed)

    optimizers = {"encoder": adam(model.encoder, train.lr), "decoder": adam(model.decoder, train.lr)}
    if train.objective == "vaegan":
        optimizers["discriminator"] = adam(model.discriminator, train.lr_discriminator)
    return optimizers


def graph_ready_groups(optimizer: torch.optim.Optimizer, graphed: bool, device: torch.device) -> None:
    """Make loaded param groups fit this run: `load_state_dict` takes `lr` and `capturable` from the
    checkpoint, and a run resumed with `train.cuda_graph` toggled needs them as `adam_optimizers`
    makes them (a float lr inside a captured step would never see the lr schedule again)."""
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        group["lr"] = torch.tensor(lr, device=device) if graphed else lr
        group["capturable"] = graphed


@dataclass(frozen=True)
class Plan:
    """The fixed facts of a run: its config, objectives, step budget and place among the ranks."""

    config: Config
    settings: LossSettings
    per_epoch: int
    total_steps: int
    world_size: int
    rank: int
    provenance: dict[str, Any]

    @classmethod
    def of(cls, config: Config, num_images: int, ctx: Distributed, provenance: dict[str, Any]) -> Plan:
        batch = config.train.batch_size
        return cls(
            config=config,
            settings=LossSettings.from_config(config.train),
            per_epoch=steps_per_epoch(num_images, batch, ctx.world_size),
            total_steps=target_steps(num_images, config, ctx.world_size),
            world_size=ctx.world_size,
            rank=ctx.rank,
            provenance=provenance,
        )

    @property
    def names(self) -> tuple[str, ...]:
        """The columns of the metric vector a step returns."""
        return self.settings.metric_names

    @property
    def images_per_step(self) -> int:
        return self.config.train.batch_size * self.world_size


@dataclass
class Networks:
    """The model being trained, its decoder's moving average, its optimizers and lr schedules."""

    model: VAEGAN
    ema: AveragedModel | None
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.ExponentialLR]

    @classmethod
    def build(cls, config: Config, device: torch.device, resume: dict[str, Any] | None) -> Networks:
        """Fresh networks for `config`, or those of the `resume` checkpoint, on `device`."""
        train = config.train
        args = model_args_for(config.model.preset, config.model.latent_dim, config.model.spectral_norm)
        model = initial_model(args, train.seed)
        optimizers = adam_optimizers(model, config, device)
        schedulers = {
            name: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=train.lr_decay)
            for name, opt in optimizers.items()
        }
        if resume is not None:
            model.encoder.load_state_dict(resume["encoder"])
            model.decoder.load_state_dict(resume["decoder"])
            model.discriminator.load_state_dict(resume["discriminator"])
        model.to(device)
        if train.channels_last:
            model.to(memory_format=torch.channels_last)
        ema = decoder_ema(model, train.ema_decay, resume)
        if resume is not None:
            saved = resume["state"]
            for name, opt in optimizers.items():
                opt.load_state_dict(saved["optimizers"][name])
                graph_ready_groups(opt, train.cuda_graph, device)
            for name, sched in schedulers.items():
                sched.load_state_dict(saved["schedulers"][name])
        return cls(model, ema, optimizers, schedulers)

    @property
    def lr(self) -> float:
        return float(self.optimizers["encoder"].param_groups[0]["lr"])

    @property
    def parts(self) -> list[nn.Module]:
        return [self.model.encoder, self.model.decoder, self.model.discriminator]

    def all_finite(self) -> bool:
        return all(
            bool(torch.isfinite(t).all())
            for m in self.parts
            for t in m.state_dict().values()
            if t.is_floating_point()
        )


def _compiled(module: nn.Module) -> nn.Module:
    """`torch.compile(module)`. The step's backward passes retain the graph (`backward_passes`), which
    AOTAutograd's donated buffers forbid ("compiled with non-empty donated buffers ... requires
    retain_graph=False", raised at the first step): they are switched off for the process."""
    torch._functorch.config.donated_buffer = False
    compiled: nn.Module = torch.compile(module)  # type: ignore[assignment]
    return compiled


StepFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, aug.AugmentParams | None], torch.Tensor]


def step_function(
    modules: StepModules,
    plan: Plan,
    autocast: Callable[[], AbstractContextManager[object]],
    average: Callable[[torch.Tensor], torch.Tensor] | None,
    device: torch.device,
    ctx: Distributed,
) -> StepFunction:
    """(x, eps, z_prior, augment) -> the step's metrics: `train_step` itself, or its CUDA graph
    under `train.cuda_graph` (vaegan.nn.cuda_graph)."""
    if plan.config.train.cuda_graph:
        check_graphable(device, ctx.world_size)
        graphed = GraphedStep(modules, plan.settings, autocast)
        return lambda x, eps, z_prior, augment: graphed(x, eps, z_prior)

    def eager(
        x: torch.Tensor, eps: torch.Tensor, z_prior: torch.Tensor, augment: aug.AugmentParams | None
    ) -> torch.Tensor:
        return train_step(modules, x, eps, z_prior, plan.settings, autocast, average=average, augment=augment)

    return eager


def step_modules(nets: Networks, plan: Plan, ctx: Distributed, device: torch.device) -> StepModules:
    """The networks as `train_step` drives them: in train mode, under DDP and compiled as configured."""
    nets.model.train()
    model = nets.model
    encoder: nn.Module = distributed.wrap(model.encoder, ctx, device)
    decoder: nn.Module = distributed.wrap(model.decoder, ctx, device)
    discriminator: nn.Module | None = None
    if plan.settings.objective == "vaegan":
        discriminator = distributed.wrap(model.discriminator, ctx, device)
    if plan.config.train.compile:
        encoder, decoder = _compiled(encoder), _compiled(decoder)
        discriminator = _compiled(discriminator) if discriminator is not None else None
    return StepModules(encoder, decoder, discriminator, nets.optimizers)


@dataclass
class RunningSums:
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

    def load_state(self, saved: dict[str, Any]) -> None:
        self.total.copy_(saved["total"])
        self.count = int(saved["count"])


@dataclass
class NonFiniteWatch:
    """Remembers the first step whose metrics were not finite, on the device."""

    step: torch.Tensor
    values: torch.Tensor

    @classmethod
    def on(cls, device: torch.device, width: int) -> NonFiniteWatch:
        return cls(torch.full((), -1, dtype=torch.long, device=device), torch.zeros(width, device=device))

    def update(self, metrics: torch.Tensor, step: int) -> None:
        first = (~torch.isfinite(metrics)).any() & (self.step < 0)
        self.step = torch.where(first, torch.full_like(self.step, step), self.step)
        self.values = torch.where(first, metrics, self.values)

    def check(self, names: tuple[str, ...]) -> None:
        """TrainingError naming the first non-finite step and values, if there was one."""
        bad_step = int(self.step.item())
        if bad_step < 0:
            return
        values = self.values.tolist()
        bad = [
            f"{name}={value}" for name, value in zip(names, values, strict=True) if not math.isfinite(value)
        ]
        raise TrainingError(f"non-finite loss at step {bad_step}: {', '.join(bad)}")


@dataclass
class LoopState:
    """What the loop carries from step to step: the step, running sums, history and timing."""

    step: int
    epoch_sums: RunningSums
    window_sums: RunningSums
    nonfinite: NonFiniteWatch
    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: dict[str, Any] | None = None
    train_wall_s: float = 0.0  # summed over the epochs (and sessions) trained so far
    images_seen: int = 0
    segment_start: float = 0.0  # the clock since the last epoch end: folded into train_wall_s
    segment_images: int = 0
    window_start: float = 0.0  # the clock since the last log window: images_per_s in the log
    window_images: int = 0

    @classmethod
    def start(cls, width: int, device: torch.device, resume: dict[str, Any] | None) -> LoopState:
        """Step 0, or the `resume` checkpoint's step, sums, history and global RNG states."""
        run = cls(
            step=0,
            epoch_sums=RunningSums(torch.zeros(width, device=device)),
            window_sums=RunningSums(torch.zeros(width, device=device)),
            nonfinite=NonFiniteWatch.on(device, width),
        )
        if resume is not None:
            saved = resume["state"]
            run.step = int(saved["step"])
            run.epoch_sums.load_state(saved["epoch_sums"])
            run.window_sums.load_state(saved["window_sums"])
            restore_rng(saved["rng"])
            run.history = saved["history"]
            run.best_metric = saved["best_metric"]
            run.train_wall_s = saved["train_wall_s"]
            run.images_seen = saved["images_seen"]
        return run

    def start_clocks(self) -> None:
        self.segment_start = self.window_start = time.perf_counter()

    def count_step(self, metrics: torch.Tensor, images: int) -> None:
        """Advance the step and fold its metric vector into the sums."""
        self.step += 1
        self.nonfinite.update(metrics, self.step)
        self.epoch_sums.add(metrics)
        self.window_sums.add(metrics)
        self.window_images += images
        self.segment_images += images

    def close_segment(self) -> None:
        """Add the time and images since the last epoch end to the run's totals."""
        now = time.perf_counter()
        self.train_wall_s += now - self.segment_start
        self.images_seen += self.segment_images
        self.segment_start, self.segment_images = now, 0

    @property
    def images_per_s(self) -> float:
        return self.images_seen / max(self.train_wall_s, 1e-9)


@dataclass
class Batches:
    """The training images on the device, drawn in the order (seed, epoch) fixes, with the noise
    (seed, step, rank) fixes."""

    images: torch.Tensor  # (N, 1, 28, 28)
    plan: Plan
    latent_dim: int
    device: torch.device
    perm_gen: torch.Generator
    noise_gen: torch.Generator
    perm: torch.Tensor | None = None  # this epoch's order of the images

    @classmethod
    def on_device(cls, images: np.ndarray, plan: Plan, latent_dim: int, device: torch.device) -> Batches:
        x_all = images_to_device(images, device, plan.config.train.channels_last)
        generators = torch.Generator(device=device), torch.Generator(device=device)
        return cls(x_all, plan, latent_dim, device, *generators)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, aug.AugmentParams | None]:
        """(x (B, 1, 28, 28), eps (B, Z), z_prior (B, Z), D's augmentation or None) of this rank
        at `step`; the augmentation is drawn after the noise, so `train.augment: none` draws the
        same noise as before it existed."""
        plan, device = self.plan, self.device
        seed, batch = plan.config.train.seed, plan.config.train.batch_size
        epoch, position = divmod(step, plan.per_epoch)
        if position == 0 or self.perm is None:
            self.perm_gen.manual_seed(_seed_for(seed, epoch))
            self.perm = torch.randperm(len(self.images), generator=self.perm_gen, device=device)
        start = (position * plan.world_size + plan.rank) * batch
        x = self.images[self.perm[start : start + batch]]  # indexed on the device
        self.noise_gen.manual_seed(_seed_for(seed, step, plan.rank))
        noise = torch.randn(2, batch, self.latent_dim, generator=self.noise_gen, device=device)
        policy = plan.config.train.augment
        if policy == "none":
            return x, noise[0], noise[1], None
        size = x.shape[-1]
        pairs = aug.draw(policy, batch, size, self.noise_gen, device)
        prior = aug.draw(policy, batch, size, self.noise_gen, device)
        return x, noise[0], noise[1], pairs.repeat_pairs(prior)


@dataclass
class Validation:
    """The validation images and the fixed codes of the epoch's sample and reconstruction grids."""

    images: torch.Tensor  # (V, 1, 28, 28)
    sample_z: torch.Tensor  # (GRID_SAMPLES, Z)
    recon_eps: torch.Tensor  # (V, Z)

    @classmethod
    def on_device(cls, images: np.ndarray, seed: int, latent_dim: int, device: torch.device) -> Validation:
        val = images_to_device(images[:VAL_IMAGES], device, False)
        grid_gen = torch.Generator(device="cpu").manual_seed(seed)
        sample_z = torch.randn(GRID_SAMPLES, latent_dim, generator=grid_gen).to(device)
        recon_eps = torch.randn(val.shape[0], latent_dim, generator=grid_gen).to(device)
        return cls(val, sample_z, recon_eps)

    @torch.no_grad()
    def evaluate(self, model: VAEGAN) -> tuple[float, dict[str, np.ndarray]]:
        """(negative ELBO in nats per image (Bernoulli decoder), sample/reconstruction grids)."""
        val = self.images
        was_training = model.training
        model.eval()
        total = torch.zeros((), device=val.device, dtype=torch.float64)
        for start in range(0, val.shape[0], 500):
            x = val[start : start + 500]
            mu, logvar = model.encoder(x)
            logits = model.decoder(reparameterize(mu, logvar, self.recon_eps[start : start + 500]))
            bce = nn.functional.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="sum")
            kl = 0.5 * (mu.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).sum()
            total += (bce + kl).double()
        val_loss = float(total.item()) / val.shape[0]
        samples = model.decoder.decode(self.sample_z).float().cpu().numpy()[:, 0]  # (64, 28, 28)
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


class Reporter:
    """Rank 0's voice: the progress bar (or log lines) and the observer; silent on other ranks."""

    def __init__(
        self, observer: TrainingObserver | None, is_main: bool, plan: Plan, step: int, progress: bool
    ) -> None:
        self.observer = observer if is_main else None
        self.is_main = is_main
        self.total_steps = plan.total_steps
        self.bar: tqdm | None = None
        if progress and is_main:
            self.bar = tqdm(
                total=plan.total_steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr
            )

    def stepped(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def window(self, step: int, epoch: int, values: dict[str, float]) -> None:
        if self.bar is not None:
            shown = ("loss_pixel", "loss_dis", "images_per_s")
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in values.items() if k in shown})
        elif self.is_main:
            line = " ".join(f"{k}={v:.4g}" for k, v in values.items())
            log.info("step %d/%d epoch %d %s", step, self.total_steps, epoch, line)
        if self.observer is not None:
            self.observer.on_log(step, values)

    def epoch(self, epoch: int, row: dict[str, Any], grids: dict[str, np.ndarray]) -> None:
        if self.observer is not None:
            self.observer.on_epoch(epoch, row, grids)
        if self.bar is None and self.is_main:
            log.info("epoch %d done: val_loss=%.3f", epoch, row["val_loss"])

    @property
    def takes_checkpoints(self) -> bool:
        return self.observer is not None

    def checkpoint(self, payload: dict[str, Any]) -> None:
        if self.observer is not None:
            self.observer.on_checkpoint(payload)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
