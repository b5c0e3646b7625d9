"""The MLflow run of a training: created once, continued on resume (its id lives in the checkpoint).

Logged: every param (`Config.flat()`), tags (git commit, data sha256, objective, preset, world
size, and the DVC experiment's name and baseline when `dvc exp run` runs it), per-step metrics
`step/<name>` at `train.log_every`, per-epoch metrics `epoch/<name>` (x axis = epoch),
and per-epoch PNG grids under `grids/epoch_NNN/`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from vaegan.artifacts.images import image_grid, write_png
from vaegan.tracking.store import connect, ensure_experiment, log_metrics, orchestration_tags

if TYPE_CHECKING:
    from vaegan.config import Config

log = logging.getLogger(__name__)

_BATCH = 100  # MLflow's limit of params per log_batch request


class TrainingRun:
    """One MLflow run, written through MlflowClient (no global active-run state)."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def open(cls, config: Config, tags: dict[str, str], resume_run_id: str | None = None) -> TrainingRun:
        """Continue run `resume_run_id` when it exists in the store, else create one and log the params."""
        client = connect(config.tracking)
        if resume_run_id:
            try:
                run = client.get_run(resume_run_id)
            except Exception:  # MlflowException: the store does not hold that run
                log.warning(
                    "MLflow run %s of the checkpoint is not in this store; starting a new run", resume_run_id
                )
            else:
                if run.info.status != "RUNNING":
                    client.update_run(resume_run_id, status="RUNNING")
                log.info("continuing MLflow run %s", resume_run_id)
                return cls(client, resume_run_id)
        experiment_id = ensure_experiment(client, config.tracking)
        name = f"train-{config.train.objective}-{config.model.preset}"
        run = client.create_run(experiment_id, tags={**tags, **orchestration_tags()}, run_name=name)
        tracker = cls(client, run.info.run_id)
        tracker.log_params(config.flat())
        log.info("MLflow run %s (experiment %s)", run.info.run_id, config.tracking.experiment)
        return tracker

    def log_params(self, params: dict[str, Any]) -> None:
        """Log each param as a string (None as `null`), in batches MLflow accepts."""
        items = [Param(key, "null" if value is None else str(value)) for key, value in params.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _BATCH])

    def log_metrics(self, values: dict[str, float], step: int, prefix: str) -> None:
        """Log `prefix/<name>` for each finite value at `step`."""
        log_metrics(self.client, self.run_id, values, step=step, prefix=f"{prefix}/")

    def log_grids(self, epoch: int, grids: dict[str, np.ndarray]) -> None:
        """Log each (N, 28, 28) image stack as `grids/epoch_NNN/<name>.png` (8 per row)."""
        with tempfile.TemporaryDirectory() as tmp:
            for name, images in grids.items():
                path = Path(tmp) / f"{name}.png"
                write_png(path, image_grid(images, ncols=8), scale=2)
                self.client.log_artifact(self.run_id, str(path), artifact_path=f"grids/epoch_{epoch:03d}")

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with `status` (FINISHED, FAILED or KILLED)."""
        self.client.set_terminated(self.run_id, status=status)
