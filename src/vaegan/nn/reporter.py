"""Where a training reports (`TrainingObserver`, implemented by the train stage with files and
MLflow) and rank 0's voice in the loop (`Reporter`): the progress bar or log lines, and the observer."""

from __future__ import annotations

import logging
import sys
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)


class TrainingObserver(Protocol):
    """Where the loop reports; the stage implements it with files and MLflow (rank 0 only)."""

    def on_log(self, step: int, values: dict[str, float]) -> None: ...

    def on_epoch(self, epoch: int, row: dict[str, Any], grids: dict[str, np.ndarray]) -> None: ...

    def on_checkpoint(self, payload: dict[str, Any]) -> None: ...


class Reporter:
    """Rank 0's voice: the progress bar (or log lines) and the observer; silent on other ranks."""

    def __init__(
        self, observer: TrainingObserver | None, is_main: bool, total_steps: int, step: int, progress: bool
    ) -> None:
        self.observer = observer if is_main else None
        self.is_main = is_main
        self.total_steps = total_steps
        self.bar: tqdm | None = None
        if progress and is_main:
            self.bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr)

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
