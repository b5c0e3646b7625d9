"""Image grids and PNG files with numpy and zlib alone (no torch, no PIL), so the ONNX-only
inference helper can write them too."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from vaegan.artifacts.atomic_io import write_bytes


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8, rounded the same way real data is quantised."""
    if images.dtype == np.uint8:
        return images
    return np.clip(np.rint(np.asarray(images, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, ncols: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile (N, H, W) or (N, 1, H, W) images row-major into one (rows*(H+pad)+pad, ...) uint8 image."""
    tiles = to_uint8(np.asarray(images))
    if tiles.ndim == 4:
        tiles = tiles[:, 0]
    if tiles.ndim != 3 or tiles.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, H, W) stack, got shape {tiles.shape}")
    n, h, w = tiles.shape
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad), pad_value, dtype=np.uint8)
    for index in range(n):
        row, col = divmod(index, ncols)
        top, left = pad + row * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = tiles[index]
    return grid


def encode_png(gray: np.ndarray) -> bytes:
    """Encode a 2-D uint8 array as an 8-bit greyscale PNG."""
    if gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 array, got {gray.dtype} {gray.shape}")
    height, width = gray.shape
    raw = b"".join(b"\x00" + gray[row].tobytes() for row in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def write_png(path: str | os.PathLike[str], gray: np.ndarray, scale: int = 1) -> None:
    """Write a greyscale image atomically, optionally enlarged by an integer `scale`."""
    image = to_uint8(gray)
    if scale > 1:
        image = np.kron(image, np.ones((scale, scale), dtype=np.uint8))
    write_bytes(path, encode_png(image))
