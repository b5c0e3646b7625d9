"""The IDX file format of MNIST and Fashion-MNIST, parsed and validated without torchvision.

Header: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, then one
big-endian uint32 per dimension. MNIST images have magic 2051 (0x00000803, 3 dims: N, 28, 28),
labels 2049 (0x00000801, 1 dim: N). Files may be gzip-compressed (`.gz`).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from vaegan.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
UBYTE = 0x08


def read_idx_bytes(path: str | os.PathLike[str]) -> bytes:
    """The decompressed bytes of an IDX file (`.gz` or plain); unreadable gzip is a `DataError`."""
    file_path = Path(path)
    try:
        raw = file_path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{file_path} does not exist") from None
    except OSError as exc:
        raise DataError(f"{file_path} cannot be read: {exc}") from exc
    return decompress_idx(raw, str(file_path))


def decompress_idx(raw: bytes, name: str) -> bytes:
    """`raw` gunzipped when it starts with the gzip magic, else as is; bad gzip is a `DataError`."""
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{name} is not a valid gzip file (truncated or corrupted): {exc}") from exc
    return raw


def parse_idx(data: bytes, name: str, expected_magic: int) -> np.ndarray:
    """Parse IDX bytes into a uint8 array, checking magic number, dimensions and record count."""
    shape = idx_shape(data, name, expected_magic)
    header_end = 4 + 4 * len(shape)
    return np.frombuffer(data, dtype=np.uint8, offset=header_end).reshape(shape).copy()


def idx_shape(data: bytes, name: str, expected_magic: int) -> tuple[int, ...]:
    """Validate IDX bytes (magic number, header, size against the header) and return their shape."""
    if len(data) < 4:
        raise DataError(f"{name}: too short to hold an IDX header ({len(data)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    magic = struct.unpack(">I", data[:4])[0]
    if zero != 0 or dtype != UBYTE:
        raise DataError(f"{name}: not an unsigned-byte IDX file (magic {magic}, expected {expected_magic})")
    if magic != expected_magic:
        raise DataError(f"{name}: magic number {magic}, expected {expected_magic}")
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares no dimensions")
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise DataError(f"{name}: header truncated (needs {header_end} bytes, file has {len(data)})")
    shape = struct.unpack(f">{ndim}I", data[4:header_end])
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(data) - header_end
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(
            f"{name}: {what}: header says {shape[0]} records of shape {tuple(shape[1:])} "
            f"({expected} bytes), file holds {actual} bytes"
        )
    return tuple(int(dim) for dim in shape)


def read_images(path: str | os.PathLike[str]) -> np.ndarray:
    """(N, 28, 28) uint8 images from an IDX image file."""
    images = parse_idx(read_idx_bytes(path), str(path), IMAGES_MAGIC)
    check_images_shape(images.shape, str(path))
    return images


def check_images_shape(shape: tuple[int, ...], name: str) -> None:
    """Images must be (N, 28, 28); anything else is a `DataError` naming the file."""
    if len(shape) != 3 or tuple(shape[1:]) != (28, 28):
        raise DataError(f"{name}: expected images of 28x28, header says {tuple(shape[1:])}")


def check_labels_shape(shape: tuple[int, ...], name: str) -> None:
    """Labels must be one-dimensional (N,); anything else is a `DataError` naming the file."""
    if len(shape) != 1:
        raise DataError(f"{name}: expected one dimension, header says {len(shape)}")


def read_labels(path: str | os.PathLike[str], num_classes: int = 10) -> np.ndarray:
    """(N,) uint8 labels from an IDX label file, each in [0, num_classes)."""
    labels = parse_idx(read_idx_bytes(path), str(path), LABELS_MAGIC)
    check_labels_shape(labels.shape, str(path))
    if labels.size and int(labels.max()) >= num_classes:
        raise DataError(f"{path}: label {int(labels.max())} is outside 0..{num_classes - 1}")
    return labels
