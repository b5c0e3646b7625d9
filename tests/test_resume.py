"""Reproducibility of `vaegan train` on CPU, through the real CLI in subprocesses:

- two runs with the same params and data end with bitwise-identical weights and optimizer states;
- a run killed with SIGKILL after its first checkpoint, then started again, resumes and ends
  bitwise identical to the uninterrupted run, in the same MLflow run.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from conftest import REPO_ROOT, TinyConfigAt
from vaegan.artifacts.checkpoint import load_checkpoint
from vaegan.config import Config, TrainConfig, param
from vaegan.nn.resume import resume_key
from vaegan.nn.step import VAEGAN_METRICS

# 512 images / batch 16 = 32 steps per epoch, 2 epochs: 64 steps, a checkpoint every 5.
TRAIN = {"limit_train_images": 512, "batch_size": 16, "epochs": 2, "checkpoint_every": 5, "log_every": 4}


def prepare_run(root: Path, tiny_config_at: TinyConfigAt, migrated_db: Path) -> tuple[Path, dict[str, str]]:
    root.mkdir(parents=True)
    config = tiny_config_at(root, train=TRAIN)
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(config.to_dict()))
    shutil.copy(migrated_db, root / "mlflow.db")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "PYTHONHASHSEED": "0"}
    env.pop("WORLD_SIZE", None)
    return params, env


def train_command(params: Path) -> list[str]:
    return [sys.executable, "-m", "vaegan", "train", "--params", str(params)]


def run_to_completion(params: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        train_command(params), env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Recursive equality, with torch.equal for tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where} keys differ"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where} lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def training_state(root: Path) -> dict[str, Any]:
    """What must match between runs: weights, optimizer and scheduler states, step, loss history."""
    final = load_checkpoint(root / "vaegan.pt")
    last = load_checkpoint(root / "checkpoints" / "last.pt")
    losses = (*VAEGAN_METRICS, "val_loss")
    return {
        "weights": {net: final[net] for net in ("encoder", "decoder", "discriminator")},
        "last_weights": {net: last[net] for net in ("encoder", "decoder", "discriminator")},
        "optimizers": last["state"]["optimizers"],
        "schedulers": last["state"]["schedulers"],
        "step": last["state"]["step"],
        "history": [[row[k] for k in losses] for row in last["state"]["history"]],
    }


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, tiny_config_at: TinyConfigAt, _migrated_mlflow_db: Path
) -> Path:
    """An uninterrupted run."""
    root = tmp_path_factory.mktemp("reference") / "run"
    params, env = prepare_run(root, tiny_config_at, _migrated_mlflow_db)
    run_to_completion(params, env)
    return root


def test_two_runs_are_bitwise_identical(
    reference: Path, tmp_path: Path, tiny_config_at: TinyConfigAt, _migrated_mlflow_db: Path
) -> None:
    params, env = prepare_run(tmp_path / "again", tiny_config_at, _migrated_mlflow_db)
    run_to_completion(params, env)
    ref, again = training_state(reference), training_state(tmp_path / "again")
    assert ref["step"] == 64 and len(ref["history"]) == 2
    assert_same(ref, again, "state")


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical_to_an_uninterrupted_run(
    reference: Path, tmp_path: Path, tiny_config_at: TinyConfigAt, _migrated_mlflow_db: Path
) -> None:
    root = tmp_path / "killed"
    params, env = prepare_run(root, tiny_config_at, _migrated_mlflow_db)
    last = root / "checkpoints" / "last.pt"
    process = subprocess.Popen(
        train_command(params), env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    interrupted = load_checkpoint(last)["state"]
    assert not interrupted["completed"] and 5 <= interrupted["step"] < 64
    assert not (root / "vaegan.pt").exists()

    resumed = subprocess.run(
        train_command(params), env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {last} at step" in resumed.stderr
    assert_same(training_state(reference), training_state(root), "state")
    final_state = load_checkpoint(last)["state"]
    assert final_state["mlflow_run_id"] == interrupted["mlflow_run_id"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("vaegan").experiment_id])
    assert run.info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "step/loss_pixel")}
    assert steps == set(range(4, 65, 4))  # every logging step, before and after the kill


def test_changed_training_code_supersedes_a_finished_checkpoint() -> None:
    """After a code change DVC re-runs `train`: the old code's finished model must not be reused."""
    from vaegan.config import Config
    from vaegan.errors import CheckpointError
    from vaegan.nn.resume import decide_resume, resume_key, training_code_sha256

    key = resume_key(Config(), "d" * 64, 1)
    assert key["code_sha256"] == training_code_sha256() and len(key["code_sha256"]) == 64
    old = {**key, "code_sha256": "0" * 64}
    finished = {"resume_key": old, "completed": True, "step": 10}
    decision = decide_resume(finished, key, 10, "auto", "last.pt")
    assert decision.action == "fresh"
    assert "code_sha256" in decision.reason
    assert decide_resume({**finished, "resume_key": key}, key, 10, "auto", "last.pt").action == "complete"
    with pytest.raises(CheckpointError, match="code_sha256"):
        decide_resume({**finished, "completed": False, "step": 5}, key, 10, "auto", "last.pt")


def test_a_checkpoint_beyond_the_budget_is_a_new_run_and_an_unfinished_one_is_set_aside() -> None:
    """`--set train.epochs=8` after a 20-epoch run: a smaller budget starts fresh, it is no error."""
    from vaegan.config import Config
    from vaegan.nn.resume import decide_resume, resume_key

    key = resume_key(Config(), "d" * 64, 1)
    finished = {"resume_key": key, "completed": True, "step": 1260}
    decision = decide_resume(finished, key, 504, "auto", "models/checkpoints/last.pt")
    assert (decision.action, decision.set_aside) == ("fresh", None)
    assert decision.reason.startswith(
        "models/checkpoints/last.pt is at step 1260, beyond this run's budget of 504 steps"
    )
    unfinished = decide_resume(
        {**finished, "completed": False}, key, 504, "auto", "models/checkpoints/last.pt"
    )
    assert (unfinished.action, unfinished.set_aside) == ("fresh", "models/checkpoints/last.step1260.pt")
    assert unfinished.reason.endswith("the unfinished run is kept as models/checkpoints/last.step1260.pt")
    assert decide_resume(finished, key, 1260, "auto", "last.pt").action == "complete"
    assert decide_resume({**finished, "completed": False}, key, 1300, "auto", "last.pt").action == "resume"


def test_a_new_training_param_is_in_the_resume_key_unless_its_field_says_otherwise() -> None:
    """A train.* param added without metadata decides whether a checkpoint may be resumed; one
    marked `resume=False` does not."""
    extended_train = dataclasses.make_dataclass(
        "ExtendedTrain",
        [("new_weight", float, param(0.5, ge=0)), ("new_log_dir", str, param("logs", resume=False))],
        bases=(TrainConfig,),
        frozen=True,
    )
    config = dataclasses.replace(Config(), train=extended_train())
    key = resume_key(config, "d" * 64, 1)
    assert key["train"]["new_weight"] == 0.5
    assert "new_log_dir" not in key["train"]
    assert key["train"]["lr"] == Config().train.lr and "epochs" not in key["train"]
    changed = dataclasses.replace(config, train=extended_train(new_weight=0.25))
    assert resume_key(changed, "d" * 64, 1)["train"]["new_weight"] == 0.25
    moved = dataclasses.replace(config, train=extended_train(new_log_dir="elsewhere"))
    assert resume_key(moved, "d" * 64, 1) == key
