"""The fixed facts of a training run (`Plan`): its objectives, step budget, batches, cadence, the
way its step runs and its place among the ranks, read once from the config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vaegan.config import Config
from vaegan.errors import ConfigError
from vaegan.nn.distributed import Distributed
from vaegan.nn.step import LossSettings


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


@dataclass(frozen=True)
class Plan:
    """The fixed facts of a run, as the loop, the batches and the step builder read them."""

    settings: LossSettings
    # the budget and the cadence
    per_epoch: int
    total_steps: int
    log_every: int
    checkpoint_every: int
    # the batches: order and noise from (seed, epoch, step, rank)
    seed: int
    batch_size: int
    augment: str
    channels_last: bool
    # how the step runs
    precision: str
    compile: bool
    cuda_graph: bool
    # the place among the ranks
    world_size: int
    rank: int
    # what every checkpoint records besides the weights and the loop's state
    preset: str
    recorded_config: dict[str, Any]  # Config.to_dict() of the run
    provenance: dict[str, Any]

    @classmethod
    def of(cls, config: Config, num_images: int, ctx: Distributed, provenance: dict[str, Any]) -> Plan:
        train = config.train
        return cls(
            settings=LossSettings.from_config(train),
            per_epoch=steps_per_epoch(num_images, train.batch_size, ctx.world_size),
            total_steps=target_steps(num_images, config, ctx.world_size),
            log_every=train.log_every,
            checkpoint_every=train.checkpoint_every,
            seed=train.seed,
            batch_size=train.batch_size,
            augment=train.augment,
            channels_last=train.channels_last,
            precision=train.precision,
            compile=train.compile,
            cuda_graph=train.cuda_graph,
            world_size=ctx.world_size,
            rank=ctx.rank,
            preset=config.model.preset,
            recorded_config=config.to_dict(),
            provenance=provenance,
        )

    @property
    def names(self) -> tuple[str, ...]:
        """The columns of the metric vector a step returns."""
        return self.settings.metric_names

    @property
    def images_per_step(self) -> int:
        return self.batch_size * self.world_size
