"""`vaegan train` under torchrun: two CPU processes (gloo) train one model with DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO_ROOT, TinyConfig
from vaegan.artifacts.checkpoint import load_checkpoint
from vaegan.nn.checkpoint_payload import load_model


@pytest.mark.slow
def test_two_process_gloo_ddp_run(tmp_path: Path, tiny_config: TinyConfig, _migrated_mlflow_db: Path) -> None:
    # 256 images / (16 per rank x 2 ranks) = 8 steps per epoch.
    config = tiny_config(train={"batch_size": 16, "epochs": 1})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(config.to_dict()))
    shutil.copy(_migrated_mlflow_db, tmp_path / "mlflow.db")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "vaegan", "train", "--params", str(params),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    metrics = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 8
    # Checked on every rank at the end: the weights of rank 1 equal rank 0's.
    assert metrics["ddp_max_weight_difference"] == 0.0
    model = load_model(tmp_path / "vaegan.pt")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["state"]
    assert state["world_size"] == 2 and state["completed"]
    # Rank 0 alone logged: one MLflow run, one log line per logging step.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("vaegan").experiment_id])
    assert run.data.tags["world_size"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "step/loss_pixel")] == [2, 4, 6, 8]
    assert done.stderr.count("step 8/8") == 1
