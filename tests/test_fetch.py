"""The fetch stage for real: downloads from an HTTP server on 127.0.0.1 (good, corrupted, down and
missing mirrors), the offline fallback to the shipped sample, and directory and sample sources."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vaegan.data.datasets import DATASETS, MNIST, SAMPLE_SHA256
from vaegan.data.download import SOURCE_FILE, DownloadUnavailable, fetch_dataset
from vaegan.errors import ConfigError, DataError

NAMES = MNIST.file_names


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve `directory` over HTTP on 127.0.0.1 (a free port); yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/mnist/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


@pytest.fixture
def sample_md5(sample_dir: Path) -> dict[str, str]:
    """The sample's .gz md5s: the 'official' table for downloads from the test server."""
    return {name: hashlib.md5((sample_dir / name).read_bytes()).hexdigest() for name in NAMES}


@pytest.fixture
def mirror_root(tmp_path: Path, sample_dir: Path) -> Path:
    """A web root whose /mnist/ holds the sample .gz files under the official names."""
    root = tmp_path / "www"
    (root / "mnist").mkdir(parents=True)
    for name in NAMES:
        shutil.copy(sample_dir / name, root / "mnist" / name)
    return root


def read_source(directory: Path) -> dict:
    return json.loads((directory / SOURCE_FILE).read_text())


def test_dataset_table_matches_torchvision() -> None:
    from torchvision.datasets import MNIST as TVMNIST
    from torchvision.datasets import FashionMNIST as TVFashion

    for ours, theirs in ((DATASETS["mnist"], TVMNIST), (DATASETS["fashion-mnist"], TVFashion)):
        assert dict(ours.md5) == dict(theirs.resources)
        assert list(ours.mirrors) == list(theirs.mirrors)
        assert list(ours.classes) == list(theirs.classes)


def test_sample_sha256_table_matches_readme(sample_dir: Path) -> None:
    readme = (sample_dir / "README.md").read_text()
    listed = dict(re.findall(r"\| (\S+\.gz) \|[^|]*\| ([0-9a-f]{64}) \|", readme))
    assert listed == dict(SAMPLE_SHA256)


def test_download_from_good_mirror(
    tmp_path: Path, mirror_root: Path, sample_dir: Path, sample_md5: dict[str, str]
) -> None:
    raw = tmp_path / "raw"
    with serve(mirror_root) as url:
        result = fetch_dataset(
            dataset="mnist", source="download", raw_dir=raw, mirrors=[url], expected_md5=sample_md5
        )
    target = raw / "mnist"
    assert result.directory == target and not result.kept_existing and not result.sample
    assert sorted(p.name for p in target.iterdir()) == sorted([*NAMES, SOURCE_FILE])
    for name in NAMES:
        assert (target / name).read_bytes() == (sample_dir / name).read_bytes()
    record = read_source(target)
    assert record == result.record
    assert record["kind"] == "download" and record["sample"] is False and record["source"] == "download"
    assert record["mirrors_used"] == [url]
    for name in NAMES:
        entry = record["files"][name]
        assert entry["url"] == url + name
        assert entry["sha256"] == SAMPLE_SHA256[name]
        assert entry["records"] == 10000
        assert entry["gz_md5"] == sample_md5[name]
    # The test files are the official ones; the sample's 10,000-record training files are not.
    assert record["files"]["t10k-images-idx3-ubyte.gz"]["gz_md5_official"] is True
    assert record["files"]["train-images-idx3-ubyte.gz"]["gz_md5_official"] is False
    assert record["files"]["train-images-idx3-ubyte.gz"]["shape"] == [10000, 28, 28]
    assert "failed_urls" not in record


def test_official_checksums_reject_the_sample_training_file(tmp_path: Path, mirror_root: Path) -> None:
    """Without the test's md5 table, the production check sees the 10,000-record file is not official."""
    with serve(mirror_root) as url, pytest.raises(DataError) as excinfo:
        fetch_dataset(dataset="mnist", source="download", raw_dir=tmp_path / "raw", mirrors=[url])
    assert f"train-images-idx3-ubyte.gz from {url}" in str(excinfo.value)
    assert MNIST.md5["train-images-idx3-ubyte.gz"] in str(excinfo.value)
    assert not (tmp_path / "raw" / "mnist").exists()


def test_corrupted_mirror_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path, mirror_root: Path, sample_md5: dict[str, str]
) -> None:
    corrupted = mirror_root / "mnist" / "t10k-images-idx3-ubyte.gz"
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    bad_md5 = hashlib.md5(bytes(data)).hexdigest()
    raw = tmp_path / "raw"
    with serve(mirror_root) as url, pytest.raises(DataError) as excinfo:
        fetch_dataset(dataset="mnist", source="download", raw_dir=raw, mirrors=[url], expected_md5=sample_md5)
    message = str(excinfo.value)
    assert "t10k-images-idx3-ubyte.gz" in message
    assert bad_md5 in message and sample_md5["t10k-images-idx3-ubyte.gz"] in message
    assert list(raw.iterdir()) == []  # no dataset directory, no staging leftovers


