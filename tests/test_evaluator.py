"""The evaluator classifier (the `evaluator` stage trains `vaegan.scoring.lenet.LeNet`): determinism,
checkpoint round trip, features, the CLI stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, TinyConfig
from vaegan import evaluator
from vaegan.artifacts.checkpoint import save_checkpoint
from vaegan.config import EvaluatorConfig
from vaegan.data.idx import read_images, read_labels
from vaegan.data.splits import Split, load_split
from vaegan.errors import CheckpointError
from vaegan.nn.checkpoint_payload import model_payload
from vaegan.nn.networks import build_model, model_args_for
from vaegan.scoring import lenet


def _train(split: Split, test: Split, seed: int) -> lenet.LeNet:
    model, _ = evaluator.train_evaluator(
        train=Split(split.images[:320], split.labels[:320]),
        test=Split(test.images[:64], test.labels[:64]),
        epochs=1,
        batch_size=64,
        lr=5e-3,
        seed=seed,
    )
    return model


def test_training_is_deterministic(small_prepared_dir: Path) -> None:
    train, test = load_split(small_prepared_dir, "train"), load_split(small_prepared_dir, "test")
    torch.manual_seed(123)
    before = torch.rand(1)
    first = _train(train, test, seed=0)
    second = _train(train, test, seed=0)
    other = _train(train, test, seed=1)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(first.head[1].weight, other.head[1].weight)
    # The caller's global RNG stream is left as it was.
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)


def test_random_shift_translates_with_zero_fill() -> None:
    images = torch.arange(2 * 25, dtype=torch.float32).reshape(2, 1, 5, 5) + 1
    generator = torch.Generator().manual_seed(0)
    shifted = evaluator.random_shift(images, 1, generator)
    dy, dx = torch.randint(0, 3, (2, 2), generator=torch.Generator().manual_seed(0)) - 1
    for i in range(2):
        expected = np.zeros((5, 5), dtype=np.float32)
        src = images[i, 0].numpy()
        # output[r, c] = input[r + dy, c + dx] where inside the image
        for r in range(5):
            for c in range(5):
                rr, cc = r + int(dy[i]), c + int(dx[i])
                if 0 <= rr < 5 and 0 <= cc < 5:
                    expected[r, c] = src[rr, cc]
        np.testing.assert_array_equal(shifted[i, 0].numpy(), expected)
    assert evaluator.random_shift(images, 0, generator) is images


def test_stage_writes_checkpoint_and_metrics(tiny_config: TinyConfig, small_prepared_dir: Path) -> None:
    config = tiny_config(evaluator={"epochs": 3})
    assert evaluator.run(config, None) == 0  # type: ignore[arg-type]
    metrics = json.loads(Path(config.evaluator.metrics_path).read_text())
    assert metrics["num_train"] == 1000 and metrics["num_test"] == 1000
    assert metrics["feature_dim"] == 128
    assert 0.85 <= metrics["test_accuracy"] <= 1.0  # three epochs on 1,000 images
    model = lenet.load_evaluator(config.evaluator.path)
    test = load_split(small_prepared_dir, "test")
    assert lenet.accuracy(model, test) == metrics["test_accuracy"]
    feats = lenet.features(model, lenet.images_to_tensor(test.images[:10]), batch_size=4)
    assert feats.shape == (10, 128) and feats.dtype == np.float32 and (feats >= 0).all()


def test_load_evaluator_refuses_other_checkpoints(tmp_path: Path) -> None:
    vaegan_path = tmp_path / "vaegan.pt"
    args = model_args_for("seed")
    model = build_model(args)
    save_checkpoint(vaegan_path, model_payload(model, {}, {}))
    with pytest.raises(CheckpointError, match="holds a 'vaegan' model, expected 'evaluator'"):
        lenet.load_evaluator(str(vaegan_path))
    wrong = tmp_path / "wrong.pt"
    narrow = lenet.LeNet(lenet.EvaluatorArgs(hidden=64))
    payload = lenet.evaluator_payload(narrow, {}, {})
    payload["model_args"] = lenet.EvaluatorArgs().to_dict()  # says 128, holds 64
    save_checkpoint(wrong, payload)
    with pytest.raises(CheckpointError, match="does not match its architecture"):
        lenet.load_evaluator(str(wrong))
    with pytest.raises(CheckpointError, match="does not exist"):
        lenet.load_evaluator(str(tmp_path / "missing.pt"))


@pytest.mark.slow
def test_full_sample_accuracy_target(tmp_path: Path, sample_dir: Path) -> None:
    """The default params on the MNIST sample (9,000 train after the 10 % split, 10,000 test)."""
    rng = np.random.default_rng(0)
    keep = rng.permutation(10000)[:9000]
    train = Split(
        read_images(sample_dir / "train-images-idx3-ubyte.gz")[keep],
        read_labels(sample_dir / "train-labels-idx1-ubyte.gz")[keep],
    )
    test = Split(
        read_images(sample_dir / "t10k-images-idx3-ubyte.gz"),
        read_labels(sample_dir / "t10k-labels-idx1-ubyte.gz"),
    )
    cfg = EvaluatorConfig()
    _, metrics = evaluator.train_evaluator(
        train=train,
        test=test,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        max_shift=cfg.max_shift,
    )
    assert metrics["test_accuracy"] >= 0.985


def test_cli_error_for_missing_data(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vaegan", "evaluator", "--set", f"data.prepared_dir={tmp_path / 'none'}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "vaegan evaluator: error:" in result.stderr and "train-images.npy does not exist" in result.stderr
