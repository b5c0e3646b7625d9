"""Evaluation metrics as pure numpy functions (no torch, no I/O).

- `gaussian_statistics` + `frechet_distance`: FID between two feature sets, in float64, with the
  trace term from the eigenvalues of sigma1 @ sigma2 (the form torch-fidelity and torchmetrics use;
  no `scipy.linalg.sqrtm`, whose signature changed and whose complex route leaves imaginary noise).
- `precision_recall`: improved precision and recall (Kynkäänniemi et al. 2019) with k-NN radii.
- `psnr`, `ssim`: per-image reconstruction quality, averaged over images.
- `gaussian_kl`: KL(q(z|x) || N(0, I)) per image.
- `class_entropy`: entropy of a label histogram (did the generator cover all classes?).
"""

from __future__ import annotations

import math

import numpy as np

# SSIM constants of Wang et al. (2004): K1, K2, an 11x11 Gaussian window with sigma 1.5.
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"expected (N >= 2, D) features, got shape {x.shape}")
    mu = x.mean(axis=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu, sigma


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):

    ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).

    tr((sigma1 sigma2)^(1/2)) is the sum of the square roots of the eigenvalues of sigma1 @ sigma2
    (real and non-negative in exact arithmetic for PSD inputs; their real parts are clipped at 0
    against round-off). Computed in float64.
    """
    m1, m2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    s1, s2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    if m1.shape != m2.shape or m1.ndim != 1:
        raise ValueError(f"means must be equal-length vectors, got {m1.shape} and {m2.shape}")
    d = m1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"covariances must be ({d}, {d}), got {s1.shape} and {s2.shape}")
    diff = m1 - m2
    eigenvalues = np.linalg.eigvals(s1 @ s2)
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues.real, 0.0, None)).sum())
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) squared Euclidean distances, float64, clipped at 0."""
    sq = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(sq, 0.0)


def knn_radii(features: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Squared distance from each point to its k-th nearest other point in the same set, (N,)."""
    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} points, got {k}")
    radii = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        sq = _squared_distances(x[start : start + chunk], x)  # (chunk, N), self-distance 0 included
        # index k of the partition is the k-th nearest neighbour once the point itself (0) is counted
        radii[start : start + chunk] = np.partition(sq, k, axis=1)[:, k]
    return radii


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int) -> float:
    """Fraction of `points` inside at least one ball (centre, squared radius)."""
    inside = np.zeros(points.shape[0], dtype=bool)
    for start in range(0, points.shape[0], chunk):
        sq = _squared_distances(points[start : start + chunk], centres)  # (chunk, M)
        inside[start : start + chunk] = (sq <= radii[None, :]).any(axis=1)
    return float(inside.mean())


def precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its points with radius the distance to the
    point's k-th nearest neighbour in the same set. Precision is the fraction of `fake` points inside
    the real manifold; recall the fraction of `real` points inside the fake manifold.
    """
    r = np.asarray(real, dtype=np.float64)
    f = np.asarray(fake, dtype=np.float64)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) features, got {r.shape} and {f.shape}")
    precision = _coverage(f, r, knn_radii(r, k, chunk), chunk)
    recall = _coverage(r, f, knn_radii(f, k, chunk), chunk)
    return precision, recall


def psnr(reference: np.ndarray, test: np.ndarray, data_range: float = 1.0, max_db: float = 100.0) -> float:
    """Mean over images of 10 log10(data_range^2 / MSE_i); identical images count as `max_db`."""
    ref, out = _image_pair(reference, test)
    mse = ((ref - out) ** 2).reshape(ref.shape[0], -1).mean(axis=1)
    floor = data_range**2 / 10.0 ** (max_db / 10.0)
    return float((10.0 * np.log10(data_range**2 / np.maximum(mse, floor))).mean())


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """A normalised 1-D Gaussian window (the 2-D window is its outer product)."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    window = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return window / window.sum()


def _filter_valid(images: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of (N, H, W) by the outer product of `window` with itself."""
    size = window.shape[0]
    rows = np.lib.stride_tricks.sliding_window_view(images, size, axis=2) @ window  # (N, H, W-s+1)
    return np.lib.stride_tricks.sliding_window_view(rows, size, axis=1) @ window  # (N, H-s+1, W-s+1)


def ssim(reference: np.ndarray, test: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM (Wang et al. 2004): 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
    'valid' windows only (an 18x18 map on 28x28 images), averaged over windows then images."""
    ref, out = _image_pair(reference, test)
    if min(ref.shape[1:]) < SSIM_WINDOW:
        raise ValueError(f"images must be at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {ref.shape[1:]}")
    window = gaussian_window()
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _filter_valid(ref, window), _filter_valid(out, window)
    var_x = _filter_valid(ref * ref, window) - mu_x**2
    var_y = _filter_valid(out * out, window) - mu_y**2
    cov = _filter_valid(ref * out, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.reshape(ref.shape[0], -1).mean(axis=1).mean())


def _image_pair(reference: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(test, dtype=np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"image stacks differ in shape: {ref.shape} vs {out.shape}")
    if ref.ndim == 4 and ref.shape[1] == 1:
        ref, out = ref[:, 0], out[:, 0]
    if ref.ndim != 3:
        raise ValueError(f"expected (N, H, W) or (N, 1, H, W) images, got shape {ref.shape}")
    return ref, out


def gaussian_kl(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, summed over latent dimensions, (N,) float64."""
    m = np.asarray(mu, dtype=np.float64)
    lv = np.asarray(logvar, dtype=np.float64)
    return 0.5 * (m * m + np.exp(lv) - 1.0 - lv).sum(axis=1)


def class_entropy(labels: np.ndarray, num_classes: int = 10) -> float:
    """Entropy (nats) of the label histogram; ln(num_classes) when every class is equally frequent."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel(), minlength=num_classes)
    if counts.sum() == 0:
        raise ValueError("class_entropy needs at least one label")
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum()) + 0.0


def max_class_entropy(num_classes: int = 10) -> float:
    """The entropy of a uniform histogram over `num_classes` classes."""
    return math.log(num_classes)
