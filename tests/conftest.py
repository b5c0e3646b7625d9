"""Shared fixtures: the shipped MNIST sample, a small prepared data set, a tiny config, and a
temporary MLflow store (migrated once per session and copied per test)."""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Protocol

import numpy as np
import pytest

from vaegan.config import Config, build_config
from vaegan.data.idx import read_images, read_labels
from vaegan.data.splits import split_files

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The MNIST sample shipped inside the package (four IDX .gz files)."""
    return Path(str(resources.files("vaegan") / "sample_data" / "mnist"))


@pytest.fixture(scope="session")
def small_prepared_dir(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    """A small prepared data set (1,000 train, 200 val, 1,000 test) cut from the real sample."""
    out = tmp_path_factory.mktemp("prepared")
    train_x = read_images(sample_dir / "train-images-idx3-ubyte.gz")
    train_y = read_labels(sample_dir / "train-labels-idx1-ubyte.gz")
    test_x = read_images(sample_dir / "t10k-images-idx3-ubyte.gz")
    test_y = read_labels(sample_dir / "t10k-labels-idx1-ubyte.gz")
    parts = {
        "train": (train_x[:1000], train_y[:1000]),
        "val": (train_x[1000:1200], train_y[1000:1200]),
        "test": (test_x[:1000], test_y[:1000]),
    }
    for split, (images, labels) in parts.items():
        images_path, labels_path = split_files(out, split)
        np.save(images_path, images)
        np.save(labels_path, labels)
    return out


@pytest.fixture(scope="session")
def trained_evaluator(tmp_path_factory: pytest.TempPathFactory, small_prepared_dir: Path) -> Path:
    """An evaluator trained for two epochs on the 1,000 training images (seconds)."""
    from vaegan.artifacts.checkpoint import save_checkpoint
    from vaegan.data.splits import load_split
    from vaegan.evaluator import train_evaluator
    from vaegan.scoring.lenet import evaluator_payload

    path = tmp_path_factory.mktemp("evaluator") / "evaluator.pt"
    train, test = load_split(small_prepared_dir, "train"), load_split(small_prepared_dir, "test")
    model, metrics = train_evaluator(train=train, test=test, epochs=2, batch_size=64, lr=5e-3, seed=0)
    save_checkpoint(path, evaluator_payload(model, {}, {"metrics": metrics}))
    return path


class TinyConfigAt(Protocol):
    """The type of the `tiny_config_at` fixture."""

    def __call__(self, root: Path, **sections: dict) -> Config: ...


class TinyConfig(Protocol):
    """The type of the `tiny_config` fixture."""

    def __call__(self, *, root: Path | None = None, **sections: dict) -> Config: ...


def _tiny_config(tmp_path: Path, prepared_dir: Path, **sections: dict) -> Config:
    """A CPU config that trains in seconds, with every output under `tmp_path`."""
    raw: dict[str, dict] = {
        "data": {"prepared_dir": str(prepared_dir), "raw_dir": str(tmp_path / "raw")},
        "model": {"preset": "seed"},
        "evaluator": {
            "epochs": 1,
            "path": str(tmp_path / "evaluator.pt"),
            "metrics_path": str(tmp_path / "metrics" / "evaluator.json"),
        },
        "train": {
            "epochs": 1,
            "batch_size": 32,
            "limit_train_images": 256,
            "prior_components": 20,  # a mixture for 256 codes
            "device": "cpu",
            "precision": "fp32",  # the bitwise-reproducible path on every CPU (bf16: test_augment)
            "channels_last": False,
            "checkpoint_every": 4,
            "log_every": 2,
            "checkpoint_dir": str(tmp_path / "checkpoints"),
            "model_path": str(tmp_path / "vaegan.pt"),
            "metrics_path": str(tmp_path / "metrics" / "train.json"),
            "history_path": str(tmp_path / "metrics" / "train_history.csv"),
        },
        "evaluate": {
            "num_samples": 200,
            "batch_size": 100,
            "baseline_metrics": None,
            "metrics_path": str(tmp_path / "metrics" / "eval.json"),
            "report_dir": str(tmp_path / "reports"),
        },
        "export": {"dir": str(tmp_path / "onnx"), "metrics_path": str(tmp_path / "metrics" / "export.json")},
        "tracking": {
            "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "artifact_location": str(tmp_path / "mlartifacts"),
        },
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return build_config(raw)


@pytest.fixture(scope="session")
def tiny_config_at(small_prepared_dir: Path) -> TinyConfigAt:
    """`tiny_config_at(root, **sections)`: the tiny config with its outputs under `root`, for
    module-scoped fixtures (which cannot use the per-test `tiny_config`)."""

    def build(root: Path, **sections: dict) -> Config:
        return _tiny_config(root, small_prepared_dir, **sections)

    return build


@pytest.fixture
def tiny_config(tmp_path: Path, tiny_config_at: TinyConfigAt) -> TinyConfig:
    """`tiny_config(**sections)`: a CPU config that trains in seconds on the small prepared data
    set, every output under this test's `tmp_path` (or `root=`); each keyword is a section whose
    values override the tiny ones, e.g. `tiny_config(train={"epochs": 2})`."""

    def build(*, root: Path | None = None, **sections: dict) -> Config:
        return tiny_config_at(root or tmp_path, **sections)

    return build


@pytest.fixture(scope="session")
def _migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store migrated once (the schema migration takes seconds)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_uri(tmp_path: Path, _migrated_mlflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, migrated MLflow SQLite store for this test; MLFLOW_TRACKING_URI points at it."""
    db = tmp_path / "mlflow.db"
    shutil.copy(_migrated_mlflow_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's MLflow/Prefect settings or writes telemetry."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):  # set when DVC runs pytest
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
