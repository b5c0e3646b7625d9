"""The evaluation report: PNG figures and `report.md` in `evaluate.report_dir`.

    samples.png          a 10x10 grid of prior samples (the ones FID was computed on)
    reconstructions.png  test images (odd rows) above their reconstructions (even rows)
    interpolation.png    latent interpolation strips: real A | decoded path A -> B | real B
    manifold.png         latent_dim 2 only: decoded grid over the prior's quantiles 0.05..0.95
    latent_scatter.png   latent_dim 2 only: test-set encoder means coloured by class (matplotlib)
    sample_classes.csv   class histogram of prior samples vs the test set (a DVC bar plot)
    report.md            the metric table beside the baseline's and the real-data floor, the images

The directory is replaced atomically as a whole.
"""

from __future__ import annotations

import os
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vaegan.artifacts.atomic_io import atomic_directory
from vaegan.artifacts.images import image_grid, write_png
from vaegan.scoring.core import Evaluation
from vaegan.scoring.metrics import max_class_entropy

if TYPE_CHECKING:
    from pathlib import Path

    from vaegan.data.splits import Split
    from vaegan.nn.networks import VAEGAN

SCALE = 2  # PNG pixels per image pixel

# (key, label, better, what it is)
ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("fid", "FID (prior samples vs test)", "lower", "Fréchet distance of feature Gaussians"),
    ("fid_standard_prior", "FID with z ~ N(0, I)", "lower", "the same networks without the fitted prior"),
    ("fid_recon", "FID (reconstructions vs test)", "lower", "same, for reconstructions of the test set"),
    ("precision", "Precision (k-NN)", "higher", "share of samples inside the real data's manifold"),
    ("recall", "Recall (k-NN)", "higher", "share of real data inside the samples' manifold"),
    ("sample_class_entropy", "Sample class entropy (nats)", "higher",
     f"entropy of the evaluator's labels of samples (max ln 10 = {max_class_entropy():.3f})"),
    ("recon_mse", "Reconstruction MSE (per pixel)", "lower", "decoder means vs test images"),
    ("recon_bce", "Reconstruction BCE (nats/image)", "lower", "Bernoulli negative log-likelihood"),
    ("psnr", "PSNR (dB)", "higher", "8-bit reconstructions vs test images, mean over images"),
    ("ssim", "SSIM", "higher", "11x11 Gaussian window, mean over images"),
    ("kl", "KL(q(z\\|x) ‖ p(z)) (nats/image)", "—", "rate of the encoder"),
    ("label_consistency", "Label consistency", "higher", "evaluator labels x and its reconstruction alike"),
    ("evaluator_test_accuracy", "Evaluator test accuracy", "—", "the FID classifier on the test set"),
)  # fmt: skip
FLOOR = {"fid": "fid_floor", "fid_standard_prior": "fid_floor", "fid_recon": "fid_floor"}


@torch.no_grad()
def _decode_uint8(model: VAEGAN, z: torch.Tensor, device: torch.device) -> np.ndarray:
    images = model.decoder.decode(z.to(device))[:, 0]
    return torch.round(images.clamp(0, 1) * 255.0).to(torch.uint8).cpu().numpy()


@torch.no_grad()
def reconstruction_rows(
    model: VAEGAN, images: np.ndarray, device: torch.device, ncols: int = 16, pairs: int = 4
) -> np.ndarray:
    """(2 * pairs * ncols, 28, 28) uint8: rows of originals, each followed by its reconstructions."""
    originals = images[: pairs * ncols]
    x = torch.from_numpy(originals).float().div(255.0).unsqueeze(1).to(device)
    recon = _decode_uint8(model, model.encoder(x)[0], device)
    tiles = []
    for row in range(pairs):
        cols = slice(row * ncols, (row + 1) * ncols)
        tiles.extend([originals[cols], recon[cols]])
    return np.concatenate(tiles)


@torch.no_grad()
def interpolation_strips(
    model: VAEGAN, test: Split, device: torch.device, strips: int = 8, steps: int = 10
) -> np.ndarray:
    """(strips * (steps + 2), 28, 28) uint8: per strip, real A, decoded (1-t) mu_A + t mu_B, real B.
    Strip c goes from the first test digit of class c to the first of class c + 1 (mod 10)."""
    first = {int(c): int(np.flatnonzero(test.labels == c)[0]) for c in np.unique(test.labels)}
    classes = sorted(first)
    pairs = [
        (first[classes[i % len(classes)]], first[classes[(i + 1) % len(classes)]]) for i in range(strips)
    ]
    index = torch.tensor([i for pair in pairs for i in pair])
    x = torch.from_numpy(test.images[index.numpy()]).float().div(255.0).unsqueeze(1).to(device)
    mu = model.encoder(x)[0].cpu().view(strips, 2, -1)  # (strips, 2, latent)
    t = torch.linspace(0.0, 1.0, steps)[None, :, None]  # (1, steps, 1)
    path = (1 - t) * mu[:, :1] + t * mu[:, 1:]  # (strips, steps, latent)
    decoded = _decode_uint8(model, path.reshape(strips * steps, -1), device).reshape(strips, steps, 28, 28)
    real = test.images[index.numpy()].reshape(strips, 2, 28, 28)
    rows = np.concatenate([real[:, :1], decoded, real[:, 1:]], axis=1)  # (strips, steps + 2, 28, 28)
    return rows.reshape(-1, 28, 28)


def prior_quantile_grid(n: int = 20, low: float = 0.05, high: float = 0.95) -> torch.Tensor:
    """(n * n, 2) latent points at the standard normal's quantiles, rows top (high z2) to bottom."""
    normal = NormalDist()
    values = torch.tensor([normal.inv_cdf(p) for p in np.linspace(low, high, n)], dtype=torch.float32)
    z2, z1 = torch.meshgrid(values.flip(0), values, indexing="ij")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1)