def test_failed_download_keeps_earlier_good_files(
    tmp_path: Path, mirror_root: Path, sample_md5: dict[str, str]
) -> None:
    raw = tmp_path / "raw"
    fetch_dataset(dataset="mnist", source="sample", raw_dir=raw)
    before = {p.name: p.read_bytes() for p in (raw / "mnist").iterdir()}
    (mirror_root / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with serve(mirror_root) as url, pytest.raises(DataError, match="failed its checksum"):
        fetch_dataset(dataset="mnist", source="download", raw_dir=raw, mirrors=[url], expected_md5=sample_md5)
    assert {p.name: p.read_bytes() for p in (raw / "mnist").iterdir()} == before
    assert sorted(p.name for p in raw.iterdir()) == ["mnist"]


def test_down_mirror_then_good_mirror(tmp_path: Path, mirror_root: Path, sample_md5: dict[str, str]) -> None:
    down = closed_port_url()
    raw = tmp_path / "raw"
    with serve(mirror_root) as url:
        result = fetch_dataset(
            dataset="mnist", source="download", raw_dir=raw, mirrors=[down, url], expected_md5=sample_md5
        )
    record = read_source(raw / "mnist")
    assert record["mirrors_used"] == [url]
    assert all(entry["url"].startswith(url) for entry in record["files"].values())
    # The unreachable mirror was tried once, then skipped for the remaining files.
    assert list(record["failed_urls"]) == [down + NAMES[0]]
    assert "refused" in record["failed_urls"][down + NAMES[0]].lower()
    assert result.record == record


def download_timed(
    tmp_path: Path, mirrors: list[str], timeout_s: float, md5: dict[str, str]
) -> tuple[dict, float]:
    """Fetch the sample from `mirrors` (in order) into tmp_path/raw: (the source record, seconds)."""
    started = time.monotonic()
    fetch_dataset(
        dataset="mnist", source="download", raw_dir=tmp_path / "raw", mirrors=mirrors,
        timeout_s=timeout_s, expected_md5=md5,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    return read_source(tmp_path / "raw" / "mnist"), elapsed


def test_silent_mirror_times_out_then_good_mirror(
    tmp_path: Path, mirror_root: Path, sample_md5: dict[str, str]
) -> None:
    """A mirror that accepts the connection but never answers costs one timeout, then is skipped."""
    with socket.socket() as silent, serve(mirror_root) as url:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes handshakes; nobody ever reads or writes
        stalled = f"http://127.0.0.1:{silent.getsockname()[1]}/mnist/"
        record, elapsed = download_timed(tmp_path, [stalled, url], 0.5, sample_md5)
    assert record["mirrors_used"] == [url]
    assert list(record["failed_urls"]) == [stalled + NAMES[0]]
    assert "timed out" in record["failed_urls"][stalled + NAMES[0]]
    assert 0.5 <= elapsed < 5


@contextlib.contextmanager
def trickling_mirror() -> Iterator[str]:
    """A mirror on 127.0.0.1 that answers 200 with a 1 MB Content-Length, then one byte per 0.1 s:
    each read succeeds, so only a deadline on the whole transfer ends it."""
    stop = threading.Event()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)

    def trickle() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                while not stop.wait(0.1):
                    try:
                        conn.sendall(b"x")
                    except OSError:
                        break

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/mnist/"
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_trickling_mirror_hits_the_download_deadline_then_good_mirror(
    tmp_path: Path, mirror_root: Path, sample_md5: dict[str, str]
) -> None:
    """`data.download_timeout_s` bounds the whole transfer: a mirror that sends a byte every 0.1 s
    used to hang `vaegan fetch` forever (every single read finished within the timeout)."""
    with trickling_mirror() as slow, serve(mirror_root) as url:
        record, elapsed = download_timed(tmp_path, [slow, url], 1.0, sample_md5)
    assert record["mirrors_used"] == [url]
    reason = record["failed_urls"][slow + NAMES[0]]
    assert "not finished within data.download_timeout_s=1 s" in reason
    assert 1.0 <= elapsed < 10


def test_mirror_must_be_a_url(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"data.mirrors\[1\]: '/srv/mnist' is not an http\(s\), ftp or file URL"
    ):
        fetch_dataset(
            dataset="mnist",
            source="download",
            raw_dir=tmp_path,
            mirrors=["http://127.0.0.1:9/", "/srv/mnist"],
        )


def test_mirror_without_the_file_then_good_mirror(
    tmp_path: Path, mirror_root: Path, sample_md5: dict[str, str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    raw = tmp_path / "raw"
    with serve(empty) as missing, serve(mirror_root) as url:
        fetch_dataset(
            dataset="mnist", source="download", raw_dir=raw, mirrors=[missing, url], expected_md5=sample_md5
        )
    record = read_source(raw / "mnist")
    assert record["mirrors_used"] == [url]
    assert record["failed_urls"] == {missing + name: "HTTP 404 File not found" for name in NAMES}


def test_download_offline_fails_clearly(tmp_path: Path) -> None:
    down = closed_port_url()
    with pytest.raises(DownloadUnavailable) as excinfo:
        fetch_dataset(dataset="mnist", source="download", raw_dir=tmp_path / "raw", mirrors=[down])
    assert f"could not download {NAMES[0]} from any mirror" in str(excinfo.value)
    assert down + NAMES[0] in str(excinfo.value)
    assert list((tmp_path / "raw").iterdir()) == []


def test_auto_offline_falls_back_to_sample_loudly(tmp_path: Path, sample_dir: Path) -> None:
    """Through the real CLI: stderr warns, SOURCE.json says it is the sample and why."""
    down = closed_port_url()
    (tmp_path / "params.yaml").write_text(f"data:\n  source: auto\n  mirrors: ['{down}']\n")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "vaegan", "fetch"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "WARNING: MNIST SAMPLE, NOT THE FULL DATASET" in proc.stderr
    assert "fell back" in proc.stderr
    target = tmp_path / "data" / "raw" / "mnist"
    record = read_source(target)
    assert record["sample"] is True and record["kind"] == "sample" and record["source"] == "auto"
    assert "first 10,000" in record["note"]
    assert down + NAMES[0] in record["fallback_reason"]
    for name in NAMES:
        assert (target / name).read_bytes() == (sample_dir / name).read_bytes()
        assert record["files"][name]["sha256"] == SAMPLE_SHA256[name]


def test_auto_never_substitutes_mnist_for_fashion_mnist(tmp_path: Path) -> None:
    with pytest.raises(DownloadUnavailable, match="No offline copy of fashion-mnist"):
        fetch_dataset(
            dataset="fashion-mnist", source="auto", raw_dir=tmp_path / "raw", mirrors=[closed_port_url()]
        )
    assert list((tmp_path / "raw").iterdir()) == []


def test_sample_source_is_mnist_only(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'sample' exists for mnist only, not fashion-mnist"):
        fetch_dataset(dataset="fashion-mnist", source="sample", raw_dir=tmp_path / "raw")


def test_auto_keeps_valid_files_and_refetches_changed_ones(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    first = fetch_dataset(dataset="mnist", source="sample", raw_dir=raw)
    down = [closed_port_url()]
    kept = fetch_dataset(dataset="mnist", source="auto", raw_dir=raw, mirrors=down)
    assert kept.kept_existing and kept.record == first.record
    # A file that no longer matches SOURCE.json is not kept: auto fetches again (here: the fallback).
    labels = raw / "mnist" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:-1] + b"\x00"))
    again = fetch_dataset(dataset="mnist", source="auto", raw_dir=raw, mirrors=down)
    assert not again.kept_existing and again.record["fallback_reason"]
    assert again.record["files"]["t10k-labels-idx1-ubyte.gz"]["sha256"] == SAMPLE_SHA256[labels.name]


def test_source_json_is_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        fetch_dataset(dataset="mnist", source="sample", raw_dir=tmp_path / name)
    a, b = ((tmp_path / n / "mnist" / SOURCE_FILE).read_bytes() for n in ("a", "b"))
    assert a == b


def test_directory_source_accepts_gz_and_plain_files(tmp_path: Path, sample_dir: Path) -> None:
    offline = tmp_path / "usb"
    offline.mkdir()
    for name in NAMES[:2]:
        shutil.copy(sample_dir / name, offline / name)
    for name in NAMES[2:]:
        (offline / name.removesuffix(".gz")).write_bytes(gzip.decompress((sample_dir / name).read_bytes()))
    result = fetch_dataset(dataset="mnist", source=str(offline), raw_dir=tmp_path / "raw")
    record = result.record
    assert record["kind"] == "directory" and record["directory"] == str(offline.resolve())
    for name in NAMES:
        assert record["files"][name]["sha256"] == SAMPLE_SHA256[name]
        stored = gzip.decompress((tmp_path / "raw" / "mnist" / name).read_bytes())
        assert hashlib.sha256(stored).hexdigest() == SAMPLE_SHA256[name]
    assert record["files"][NAMES[0]]["copied_from"] == str((offline / NAMES[0]).resolve())
    assert record["files"][NAMES[3]]["copied_from"] == str((offline / "t10k-labels-idx1-ubyte").resolve())


def test_directory_source_errors(tmp_path: Path, sample_dir: Path) -> None:
    with pytest.raises(DataError, match="neither one of auto, download, sample nor an existing directory"):
        fetch_dataset(dataset="mnist", source=str(tmp_path / "absent"), raw_dir=tmp_path / "raw")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(sample_dir / NAMES[0], partial / NAMES[0])
    with pytest.raises(DataError, match=r"holds neither train-labels-idx1-ubyte\.gz nor train-labels"):
        fetch_dataset(dataset="mnist", source=str(partial), raw_dir=tmp_path / "raw")
    # A truncated file is caught at fetch time, named by its path in the source directory.
    for name in NAMES[1:]:
        shutil.copy(sample_dir / name, partial / name)
    cut = partial / NAMES[0]
    cut.write_bytes(cut.read_bytes()[:1000])
    with pytest.raises(DataError, match=re.escape(str(cut))):
        fetch_dataset(dataset="mnist", source=str(partial), raw_dir=tmp_path / "raw")
    assert list((tmp_path / "raw").iterdir()) == []
