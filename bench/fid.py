"""FID on N generated samples: the project's functions against the same computation written plainly.

Both sides do the same work: draw N latent codes, decode and quantise N samples, extract the
evaluator's 128-d features of the N samples and of N real test images, then the Fréchet distance.

- project: the path `vaegan.scoring.core.evaluate_model` takes for `fid` (batches of
  `evaluate.batch_size`, `quantise`, `LeNet.features`, `metrics.gaussian_statistics`,
  `metrics.frechet_distance` with its eigenvalue trace);
- plain: pytorch-fid's shape: batches of 50, each batch's features copied to the host into a numpy
  array, `np.cov`, and `scipy.linalg.sqrtm` of sigma1 @ sigma2 (called without `disp`, which scipy
  1.18 removed).

The networks are freshly initialised (timing does not depend on the weights); the FID values of
the two sides are returned too, and must agree.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import torch

from bench.data import real_images
from bench.device_sync import sync_device
from vaegan.nn.networks import build_model, model_args_for
from vaegan.scoring import metrics as M
from vaegan.scoring.core import quantise
from vaegan.scoring.lenet import EvaluatorArgs, LeNet, images_to_tensor

try:
    from scipy import linalg
except ImportError:  # the plain side is skipped, with the reason
    linalg = None

PLAIN_BATCH = 50  # pytorch-fid's default --batch-size


@torch.no_grad()
def project_fid(
    *, decoder: torch.nn.Module, evaluator: Any, real: torch.Tensor, num_samples: int, latent_dim: int,
    device: torch.device, batch_size: int = 1000, seed: int = 0,
) -> float:  # fmt: skip
    """FID with the project's functions, as `evaluate_model` computes `fid` (real: (N, 1, 28, 28))."""

    def features(images: torch.Tensor) -> np.ndarray:
        return evaluator.features(images).double().cpu().numpy()

    real_f = [features(real[s : s + batch_size].to(device)) for s in range(0, len(real), batch_size)]
    generator = torch.Generator().manual_seed(seed)
    fake_f = []
    for start in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - start)
        z = torch.randn(count, latent_dim, generator=generator).to(device)
        fake_f.append(features(quantise(decoder.decode(z))))  # type: ignore[operator]
    stats_real = M.gaussian_statistics(np.concatenate(real_f))
    stats_fake = M.gaussian_statistics(np.concatenate(fake_f))
    return M.frechet_distance(*stats_real, *stats_fake)


@torch.no_grad()
def plain_fid(
    *, decoder: torch.nn.Module, evaluator: Any, real: torch.Tensor, num_samples: int, latent_dim: int,
    device: torch.device, batch_size: int = PLAIN_BATCH, seed: int = 0,
) -> float:  # fmt: skip
    """The same FID written the plain way (per-batch loops and host copies, scipy's sqrtm)."""
    dim = 128
    real_act = np.empty((len(real), dim))
    for start in range(0, len(real), batch_size):
        batch = real[start : start + batch_size].to(device)
        real_act[start : start + len(batch)] = evaluator.features(batch).cpu().numpy()
    fake_act = np.empty((num_samples, dim))
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - start)
        z = torch.randn(count, latent_dim, generator=generator).to(device)
        images = torch.round(torch.sigmoid(decoder(z)).clamp(0, 1) * 255) / 255
        fake_act[start : start + count] = evaluator.features(images).cpu().numpy()
    mu1, sigma1 = real_act.mean(axis=0), np.cov(real_act, rowvar=False)
    mu2, sigma2 = fake_act.mean(axis=0), np.cov(fake_act, rowvar=False)
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(dim) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def measure_fid(
    *, num_samples: int, repeats: int, device: torch.device, batch_size: int = 1000
) -> dict[str, Any]:
    """Seconds of each side over `repeats` runs (after one warm-up), and their FID values."""
    torch.manual_seed(0)
    args = model_args_for("default")
    decoder = build_model(args).decoder.eval().to(device)
    evaluator = LeNet(EvaluatorArgs()).eval().to(device)
    images, source = real_images("test", num_samples)
    real = images_to_tensor(images)
    common = {
        "decoder": decoder, "evaluator": evaluator, "real": real, "num_samples": num_samples,
        "latent_dim": args.latent_dim, "device": device,
    }  # fmt: skip
    sides: dict[str, Any] = {"project": functools.partial(project_fid, batch_size=batch_size)}
    if linalg is not None:
        sides["plain"] = plain_fid
    times: dict[str, list[float]] = {name: [] for name in sides}
    values: dict[str, float] = {}
    for rep in range(repeats + 1):  # interleaved, the first round untimed
        for name, fn in sides.items():
            sync_device(device)
            started = time.perf_counter()
            values[name] = fn(**common)
            sync_device(device)
            if rep:
                times[name].append(time.perf_counter() - started)
    return {"seconds": times, "fid": values, "real_images": source, "plain_available": "plain" in sides}