def latent_scatter_png(path: Path | str, mu: np.ndarray, labels: np.ndarray) -> None:
    """Scatter plot of 2-D test-set latent means coloured by class (matplotlib's Agg canvas)."""
    figure = Figure(figsize=(7, 6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    points = axes.scatter(mu[:, 0], mu[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=3, alpha=0.7)
    colorbar = figure.colorbar(points, ax=axes, ticks=range(10))
    colorbar.set_label("digit")
    axes.set_xlabel("z[0] (encoder mean)")
    axes.set_ylabel("z[1] (encoder mean)")
    axes.set_title(f"Test-set latent means ({len(labels)} images)")
    figure.tight_layout()
    figure.savefig(path)


def _fmt(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.4g}"
    return "—"


def report_markdown(
    metrics: dict[str, Any],
    baseline: dict[str, Any] | None,
    baseline_path: str | None,
    images: list[tuple[str, str]],
    info: dict[str, Any],
) -> str:
    """The report's Markdown: metric table (model | baseline | floor), settings, images."""
    prov = metrics.get("provenance", {})
    lines = [
        "# Evaluation report",
        "",
        f"Model `{prov.get('checkpoint', '?')}` (objective `{prov.get('objective', '?')}`), "
        f"{metrics['feature_extractor']} features ({metrics['feature_dim']}-d).",
        f"FID uses {metrics['num_samples']} samples of the `{metrics.get('prior', 'standard')}` latent prior "
        f"(seed {metrics['seed']}) against the "
        f"{metrics['num_test']} test images; the floor is the {metrics['num_floor']} training images "
        "against the test images (real vs real, at about the same N). "
        "FID depends on N: compare models at the same N.",
        "",
        "| Metric | This model | Baseline (`vae`) | Real-data floor | Better | What it is |",
        "| --- | ---: | ---: | ---: | :---: | --- |",
    ]
    for key, label, better, what in ROWS:
        base = baseline.get(key) if baseline else None
        floor = metrics.get(FLOOR[key]) if key in FLOOR else None
        lines.append(
            f"| {label} | {_fmt(metrics.get(key))} | {_fmt(base)} | {_fmt(floor)} | {better} | {what} |"
        )
    lines.append("")
    if baseline is None:
        lines.append(
            f"No baseline metrics at `{baseline_path}`: "
            "run `dvc repro evaluate-baseline` to fill that column."
            if baseline_path
            else "No baseline configured (evaluate.baseline_metrics is null)."
        )
    elif baseline.get("num_samples") != metrics.get("num_samples"):
        lines.append(
            f"Note: the baseline used {baseline.get('num_samples')} samples, this model "
            f"{metrics.get('num_samples')}: their FIDs are not directly comparable."
        )
    lines += [
        "",
        f"Precision/recall: Kynkäänniemi et al. 2019 with k = {metrics['precision_recall_k']}. "
        f"Evaluated on {info.get('device', '?')} in {info.get('seconds', '?')} s.",
        "",
    ]
    for file_name, caption in images:
        lines += [f"## {caption}", "", f"![{caption}]({file_name})", ""]
    return "\n".join(lines)


def write_report(
    *,
    out_dir: str | os.PathLike[str],
    model: VAEGAN,
    evaluation: Evaluation,
    test: Split,
    baseline: dict[str, Any] | None,
    baseline_path: str | None,
    seed: int,
    device: torch.device,
) -> list[str]:
    """Write every figure and report.md into `out_dir` (replaced atomically); return the file names."""
    model = model.eval().to(device)
    images: list[tuple[str, str]] = []
    with atomic_directory(out_dir) as staging:
        write_png(staging / "samples.png", image_grid(evaluation.samples, ncols=10), scale=SCALE)
        images.append(("samples.png", "Samples from the prior"))
        rows = reconstruction_rows(model, test.images, device)
        write_png(staging / "reconstructions.png", image_grid(rows, ncols=16), scale=SCALE)
        images.append(("reconstructions.png", "Test images (odd rows) and their reconstructions (even rows)"))
        strips = interpolation_strips(model, test, device)
        write_png(staging / "interpolation.png", image_grid(strips, ncols=12), scale=SCALE)
        images.append(("interpolation.png", "Latent interpolation between test digits (real ends)"))
        if model.args.latent_dim == 2:
            manifold = _decode_uint8(model, prior_quantile_grid(20), device)
            write_png(staging / "manifold.png", image_grid(manifold, ncols=20, pad=0), scale=SCALE)
            images.append(("manifold.png", "Decoded latent manifold over the prior's 5%..95% quantiles"))
            latent_scatter_png(staging / "latent_scatter.png", evaluation.test_mu, test.labels)
            images.append(("latent_scatter.png", "Test-set latent means by class"))
        total_samples = max(1, int(evaluation.sample_class_counts.sum()))
        total_test = max(1, int(evaluation.test_class_counts.sum()))
        csv_lines = ["class,samples,test"] + [
            f"{c},{evaluation.sample_class_counts[c] / total_samples:.6f},"
            f"{evaluation.test_class_counts[c] / total_test:.6f}"
            for c in range(10)
        ]
        (staging / "sample_classes.csv").write_text("\n".join(csv_lines) + "\n", encoding="utf-8")
        markdown = report_markdown(evaluation.metrics, baseline, baseline_path, images, evaluation.info)
        (staging / "report.md").write_text(markdown, encoding="utf-8")
        names = sorted(path.name for path in staging.iterdir())
    return names
