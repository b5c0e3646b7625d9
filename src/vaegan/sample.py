"""`vaegan sample`: images from the prior with an exported decoder, using onnxruntime + numpy only.

It shows that the exported artifact alone is enough to generate: no torch import, no checkpoint.
`--model` is a decoder `.onnx` file or an MLflow model URI (`models:/vaegan-decoder@champion`,
`models:/vaegan-decoder/3`, `runs:/...`); a URI is resolved by `vaegan.registry.verified.load_verified_onnx`,
which checks the artifact's sha256 against the registered one before it is used.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vaegan.artifacts import onnx_runtime
from vaegan.artifacts.atomic_io import atomic_path, output_file_problem
from vaegan.artifacts.images import image_grid, to_uint8, write_png
from vaegan.config import Config, check_seed
from vaegan.errors import CheckpointError, ConfigError

MODEL_URI_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
BATCH = 1024  # images per ONNX Runtime call: memory stays flat whatever --n is
MAX_GRID = 4096  # a PNG grid of 64 x 64 digits (1,922 pixels square)
MAX_NPY = 1_000_000  # a .npy of 784 MB, written batch by batch
FORMATS = {".png": MAX_GRID, ".npy": MAX_NPY}


def generate(session: ort.InferenceSession, n: int, seed: int, latent_dim: int | None = None) -> np.ndarray:
    """`n` uint8 images (n, 28, 28) decoded from z ~ N(0, I) drawn by numpy's default_rng(seed)."""
    batches = list(generate_batches(session, n, seed, latent_dim))
    return np.concatenate(batches)


def generate_batches(
    session: ort.InferenceSession, n: int, seed: int, latent_dim: int | None = None
) -> Iterator[np.ndarray]:
    """The `n` images of `generate` as uint8 batches of at most BATCH; the noise is one stream, so
    the images do not depend on the batching."""
    if n < 1:
        raise ConfigError(f"--n: {n} images requested, need at least 1")
    latent = latent_dim if latent_dim is not None else onnx_runtime.decoder_latent_dim(session)
    rng = np.random.default_rng(seed)
    for start in range(0, n, BATCH):
        z = rng.standard_normal((min(BATCH, n - start), latent), dtype=np.float32)  # (b, Z)
        yield to_uint8(onnx_runtime.run_decoder(session, z)[:, 0])  # (b, 28, 28)


def check_output(out: str, n: int) -> Path:
    """`--out` as a path once it can hold `n` images: a .png grid (n <= MAX_GRID) or a .npy array
    (n <= MAX_NPY) in an existing, writable directory (a missing one is not created: a typo in the
    path should not create folders). ConfigError naming the problem otherwise."""
    path = Path(out)
    limit = FORMATS.get(path.suffix.lower())
    if limit is None:
        raise ConfigError(
            f"--out: {out} must end in .png (a grid) or .npy (a uint8 array of shape (n, 28, 28))"
        )
    if n < 1:
        raise ConfigError(f"--n: {n} images requested, need at least 1")
    if n > limit:
        hint = "; write a .npy instead" if path.suffix.lower() == ".png" else ""
        raise ConfigError(f"--n: {n} images do not fit a {path.suffix} output (at most {limit:,}){hint}")
    problem = output_file_problem(path)
    if problem is not None:
        raise ConfigError(f"--out: {problem}")
    return path


def write_npy(path: Path, batches: Iterator[np.ndarray], n: int) -> None:
    """Stream uint8 batches into an (n, 28, 28) .npy at `path`, atomically. The file is allocated
    whole before the first batch is decoded (a full disk fails at once) and written with plain
    writes: a memory map onto a full disk dies of SIGBUS instead of raising."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False}
    with atomic_path(path) as tmp, open(tmp, "r+b") as handle:
        np.lib.format.write_array_header_1_0(handle, {**header, "shape": (n, 28, 28)})
        os.posix_fallocate(handle.fileno(), 0, handle.tell() + n * 28 * 28)
        for batch in batches:
            handle.write(np.ascontiguousarray(batch, dtype=np.uint8).tobytes())  # (b, 28, 28)


def is_model_uri(model: str) -> bool:
    """True for MLflow model URIs, False for a local file path."""
    return model.startswith(MODEL_URI_SCHEMES)


def resolve_decoder(model: str, config: Config, tracking_uri: str | None, download_dir: str | Path) -> Path:
    """A local decoder .onnx file for `--model`: the path itself, or for a registry URI the
    downloaded artifact (into `download_dir`) after its sha256 was verified."""
    if is_model_uri(model):
        # Imported here on purpose: it imports mlflow, measured at 4-5 s on the 2-core CI machine
        # against 0.5 s for all of `import vaegan.sample`; a .onnx file needs onnxruntime and numpy alone.
        from vaegan.registry.verified import load_verified_onnx

        verified = load_verified_onnx(model, config.tracking, tracking_uri=tracking_uri, dst_dir=download_dir)
        return Path(verified.path)
    path = Path(model)
    if not path.is_file():
        raise ConfigError(
            f"--model: {model} is neither an existing .onnx file nor an MLflow model URI "
            f"({', '.join(MODEL_URI_SCHEMES)}...)"
        )
    return path


def run(config: Config, args: argparse.Namespace) -> int:
    """Decode `--n` prior samples with the ONNX decoder, in batches, and write them to `--out`: a
    PNG grid, or a .npy array for many."""
    out = check_output(args.out, args.n)  # before any download or decoding
    check_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="vaegan-sample-") as download_dir:
        decoder_path = resolve_decoder(args.model, config, args.tracking_uri, download_dir)
        session = onnx_runtime.create_session(decoder_path, "auto")  # loaded into memory here
    try:
        batches = generate_batches(session, args.n, args.seed)
        if out.suffix.lower() == ".npy":
            write_npy(out, batches, args.n)
        else:
            images = np.concatenate(list(batches))
            write_png(out, image_grid(images, ncols=math.ceil(math.sqrt(args.n))))
    except CheckpointError as exc:
        raise CheckpointError(f"{args.model}: {exc}") from exc
    print(
        f"wrote {args.n} images from {args.model} ({onnx_runtime.active_provider(session)}, "
        f"seed {args.seed}) to {args.out}"
    )
    return 0
