"""The training step as a run takes it, built in one place (`build_training_step`): the networks
in train mode (DDP-wrapped and compiled as configured), the batches on the device and the step
function (`vaegan.nn.step.train_step`, or its CUDA graph). `fit_vaegan` runs it step by step; the
benchmarks time the same object."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch._functorch.config as functorch_config
from torch import nn

from vaegan.config import Config
from vaegan.nn import augment as aug
from vaegan.nn import distributed
from vaegan.nn.batches import Batches
from vaegan.nn.cuda_graph import GraphedStep, check_graphable
from vaegan.nn.devices import autocast_factory
from vaegan.nn.distributed import Distributed
from vaegan.nn.plan import Plan
from vaegan.nn.step import LossSettings, StepModules, train_step
from vaegan.nn.training_networks import Networks

StepFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, aug.AugmentParams | None], torch.Tensor]


@contextmanager
def compiled_step_settings() -> Iterator[None]:
    """The compiler settings a compiled step runs under. The step's backward passes retain the
    graph (`vaegan.nn.step.backward_passes`), which AOTAutograd's donated buffers forbid ("compiled
    with non-empty donated buffers ... requires retain_graph=False", raised at the first step):
    they are off while the step runs (and compiles), and as they were everywhere else."""
    with functorch_config.patch(donated_buffer=False):
        yield


@dataclass(frozen=True)
class EagerStep:
    """`train_step` on the step's batch, as it is: (x, eps, z_prior, augment) -> the metrics."""

    modules: StepModules
    settings: LossSettings
    autocast: Callable[[], AbstractContextManager[object]]
    average: Callable[[torch.Tensor], torch.Tensor] | None

    def __call__(
        self, x: torch.Tensor, eps: torch.Tensor, z_prior: torch.Tensor, augment: aug.AugmentParams | None
    ) -> torch.Tensor:
        return train_step(
            self.modules, x, eps, z_prior, self.settings, self.autocast, average=self.average, augment=augment
        )


def step_modules(nets: Networks, plan: Plan, ctx: Distributed, device: torch.device) -> StepModules:
    """The networks as `train_step` drives them: in train mode, under DDP and compiled as configured."""
    nets.model.train()
    model = nets.model
    encoder: nn.Module = distributed.wrap(model.encoder, ctx, device)
    decoder: nn.Module = distributed.wrap(model.decoder, ctx, device)
    discriminator: nn.Module | None = None
    if plan.settings.objective == "vaegan":
        discriminator = distributed.wrap(model.discriminator, ctx, device)
    if plan.compile:
        encoder, decoder = _compiled(encoder), _compiled(decoder)
        discriminator = _compiled(discriminator) if discriminator is not None else None
    return StepModules(encoder, decoder, discriminator, nets.optimizers)


def _compiled(module: nn.Module) -> nn.Module:
    """`torch.compile(module)`; it compiles at its first call, under `compiled_step_settings`."""
    compiled: nn.Module = torch.compile(module)  # type: ignore[assignment]
    return compiled


def step_function(modules: StepModules, plan: Plan, ctx: Distributed, device: torch.device) -> StepFunction:
    """(x, eps, z_prior, augment) -> the step's metrics: `train_step` itself, or its CUDA graph
    under `train.cuda_graph` (vaegan.nn.cuda_graph)."""
    autocast = autocast_factory(device, plan.precision)
    if plan.cuda_graph:
        check_graphable(device, ctx.world_size)
        graphed = GraphedStep(modules, plan.settings, autocast)
        return lambda x, eps, z_prior, augment: graphed(x, eps, z_prior)
    average = functools.partial(distributed.average, ctx=ctx) if ctx.enabled else None
    return EagerStep(modules, plan.settings, autocast, average)


@dataclass(frozen=True)
class TrainingStep:
    """Step `i` of a run: its batch, then the forward pass, the backward passes and the optimizer
    steps of the networks; calling it returns the step's metric vector (on the device)."""

    plan: Plan
    nets: Networks
    batches: Batches
    function: StepFunction

    def __call__(self, step: int) -> torch.Tensor:
        batch = self.batches.batch(step)
        if not self.plan.compile:
            return self.function(*batch)
        with compiled_step_settings():
            return self.function(*batch)


def build_training_step(
    *,
    config: Config,
    train_images: np.ndarray,
    device: torch.device,
    dist_ctx: Distributed | None = None,
    resume: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> TrainingStep:
    """The step of a training of `config.model` with `config.train` on uint8 images (N, 28, 28):
    the networks fresh for the seed or those of the `resume` checkpoint, on `device`, as this rank
    of `dist_ctx` trains them. `provenance` goes into the run's `Plan` (every checkpoint records it)."""
    ctx = dist_ctx or Distributed()
    plan = Plan.of(config, len(train_images), ctx, provenance or {})
    nets = Networks.build(config, device, resume)
    modules = step_modules(nets, plan, ctx, device)
    batches = Batches.on_device(train_images, plan, nets.model.args.latent_dim, device)
    return TrainingStep(plan, nets, batches, step_function(modules, plan, ctx, device))
