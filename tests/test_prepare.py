"""The prepare stage: deterministic split, the prepared format and stats, and failures that exit 2
and leave earlier outputs untouched (through the real CLI)."""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vaegan.cli import main
from vaegan.data.download import SOURCE_FILE, fetch_dataset
from vaegan.data.idx import read_images, read_labels
from vaegan.data.splits import SPLITS, data_sha256, load_split, split_files
from vaegan.errors import DataError
from vaegan.prepare import prepare_dataset, split_indices, write_prepared

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    """data/raw with the shipped MNIST sample fetched into raw/mnist."""
    raw = tmp_path / "data" / "raw"
    fetch_dataset(dataset="mnist", source="sample", raw_dir=raw)
    return raw


def tree_digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vaegan", *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_split_indices_are_deterministic_disjoint_and_complete() -> None:
    train, val = split_indices(10000, 0.1, seed=0)
    assert len(train) == 9000 and len(val) == 1000
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(10000))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    again_train, again_val = split_indices(10000, 0.1, seed=0)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    _, other_val = split_indices(10000, 0.1, seed=1)
    assert not np.array_equal(val, other_val)
    # Pinned: the split is numpy's PCG64 permutation; a change here would silently change the data.
    expected = np.sort(np.random.default_rng(0).permutation(10000)[:1000])
    assert np.array_equal(val, expected)
    assert split_indices(10, 0.1, seed=0)[1].size == 1
    with pytest.raises(DataError, match="leaves none to train on"):
        split_indices(1, 0.6, seed=0)


@pytest.mark.parametrize("fraction", [0.0, 0.00001])
def test_a_split_without_validation_images_is_refused(fraction: float) -> None:
    """Training validates every epoch: no validation image used to crash at the first epoch's end
    (ZeroDivisionError) after the data stages had run."""
    with pytest.raises(DataError, match="data.val_fraction"):
        split_indices(10000, fraction, seed=0)


def test_val_fraction_zero_is_refused_before_any_stage_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "--set", "data.val_fraction=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vaegan params: error: data.val_fraction: 0.0 is out of range (must be > 0.0)"]


