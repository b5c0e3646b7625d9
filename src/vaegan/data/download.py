"""The core of the `fetch` stage (`vaegan.fetch`): put a dataset's four IDX `.gz` files into
`<raw_dir>/<dataset>/` with a SOURCE.json saying where they came from.

`data.source` picks the origin:
  auto      keep valid files already there (e.g. after `dvc pull`); else download from the mirrors and
            verify the official md5s; if no mirror is reachable and the dataset is mnist, fall back to
            the MNIST sample shipped in the package, loudly (stderr and SOURCE.json)
  download  the official files only; fails clearly when offline
  sample    the shipped MNIST sample only (mnist only)
  <dir>     copy the IDX files (`.gz` or uncompressed) from a local directory (air-gapped machines)

The directory is built in a staging directory and swapped in whole, so a failed fetch (offline,
checksum mismatch) leaves whatever was there before, and nothing when there was nothing.
SOURCE.json holds no timestamps: the same inputs give the same bytes (it is part of a DVC out).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vaegan.artifacts.atomic_io import atomic_directory, read_json_object, write_json
from vaegan.artifacts.provenance import sha256_bytes
from vaegan.data.datasets import (
    ROLES,
    SAMPLE_DATASET,
    SAMPLE_NOTE,
    SAMPLE_SHA256,
    DatasetSpec,
    dataset_spec,
    sample_directory,
)
from vaegan.data.idx import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    check_images_shape,
    check_labels_shape,
    decompress_idx,
    idx_shape,
)
from vaegan.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SOURCE_FILE = "SOURCE.json"
SOURCE_FORMAT = "vaegan-raw-source/1"
KEYWORD_SOURCES = ("auto", "download", "sample")
_CHUNK = 1 << 16
_URL_SCHEMES = ("http", "https", "ftp", "file")


class DownloadUnavailable(DataError):
    """No mirror could serve a file: the network (or every mirror) is unreachable."""


@dataclass(frozen=True)
class FetchResult:
    """What `fetch_dataset` left in `directory`, and the SOURCE.json record describing it."""

    directory: Path
    record: dict[str, Any]
    kept_existing: bool

    @property
    def sample(self) -> bool:
        return bool(self.record.get("sample"))


def fetch_dataset(
    *,
    dataset: str,
    source: str,
    raw_dir: str | Path,
    mirrors: Sequence[str] = (),
    timeout_s: float = 120.0,
    expected_md5: Mapping[str, str] | None = None,
    progress: bool = False,
) -> FetchResult:
    """Fill `<raw_dir>/<dataset>/` from `source` (auto | download | sample | a directory).

    `mirrors` empty means the dataset's official (torchvision) mirrors. `expected_md5` maps each
    `.gz` file name to the md5 a download must have; it defaults to the official table.
    """
    spec = dataset_spec(dataset)
    target = Path(raw_dir) / spec.name
    md5_table = dict(spec.md5 if expected_md5 is None else expected_md5)
    mirror_list = tuple(mirrors) or spec.mirrors
    for index, mirror in enumerate(mirror_list):
        if urllib.parse.urlsplit(mirror).scheme not in _URL_SCHEMES:
            raise ConfigError(f"data.mirrors[{index}]: {mirror!r} is not an http(s), ftp or file URL")

    def download(staging: Path) -> dict[str, Any]:
        return _download_files(staging, spec, mirror_list, timeout_s, md5_table, progress)

    if source == "auto":
        existing = valid_existing(target, spec)
        if existing is not None:
            return FetchResult(target, existing, kept_existing=True)
        try:
            return _install(target, spec, source, download)
        except DownloadUnavailable as exc:
            if spec.name != SAMPLE_DATASET:
                raise DownloadUnavailable(
                    f"{exc}. No offline copy of {spec.name} ships with vaegan (the shipped sample is "
                    "MNIST, never substituted for another dataset): fetch online, or set data.source "
                    "to a directory holding the four IDX files"
                ) from exc
            reason = str(exc)
            return _install(target, spec, source, lambda staging: _copy_sample(staging, spec, reason))
    if source == "download":
        existing = valid_existing(target, spec, md5_table)
        if existing is not None and existing.get("kind") == "download":
            return FetchResult(target, existing, kept_existing=True)
        return _install(target, spec, source, download)
    if source == "sample":
        return _install(target, spec, source, lambda staging: _copy_sample(staging, spec, None))
    directory = Path(source)
    if not directory.is_dir():
        raise DataError(
            f"data.source: {source!r} is neither one of {', '.join(KEYWORD_SOURCES)} "
            "nor an existing directory"
        )
    return _install(
        target, spec, source, lambda staging: _copy_directory(staging, spec, directory, md5_table)
    )


def valid_existing(
    directory: Path, spec: DatasetSpec, md5_table: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """The SOURCE.json record of `directory` when its four files still match it, else None.

    With `md5_table`, each `.gz` file must also have the md5 listed there (official files).
    """
    record = read_source(directory)
    if record is None:
        return None
    files = record.get("files")
    if (
        record.get("format") != SOURCE_FORMAT
        or record.get("dataset") != spec.name
        or not isinstance(files, dict)
    ):
        log.info("%s: SOURCE.json is for another format or dataset; fetching again", directory)
        return None
    for role, name in zip(ROLES, spec.file_names, strict=True):
        path = directory / name
        entry = files.get(name)
        if not path.is_file() or not isinstance(entry, dict):
            log.info("%s is missing; fetching again", path)
            return None
        raw = path.read_bytes()
        if md5_table is not None and _md5(raw) != md5_table.get(name):
            log.info("%s is not the official file (md5 differs); fetching again", path)
            return None
        try:
            described = describe_idx_gz(raw, role, str(path))
        except DataError as exc:
            log.info("%s; fetching again", exc)
            return None
        if described["sha256"] != entry.get("sha256"):
            log.info("%s no longer matches SOURCE.json (sha256 differs); fetching again", path)
            return None
    return record


def read_source(directory: str | Path) -> dict[str, Any] | None:
    """The parsed SOURCE.json of a raw dataset directory, or None when absent or unreadable."""
    path = Path(directory) / SOURCE_FILE
    try:
        return read_json_object(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.info("%s cannot be read (%s)", path, exc)
        return None


def describe_idx_gz(raw: bytes, role: str, name: str) -> dict[str, Any]:
    """Validate one IDX file's bytes (`.gz` or plain) for `role`; sha256 of the decompressed file,
    record count and shape."""
    data = decompress_idx(raw, name)
    images = role.endswith("images")
    shape = idx_shape(data, name, IMAGES_MAGIC if images else LABELS_MAGIC)
    if images:
        check_images_shape(shape, name)
    else:
        check_labels_shape(shape, name)
    return {"sha256": sha256_bytes(data), "records": shape[0], "shape": list(shape)}


def _install(
    target: Path, spec: DatasetSpec, source: str, populate: Callable[[Path], dict[str, Any]]
) -> FetchResult:
    """Build the dataset directory in a staging directory with `populate`, then swap it in."""
    with atomic_directory(target) as staging:
        _make_readable(staging)
        record = {"format": SOURCE_FORMAT, "dataset": spec.name, "source": source, **populate(staging)}
        _check_counts(record["files"], spec, target)
        write_json(staging / SOURCE_FILE, record)
    return FetchResult(target, record, kept_existing=False)


def _make_readable(directory: Path) -> None:
    """Give a staging directory (created 0700) the permissions the umask grants new directories."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)


