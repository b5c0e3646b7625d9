"""IDX parsing: the real sample files, and every way a file can be wrong."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from vaegan.data.datasets import SAMPLE_SHA256
from vaegan.data.idx import IMAGES_MAGIC, LABELS_MAGIC, idx_shape, read_idx_bytes, read_images, read_labels
from vaegan.errors import DataError

# The first ten labels of the official MNIST training set.
FIRST_TRAIN_LABELS = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


def idx_bytes(array: np.ndarray, magic_ndim: int | None = None, type_byte: int = 0x08) -> bytes:
    """Encode a uint8 array as IDX (the header written by hand, independently of vaegan.data.idx)."""
    ndim = array.ndim if magic_ndim is None else magic_ndim
    header = struct.pack(">HBB", 0, type_byte, ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_sample_files_parse_with_known_contents(sample_dir: Path) -> None:
    images = read_images(sample_dir / "train-images-idx3-ubyte.gz")
    labels = read_labels(sample_dir / "train-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert labels[:10].tolist() == FIRST_TRAIN_LABELS
    assert images.max() == 255 and images.min() == 0
    # MNIST digits are centred in a 20x20 box: the top row is blank in every image.
    assert images[:, 0, :].max() == 0
    test_labels = read_labels(sample_dir / "t10k-labels-idx1-ubyte.gz")
    assert np.bincount(test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.parametrize("name", sorted(SAMPLE_SHA256))
def test_decompressed_sample_matches_listed_sha256(sample_dir: Path, name: str) -> None:
    data = read_idx_bytes(sample_dir / name)
    assert hashlib.sha256(data).hexdigest() == SAMPLE_SHA256[name]


def test_plain_and_gzip_files_parse_identically(tmp_path: Path, sample_dir: Path) -> None:
    plain = tmp_path / "t10k-labels-idx1-ubyte"
    plain.write_bytes(gzip.decompress((sample_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    np.testing.assert_array_equal(read_labels(plain), read_labels(sample_dir / "t10k-labels-idx1-ubyte.gz"))


def test_round_trip_of_hand_written_file(tmp_path: Path) -> None:
    array = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28) % 256
    path = tmp_path / "images"
    path.write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(read_images(path), array.astype(np.uint8))


def test_truncated_gzip_names_the_file(tmp_path: Path, sample_dir: Path) -> None:
    raw = (sample_dir / "train-images-idx3-ubyte.gz").read_bytes()
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz is not a valid gzip file"):
        read_images(path)


def test_truncated_records_name_the_file_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    data = idx_bytes(np.zeros(100, dtype=np.uint8))
    path.write_bytes(gzip.compress(data[:-10]))
    with pytest.raises(DataError, match=r"labels\.gz: truncated: header says 100 records .* holds 90 bytes"):
        read_labels(path)


def test_trailing_bytes_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.zeros(5, dtype=np.uint8)) + b"\x00")
    with pytest.raises(DataError, match="has trailing bytes"):
        read_labels(path)


def test_labels_file_read_as_images_is_a_magic_error(sample_dir: Path) -> None:
    with pytest.raises(DataError, match=f"magic number {LABELS_MAGIC}, expected {IMAGES_MAGIC}"):
        read_images(sample_dir / "t10k-labels-idx1-ubyte.gz")


def test_non_ubyte_type_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.zeros(4, dtype=np.uint8), type_byte=0x0C))
    with pytest.raises(DataError, match="not an unsigned-byte IDX file"):
        read_labels(path)


def test_header_truncated_and_too_short(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="too short"):
        idx_shape(b"\x00\x00", "x", LABELS_MAGIC)
    with pytest.raises(DataError, match="header truncated"):
        idx_shape(struct.pack(">HBB", 0, 8, 3) + b"\x00\x00\x00\x05", "x", IMAGES_MAGIC)


def test_wrong_image_size_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "images"
    path.write_bytes(idx_bytes(np.zeros((2, 28, 27), dtype=np.uint8)))
    with pytest.raises(DataError, match="expected images of 28x28"):
        read_images(path)


def test_label_out_of_range_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.array([0, 3, 10], dtype=np.uint8)))
    with pytest.raises(DataError, match=r"label 10 is outside 0\.\.9"):
        read_labels(path)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_labels(tmp_path / "nope.gz")