def test_prepare_writes_the_prepared_format_and_stats(
    tmp_path: Path, raw_dir: Path, sample_dir: Path
) -> None:
    prepared = prepare_dataset(dataset="mnist", raw_dir=raw_dir, val_fraction=0.1, seed=0)
    out = tmp_path / "prepared"
    stats = write_prepared(prepared, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [p.name for s in SPLITS for p in split_files(out, s)] + ["stats.json", "examples.png"]
    )
    splits = {s: load_split(out, s) for s in SPLITS}
    assert [len(splits[s]) for s in SPLITS] == [9000, 1000, 10000]
    # train + val is exactly the official training set, split by the seeded permutation.
    official_x = read_images(sample_dir / TRAIN_IMAGES)
    official_y = read_labels(sample_dir / TRAIN_LABELS)
    train_idx, val_idx = split_indices(10000, 0.1, seed=0)
    np.testing.assert_array_equal(splits["train"].images, official_x[train_idx])
    np.testing.assert_array_equal(splits["val"].labels, official_y[val_idx])
    np.testing.assert_array_equal(
        splits["test"].images, read_images(sample_dir / "t10k-images-idx3-ubyte.gz")
    )

    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk == stats
    assert stats["dataset"] == "mnist" and stats["sample"] is True and stats["raw"]["kind"] == "sample"
    assert stats["split"] == {"val_fraction": 0.1, "seed": 0}
    for split in SPLITS:
        entry = stats["splits"][split]
        images, labels = splits[split].images, splits[split].labels
        assert entry["count"] == len(labels)
        assert entry["per_class"] == np.bincount(labels, minlength=10).tolist()
        assert entry["pixel_mean"] == pytest.approx(images.mean(dtype=np.float64) / 255, abs=1e-6)
        assert entry["pixel_std"] == pytest.approx(images.std(dtype=np.float64) / 255, abs=1e-6)
    assert stats["splits"]["test"]["per_class"] == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert stats["splits"]["train"]["pixel_mean"] == pytest.approx(0.1309, abs=2e-3)  # MNIST's ~0.1307
    for name, digest in stats["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert stats["data_sha256"] == data_sha256(out)

    png = (out / "examples.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (2 * (10 * 30 + 2), 2 * (10 * 30 + 2))  # 10x10 tiles of 28 + 2 pad, x2


def test_prepare_is_byte_reproducible(tmp_path: Path, raw_dir: Path) -> None:
    digests = []
    for name in ("a", "b"):
        prepared = prepare_dataset(dataset="mnist", raw_dir=raw_dir, val_fraction=0.1, seed=0)
        write_prepared(prepared, tmp_path / name)
        digests.append(tree_digest(tmp_path / name))
    assert digests[0] == digests[1]
    write_prepared(
        prepare_dataset(dataset="mnist", raw_dir=raw_dir, val_fraction=0.1, seed=3), tmp_path / "c"
    )
    assert tree_digest(tmp_path / "c")["val-labels.npy"] != digests[0]["val-labels.npy"]


def test_truncated_idx_file_exits_2_and_keeps_outputs(tmp_path: Path, raw_dir: Path) -> None:
    (tmp_path / "params.yaml").write_text("data:\n  source: sample\n")
    first = run_cli(tmp_path, "prepare")
    assert first.returncode == 0, first.stderr
    prepared = tmp_path / "data" / "prepared"
    before = tree_digest(prepared)
    images = raw_dir / "mnist" / TRAIN_IMAGES
    images.write_bytes(images.read_bytes()[:50_000])
    proc = run_cli(tmp_path, "prepare")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("vaegan prepare: error:")]
    assert len(errors) == 1 and str(Path("data/raw/mnist") / TRAIN_IMAGES) in errors[0]
    assert "truncated or corrupted" in errors[0]
    assert tree_digest(prepared) == before
    assert sorted(p.name for p in prepared.parent.iterdir()) == ["prepared", "raw"]


def test_val_fraction_out_of_range_exits_2_and_keeps_outputs(
    tmp_path: Path, raw_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["prepare"]) == 0
    before = tree_digest(tmp_path / "data" / "prepared")
    capsys.readouterr()
    assert main(["prepare", "--set", "data.val_fraction=1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vaegan prepare: error: data.val_fraction: 1.5 is out of range (must be < 1.0)"]
    assert tree_digest(tmp_path / "data" / "prepared") == before


def test_image_label_count_mismatch_is_an_error(raw_dir: Path) -> None:
    labels = raw_dir / "mnist" / TRAIN_LABELS
    data = gzip.decompress(labels.read_bytes())
    labels.write_bytes(gzip.compress(data[:4] + struct.pack(">I", 9999) + data[8:-1]))
    (raw_dir / "mnist" / SOURCE_FILE).unlink()  # hand-made files: no SOURCE.json to check against
    with pytest.raises(DataError, match=r"holds 10000 images but train-labels-idx1-ubyte\.gz holds 9999"):
        prepare_dataset(dataset="mnist", raw_dir=raw_dir, val_fraction=0.1, seed=0)


def test_file_changed_after_fetch_is_an_error(raw_dir: Path) -> None:
    labels = raw_dir / "mnist" / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(labels.read_bytes()))
    data[-1] = (data[-1] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(
        DataError, match=r"t10k-labels-idx1-ubyte\.gz: sha256 .* differs from .* SOURCE\.json"
    ):
        prepare_dataset(dataset="mnist", raw_dir=raw_dir, val_fraction=0.1, seed=0)


def test_missing_raw_files_point_at_fetch(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist: run `vaegan fetch`"):
        prepare_dataset(dataset="mnist", raw_dir=tmp_path / "nothing", val_fraction=0.1, seed=0)
