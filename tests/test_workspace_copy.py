"""A workspace copied or moved with its mlflow.db: MLflow records absolute artifact locations, so the
copy's runs used to read and write the original folder's mlartifacts. Now the copy refuses, naming
the original (measured: a copy's `vaegan train` wrote its run's grids into the original)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import TinyConfigAt
from vaegan.cli import main

# Every path `vaegan train` writes, relative to the workspace (as in the shipped params.yaml).
RELATIVE = {
    "train": {
        "checkpoint_dir": "models/checkpoints",
        "model_path": "models/vaegan.pt",
        "metrics_path": "metrics/train.json",
        "history_path": "metrics/train_history.csv",
    },
    "tracking": {"uri": "sqlite:///mlflow.db", "artifact_location": "mlartifacts"},
}


def train(*overrides: str) -> int:
    """`vaegan train` in the working directory, in-process; its store is the params' (mlflow's
    set_tracking_uri exports MLFLOW_TRACKING_URI, which would win over them in the next call)."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return main(["train", *(arg for item in overrides for arg in ("--set", item))])


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_copied_or_moved_workspace_refuses_its_store_naming_the_original(
    tmp_path: Path,
    tiny_config_at: TinyConfigAt,
    _migrated_mlflow_db: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    original = tmp_path / "original"
    original.mkdir()
    config = tiny_config_at(original, **RELATIVE)
    (original / "params.yaml").write_text(yaml.safe_dump(config.to_dict()))
    shutil.copy(_migrated_mlflow_db, original / "mlflow.db")
    monkeypatch.chdir(original)
    assert train() == 0
    artifacts = files(original / "mlartifacts")
    assert any(name.endswith("samples.png") for name in artifacts)  # the run's epoch grids

    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    monkeypatch.chdir(copy)
    capsys.readouterr()
    assert train("train.resume=never") == 2  # a new run
    assert train("train.epochs=2") == 2  # the copied run, resumed
    refusal = (
        f"vaegan train: error: MLflow store sqlite:///{copy / 'mlflow.db'} was moved or copied from "
        f"{original / 'mlflow.db'}: its experiment 'vaegan' keeps its artifacts in "
        f"{original / 'mlartifacts'}, and this workspace's runs would read and write there; work in the "
        "original, or start a new store here (move mlflow.db and the artifact folder aside)"
    )
    assert capsys.readouterr().err.splitlines() == [refusal, refusal]
    assert files(original / "mlartifacts") == artifacts

    moved = tmp_path / "moved"
    original.rename(moved)
    monkeypatch.chdir(moved)
    assert train("train.resume=never") == 2
    assert f"was moved or copied from {original / 'mlflow.db'}:" in capsys.readouterr().err

    # The original, where it was made, keeps working; so does a copy given a store of its own.
    moved.rename(original)
    monkeypatch.chdir(original)
    assert train("train.epochs=2") == 0
    fresh = tmp_path / "fresh"
    shutil.copytree(original, fresh, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    shutil.copy(_migrated_mlflow_db, fresh / "mlflow.db")
    monkeypatch.chdir(fresh)
    assert train("train.resume=never") == 0
    assert any(name.endswith("samples.png") for name in files(fresh / "mlartifacts"))
    assert files(original / "mlartifacts").keys() > artifacts.keys()  # only the original's own run grew


def test_workspaces_sharing_one_store_are_not_a_copy(
    tmp_path: Path, tiny_config_at: TinyConfigAt, _migrated_mlflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two checkouts with one MLFLOW_TRACKING_URI: the experiment was created in that very store."""
    store = tmp_path / "mlflow.db"
    shutil.copy(_migrated_mlflow_db, store)
    for name in ("one", "two"):
        workspace = tmp_path / name
        workspace.mkdir()
        config = tiny_config_at(workspace, **{**RELATIVE, "tracking": {"artifact_location": "mlartifacts"}})
        (workspace / "params.yaml").write_text(yaml.safe_dump(config.to_dict()))
        monkeypatch.chdir(workspace)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        assert main(["train", "--set", f"tracking.uri=sqlite:///{store}"]) == 0
    assert not (tmp_path / "two" / "mlartifacts").exists()  # the experiment's folder is one's
