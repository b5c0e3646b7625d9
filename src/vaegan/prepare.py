"""The `prepare` stage: parse and validate the raw IDX files, split the official training set into
train/val deterministically (`data.val_fraction`, `data.seed`), keep the official test set as test,
and write the arrays (`vaegan.data.splits` format), stats.json and examples.png as one directory swap.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaegan.artifacts.atomic_io import atomic_directory, write_json
from vaegan.artifacts.images import image_grid, write_png
from vaegan.artifacts.provenance import sha256_bytes, sha256_file
from vaegan.config import Config
from vaegan.data.datasets import DatasetSpec, dataset_spec
from vaegan.data.download import SOURCE_FILE, read_source
from vaegan.data.idx import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    check_images_shape,
    check_labels_shape,
    parse_idx,
    read_idx_bytes,
)
from vaegan.data.splits import SPLITS, Split, data_sha256, split_files
from vaegan.errors import DataError

log = logging.getLogger(__name__)

STATS_FILE = "stats.json"
EXAMPLES_FILE = "examples.png"
STATS_FORMAT = "vaegan-prepared-stats/1"
EXAMPLES_PER_CLASS = 10


@dataclass(frozen=True)
class PreparedData:
    """The three splits in memory, with what they were made from."""

    dataset: str
    classes: tuple[str, ...]
    splits: Mapping[str, Split]  # train, val, test
    val_fraction: float
    seed: int
    source: Mapping[str, Any] | None  # the raw directory's SOURCE.json, when present

    @property
    def sample(self) -> bool:
        return bool(self.source and self.source.get("sample"))


def split_indices(num_records: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) record indices: a seeded permutation, the first round(N * f) go to val."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction: {val_fraction!r} is out of range (must be > 0 and < 1)")
    num_val = round(num_records * val_fraction)
    if num_val == 0:
        raise DataError(
            f"data.val_fraction: {val_fraction} of {num_records} training records is no validation "
            "record (training validates on them every epoch): raise it"
        )
    if num_val >= num_records:
        raise DataError(
            f"data.val_fraction: {val_fraction} of {num_records} training records leaves none to train on"
        )
    order = np.random.default_rng(seed).permutation(num_records)
    return np.sort(order[num_val:]), np.sort(order[:num_val])


def read_raw_split(directory: Path, spec: DatasetSpec, split: str, source: Mapping[str, Any] | None) -> Split:
    """Parse and validate one split's image and label files; a bad file is a `DataError` naming it."""
    arrays = []
    for kind, magic in (("images", IMAGES_MAGIC), ("labels", LABELS_MAGIC)):
        name = spec.files[f"{split}_{kind}"]
        path = directory / name
        if not path.is_file():
            raise DataError(f"{path} does not exist: run `vaegan fetch` (or `dvc repro fetch` / `dvc pull`)")
        data = read_idx_bytes(path)
        array = parse_idx(data, str(path), magic)
        if kind == "images":
            check_images_shape(array.shape, str(path))
        else:
            check_labels_shape(array.shape, str(path))
            if array.size and int(array.max()) >= spec.num_classes:
                raise DataError(f"{path}: label {int(array.max())} is outside 0..{spec.num_classes - 1}")
        recorded = ((source or {}).get("files") or {}).get(name, {}).get("sha256")
        if recorded is not None and recorded != sha256_bytes(data):
            raise DataError(
                f"{path}: sha256 {sha256_bytes(data)} differs from {recorded} in {SOURCE_FILE}; "
                "the file changed after `vaegan fetch`: fetch again"
            )
        arrays.append(array)
    images, labels = arrays
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{directory}: {spec.files[f'{split}_images']} holds {images.shape[0]} images but "
            f"{spec.files[f'{split}_labels']} holds {labels.shape[0]} labels"
        )
    return Split(images=images, labels=labels)


def prepare_dataset(*, dataset: str, raw_dir: str | Path, val_fraction: float, seed: int) -> PreparedData:
    """Read `<raw_dir>/<dataset>/`, validate it, and split it into train/val/test."""
    spec = dataset_spec(dataset)
    directory = Path(raw_dir) / spec.name
    source = read_source(directory)
    if source is not None and source.get("dataset") not in (None, spec.name):
        raise DataError(f"{directory / SOURCE_FILE} describes {source.get('dataset')!r}, not {spec.name!r}")
    official_train = read_raw_split(directory, spec, "train", source)
    test = read_raw_split(directory, spec, "test", source)
    train_idx, val_idx = split_indices(len(official_train), val_fraction, seed)
    splits = {
        "train": Split(official_train.images[train_idx], official_train.labels[train_idx]),
        "val": Split(official_train.images[val_idx], official_train.labels[val_idx]),
        "test": test,
    }
    return PreparedData(spec.name, spec.classes, splits, val_fraction, seed, source)


