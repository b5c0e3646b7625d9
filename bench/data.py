"""Images to benchmark with: the prepared MNIST splits when present, else the MNIST sample shipped
with the package (the GPU image has no DVC outputs), tiled to the size a benchmark needs."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from vaegan.data.idx import read_images

PREPARED_DIR = Path("data/prepared")


def _sample_images(split: str) -> np.ndarray:
    name = "train-images-idx3-ubyte.gz" if split == "train" else "t10k-images-idx3-ubyte.gz"
    with resources.as_file(resources.files("vaegan") / "sample_data" / "mnist" / name) as path:
        return read_images(path)


def real_images(split: str, count: int, prepared_dir: Path = PREPARED_DIR) -> tuple[np.ndarray, str]:
    """(uint8 (count, 28, 28) images, where they came from); images are repeated when too few."""
    path = prepared_dir / f"{split}-images.npy"
    if path.is_file():
        images, source = np.load(path, allow_pickle=False), str(path)
    else:
        images, source = _sample_images(split), f"vaegan sample_data ({split})"
    if len(images) < count:
        images = np.concatenate([images] * (count // len(images) + 1))
        source += f", tiled to {count}"
    return np.ascontiguousarray(images[:count]), source