def _check_counts(files: Mapping[str, Mapping[str, Any]], spec: DatasetSpec, target: Path) -> None:
    for split in ("train", "test"):
        images, labels = spec.files[f"{split}_images"], spec.files[f"{split}_labels"]
        if files[images]["records"] != files[labels]["records"]:
            raise DataError(
                f"{target}: {images} holds {files[images]['records']} images but {labels} holds "
                f"{files[labels]['records']} labels"
            )


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _file_url(mirror: str, name: str) -> str:
    return f"{mirror.rstrip('/')}/{name}"


def _download_files(
    staging: Path,
    spec: DatasetSpec,
    mirrors: Sequence[str],
    timeout_s: float,
    md5_table: Mapping[str, str],
    progress: bool,
) -> dict[str, Any]:
    """Download the four files into `staging`, each from the first mirror that serves it."""
    unreachable: dict[str, str] = {}  # mirror -> connection error; not asked again
    failed: dict[str, str] = {}  # url -> error
    files: dict[str, Any] = {}
    for role, name in zip(ROLES, spec.file_names, strict=True):
        url, data = _download_one(name, mirrors, timeout_s, progress, unreachable, failed)
        expected = md5_table.get(name)
        actual = _md5(data)
        if actual != expected:
            raise DataError(
                f"{name} from {url} failed its checksum: md5 {actual}, expected {expected}; "
                f"the file is corrupted or not the official one, nothing was kept"
            )
        (staging / name).write_bytes(data)
        files[name] = {
            **describe_idx_gz(data, role, url),
            "url": url,
            "gz_md5": actual,
            "gz_md5_official": actual == spec.md5[name],
        }
    used = sorted({entry["url"][: -len(name) - 1] + "/" for name, entry in files.items()})
    record: dict[str, Any] = {"kind": "download", "sample": False, "mirrors_used": used, "files": files}
    if failed:
        record["failed_urls"] = failed
    return record