def pixel_mean_std(images: np.ndarray) -> tuple[float, float]:
    """Exact mean and standard deviation of uint8 pixels on the [0, 1] scale (value / 255)."""
    if images.size == 0:
        return float("nan"), float("nan")
    counts = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    mean = float(counts @ values / counts.sum())
    std = float(np.sqrt(counts @ (values - mean) ** 2 / counts.sum()))
    return mean, std


def split_stats(split: Split, num_classes: int) -> dict[str, Any]:
    """Record count, count per class and pixel mean/std of one split."""
    mean, std = pixel_mean_std(split.images)
    per_class = np.bincount(split.labels, minlength=num_classes)
    return {
        "count": len(split),
        "per_class": [int(n) for n in per_class],
        "pixel_mean": None if np.isnan(mean) else round(mean, 6),
        "pixel_std": None if np.isnan(std) else round(std, 6),
    }


def examples_grid(split: Split, num_classes: int, per_class: int = EXAMPLES_PER_CLASS) -> np.ndarray:
    """One row per class: its first `per_class` images in split order (black tiles where it has fewer)."""
    tiles = np.zeros((num_classes * per_class, *split.images.shape[1:]), dtype=np.uint8)
    for label in range(num_classes):
        found = np.flatnonzero(split.labels == label)[:per_class]
        tiles[label * per_class : label * per_class + len(found)] = split.images[found]
    return image_grid(tiles, ncols=per_class)


def write_prepared(prepared: PreparedData, prepared_dir: str | Path) -> dict[str, Any]:
    """Write arrays, stats.json and examples.png into a staging directory and swap it in; the stats."""
    num_classes = len(prepared.classes)
    with atomic_directory(prepared_dir) as staging:
        _make_readable(staging)
        files: dict[str, str] = {}
        for split in SPLITS:
            for path, array in zip(split_files(staging, split), _arrays(prepared.splits[split]), strict=True):
                np.save(path, array, allow_pickle=False)
                files[path.name] = sha256_file(path)
        write_png(staging / EXAMPLES_FILE, examples_grid(prepared.splits["train"], num_classes), scale=2)
        source = prepared.source or {}
        stats = {
            "format": STATS_FORMAT,
            "dataset": prepared.dataset,
            "classes": list(prepared.classes),
            "sample": prepared.sample,
            "raw": {
                "kind": source.get("kind"),
                "sha256": {name: entry.get("sha256") for name, entry in (source.get("files") or {}).items()},
            },
            "split": {"val_fraction": prepared.val_fraction, "seed": prepared.seed},
            "pixel_scale": "value / 255",
            "splits": {split: split_stats(prepared.splits[split], num_classes) for split in SPLITS},
            "files": files,
            "data_sha256": data_sha256(staging),
        }
        write_json(staging / STATS_FILE, stats)
    return stats


def _arrays(split: Split) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(split.images), np.ascontiguousarray(split.labels)


def _make_readable(directory: Path) -> None:
    """Give a staging directory (created 0700) the permissions the umask grants new directories."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)


def run(config: Config, args: argparse.Namespace) -> int:
    """`vaegan prepare`: data/raw/<dataset>/ -> data/prepared/ (arrays, stats.json, examples.png)."""
    data = config.data
    prepared = prepare_dataset(
        dataset=data.dataset, raw_dir=data.raw_dir, val_fraction=data.val_fraction, seed=data.seed
    )
    stats = write_prepared(prepared, data.prepared_dir)
    counts = ", ".join(f"{split} {stats['splits'][split]['count']}" for split in SPLITS)
    log.info("wrote %s (%s; data_sha256 %s)", data.prepared_dir, counts, stats["data_sha256"][:12])
    if prepared.sample:
        print(
            f"vaegan prepare: WARNING: prepared the shipped MNIST SAMPLE ({counts}), not the full "
            f"dataset; see {Path(data.raw_dir) / prepared.dataset / SOURCE_FILE}",
            file=sys.stderr,
        )
    return 0
