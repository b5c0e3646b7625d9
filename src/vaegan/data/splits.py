"""The prepared data set on disk: one uint8 array pair per split under `data.prepared_dir`.

<prepared_dir>/<split>-images.npy   (N, 28, 28) uint8
<prepared_dir>/<split>-labels.npy   (N,) uint8, classes 0..9
<prepared_dir>/stats.json           counts per split and class, pixel mean/std, sha256 of each file
<prepared_dir>/examples.png         a grid of real examples, one row per class
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaegan.artifacts.provenance import sha256_file
from vaegan.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) uint8

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def head(self, count: int) -> Split:
        """The first `count` images and labels (all of them when `count` is 0 or at least the length)."""
        return self if count <= 0 or count >= len(self) else Split(self.images[:count], self.labels[:count])


def split_files(prepared_dir: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    """Paths of a split's image and label arrays."""
    base = Path(prepared_dir)
    return base / f"{split}-images.npy", base / f"{split}-labels.npy"


def load_split(prepared_dir: str | os.PathLike[str], split: str) -> Split:
    """Load one split; a missing or malformed array is a `DataError` naming the file."""
    images_path, labels_path = split_files(prepared_dir, split)
    arrays = []
    for path in (images_path, labels_path):
        try:
            arrays.append(np.load(path, allow_pickle=False))
        except FileNotFoundError:
            raise DataError(f"{path} does not exist: run `vaegan prepare` (or `dvc repro prepare`)") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"{path} is not a valid array file: {exc}") from exc
    images, labels = arrays
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: expected uint8 (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.shape != (images.shape[0],):
        raise DataError(
            f"{labels_path}: expected uint8 ({images.shape[0]},), got {labels.dtype} {labels.shape}"
        )
    return Split(images=images, labels=labels)


def data_sha256(prepared_dir: str | os.PathLike[str]) -> str:
    """One sha256 naming the whole prepared data set (over each split file's sha256, in order)."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for path in split_files(prepared_dir, split):
            if not path.is_file():
                raise DataError(f"{path} does not exist: run `vaegan prepare` (or `dvc repro prepare`)")
            digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()