def _download_one(
    name: str,
    mirrors: Sequence[str],
    timeout_s: float,
    progress: bool,
    unreachable: dict[str, str],
    failed: dict[str, str],
) -> tuple[str, bytes]:
    """`(url, bytes)` of `name` from the first mirror that serves it; `DownloadUnavailable` if none."""
    errors = []
    for mirror in mirrors:
        url = _file_url(mirror, name)
        if mirror in unreachable:
            errors.append(f"{url}: {unreachable[mirror]}")
            continue
        try:
            return url, _http_get(url, timeout_s, progress)
        except urllib.error.HTTPError as exc:  # the mirror answered but does not serve the file
            reason = f"HTTP {exc.code} {exc.reason}"
        except (OSError, http.client.HTTPException) as exc:  # refused, DNS, timeout, cut transfer
            reason = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
            unreachable[mirror] = reason
        log.warning("could not download %s: %s", url, reason)
        failed[url] = reason
        errors.append(f"{url}: {reason}")
    raise DownloadUnavailable(f"could not download {name} from any mirror ({'; '.join(errors)})")


def _http_get(url: str, timeout_s: float, progress: bool) -> bytes:
    """The body of `url` within `timeout_s` for the whole transfer (a deadline, not a per-read
    timeout: a mirror that trickles a byte at a time fails too), with a progress bar if asked."""
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(url, headers={"User-Agent": "vaegan-fetch/1 (python urllib)"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        chunks: list[bytes] = []
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], disable=not progress
        ) as bar:
            while True:
                try:
                    # The socket's timeout is what is left of the deadline, so a trickle of bytes
                    # cannot stretch the transfer past it.
                    _set_read_timeout(response, deadline - time.monotonic())
                    chunk = response.read1(_CHUNK)
                except TimeoutError as exc:
                    received = sum(len(c) for c in chunks)
                    raise TimeoutError(
                        f"download not finished within data.download_timeout_s={timeout_s:g} s "
                        f"({received} bytes received)"
                    ) from exc
                if not chunk:
                    break
                chunks.append(chunk)
                bar.update(len(chunk))
    data = b"".join(chunks)
    if total is not None and len(data) != total:
        raise ConnectionError(f"transfer cut after {len(data)} of {total} bytes")
    log.info("downloaded %s (%.1f MB)", url, len(data) / 1e6)
    return data


def _set_read_timeout(response: Any, seconds: float) -> None:
    """Bound the next blocking read of an urllib response by `seconds` (its socket's timeout)."""
    if seconds <= 0:
        raise TimeoutError("deadline reached")
    sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def _copy_sample(staging: Path, spec: DatasetSpec, fallback_reason: str | None) -> dict[str, Any]:
    """Copy the shipped MNIST sample into `staging`, verifying the sha256s its README lists."""
    if spec.name != SAMPLE_DATASET:
        raise DataError(
            f"data.source: 'sample' exists for {SAMPLE_DATASET} only, not {spec.name}; "
            "use auto, download or a directory holding the four IDX files"
        )
    origin = sample_directory()
    files: dict[str, Any] = {}
    for role, name in zip(ROLES, spec.file_names, strict=True):
        path = origin / name
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise DataError(
                f"the shipped sample file {path} cannot be read ({exc}); reinstall vaegan"
            ) from exc
        described = describe_idx_gz(raw, role, str(path))
        if described["sha256"] != SAMPLE_SHA256[name]:
            raise DataError(
                f"the shipped sample file {path} is corrupted: sha256 {described['sha256']}, expected "
                f"{SAMPLE_SHA256[name]} (sample_data/mnist/README.md); reinstall vaegan"
            )
        (staging / name).write_bytes(raw)
        files[name] = {**described, "gz_md5": _md5(raw), "gz_md5_official": _md5(raw) == spec.md5[name]}
    record: dict[str, Any] = {
        "kind": "sample",
        "sample": True,
        "note": SAMPLE_NOTE,
        "package_data": f"vaegan/sample_data/{SAMPLE_DATASET}",
        "files": files,
    }
    if fallback_reason is not None:
        record["fallback_reason"] = fallback_reason
    return record


def _copy_directory(
    staging: Path, spec: DatasetSpec, directory: Path, md5_table: Mapping[str, str]
) -> dict[str, Any]:
    """Copy the four IDX files from a local directory (`.gz` as is; uncompressed ones gzipped)."""
    files: dict[str, Any] = {}
    for role, name in zip(ROLES, spec.file_names, strict=True):
        gz_path, plain_path = directory / name, directory / name.removesuffix(".gz")
        if gz_path.is_file():
            path, raw = gz_path, gz_path.read_bytes()
        elif plain_path.is_file():
            path = plain_path
            raw = gzip.compress(plain_path.read_bytes(), compresslevel=6, mtime=0)  # deterministic bytes
        else:
            raise DataError(f"data.source: {directory} holds neither {name} nor {plain_path.name}")
        described = describe_idx_gz(raw, role, str(path))
        (staging / name).write_bytes(raw)
        files[name] = {
            **described,
            "copied_from": str(path.resolve()),
            "gz_md5": _md5(raw),
            "gz_md5_official": _md5(raw) == md5_table.get(name),
        }
    return {"kind": "directory", "sample": False, "directory": str(directory.resolve()), "files": files}
