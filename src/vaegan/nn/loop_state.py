"""What the training loop carries from step to step (`LoopState`): the step, the device-side
running sums of the metrics, the first non-finite step, the history and the clocks."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from vaegan.errors import TrainingError
from vaegan.nn.resume import restore_rng


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
