"""Known-answer tests for the evaluation math."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
from scipy.signal import convolve2d

from vaegan.scoring import metrics


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# --- Fréchet distance -------------------------------------------------------------------------


def test_frechet_equal_covariances_is_squared_mean_distance() -> None:
    rng = np.random.default_rng(0)
    d = 16
    sigma = _random_spd(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = float(((mu1 - mu2) ** 2).sum())
    assert metrics.frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_frechet_identical_covariance_identity_exact() -> None:
    mu1, mu2 = np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.0, 0.0])
    eye = np.eye(3)
    assert metrics.frechet_distance(mu1, eye, mu2, eye) == 14.0


def test_frechet_identical_sets_is_zero() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(500, 32)) @ rng.normal(size=(32, 32))
    mu, sigma = metrics.gaussian_statistics(features)
    assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma)


def test_frechet_diagonal_closed_form() -> None:
    # Diagonal covariances commute: FID = |mu1-mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    a = np.array([1.0, 4.0, 9.0, 0.25])
    b = np.array([4.0, 1.0, 9.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 0.0, 2.0]), np.array([1.0, 1.0, 0.0, 0.0])
    expected = 1.0 + 4.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0 + (0.5 - 1) ** 2
    got = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)
    assert expected == 7.25


def test_frechet_matches_independent_sqrtm_computation() -> None:
    rng = np.random.default_rng(2)
    d = 64
    x = rng.normal(size=(2000, d)) @ rng.normal(size=(d, d))
    y = 0.5 + rng.normal(size=(1500, d)) @ rng.normal(size=(d, d)) * 0.8
    mu1, s1 = metrics.gaussian_statistics(x)
    mu2, s2 = metrics.gaussian_statistics(y)
    # Independent route: the symmetric form tr(sqrt(sqrt(s1) s2 sqrt(s1))) with scipy's sqrtm.
    root1 = np.real(scipy.linalg.sqrtm(s1))
    inner = np.real(scipy.linalg.sqrtm(root1 @ s2 @ root1))
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(inner))
    got = metrics.frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(expected, rel=1e-6)


def test_frechet_is_float_and_rejects_bad_shapes() -> None:
    eye = np.eye(2, dtype=np.float32)
    value = metrics.frechet_distance(np.zeros(2, np.float32), eye, np.ones(2, np.float32), eye)
    assert type(value) is float and value == 2.0
    with pytest.raises(ValueError, match="covariances"):
        metrics.frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


def test_gaussian_statistics_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, 5)).astype(np.float32)
    mu, sigma = metrics.gaussian_statistics(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)


# --- precision / recall -----------------------------------------------------------------------


def test_knn_radii_on_a_line() -> None:
    points = np.array([[0.0], [1.0], [3.0], [6.0]])
    # k=1: nearest other point; k=2: second nearest; squared distances.
    np.testing.assert_array_equal(metrics.knn_radii(points, 1), [1.0, 1.0, 4.0, 9.0])
    np.testing.assert_array_equal(metrics.knn_radii(points, 2), [9.0, 4.0, 9.0, 25.0])


def test_precision_recall_known_answer() -> None:
    # Real: 4 points on a unit square (every k=3 radius is the diagonal, sqrt 2).
    real = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # Fake: two points inside the real manifold, two far away; and fake radii (k=3) are large
    # because of the outliers, so its manifold covers the real set except far corners.
    fake = np.array([[0.5, 0.5], [1.2, 1.2], [10.0, 10.0], [10.0, 11.0]])
    precision, recall = metrics.precision_recall(real, fake, k=3)
    # (0.5,0.5): dist^2 0.5 <= 2; (1.2,1.2): dist^2 to (1,1) is 0.08 <= 2; the others are outside.
    assert precision == 0.5
    # Fake radii^2 (k=3): (0.5,.5)->(10,11): 200.5; (1.2,1.2)->(10,11): 173.48;
    # (10,10)->(0.5,.5): 180.5; (10,11)->(0.5,.5): 200.5. Every real point is covered.
    assert recall == 1.0


def test_precision_recall_disjoint_and_identical_sets() -> None:
    rng = np.random.default_rng(4)
    real = rng.normal(size=(300, 8))
    assert metrics.precision_recall(real, real + 100.0, k=3) == (0.0, 0.0)
    assert metrics.precision_recall(real, real.copy(), k=3) == (1.0, 1.0)


def test_precision_recall_mode_dropping_lowers_recall_only() -> None:
    # Real: two well-separated clusters; fake reproduces only the first one (jittered far less than
    # any k-NN radius): every fake is real-looking (precision 1) but half the real data is missed.
    rng = np.random.default_rng(5)
    real = np.concatenate([rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 50.0])
    fake = real[:200] + rng.normal(scale=1e-6, size=(200, 2))
    precision, recall = metrics.precision_recall(real, fake, k=3, chunk=64)
    assert precision == 1.0
    assert recall == 0.5


# --- reconstruction metrics -------------------------------------------------------------------


def test_psnr_known_answer() -> None:
    ref = np.zeros((2, 28, 28))
    test = ref.copy()
    test[0] += 0.1  # MSE 0.01 -> 20 dB
    # second image identical -> capped at 100 dB
    assert metrics.psnr(ref, test) == pytest.approx((20.0 + 100.0) / 2, rel=1e-12)


def test_ssim_identical_and_constant_images() -> None:
    rng = np.random.default_rng(6)
    images = rng.uniform(size=(3, 28, 28))
    assert metrics.ssim(images, images) == pytest.approx(1.0, abs=1e-12)
    # Two constant images a and b: SSIM = (2ab + C1) / (a^2 + b^2 + C1) (contrast/structure terms = 1).
    a, b = 0.2, 0.7
    c1 = (0.01 * 1.0) ** 2
    got = metrics.ssim(np.full((1, 28, 28), a), np.full((1, 28, 28), b))
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)


def test_ssim_matches_direct_2d_convolution() -> None:
    rng = np.random.default_rng(7)
    x = rng.uniform(size=(4, 28, 28))
    y = np.clip(x + rng.normal(scale=0.2, size=x.shape), 0, 1)
    g = metrics.gaussian_window()
    w = np.outer(g, g)
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for xi, yi in zip(x, y, strict=True):
        mx, my = convolve2d(xi, w, mode="valid"), convolve2d(yi, w, mode="valid")
        vx = convolve2d(xi * xi, w, mode="valid") - mx**2
        vy = convolve2d(yi * yi, w, mode="valid") - my**2
        cxy = convolve2d(xi * yi, w, mode="valid") - mx * my
        smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        assert smap.shape == (18, 18)
        values.append(smap.mean())
    assert metrics.ssim(x, y) == pytest.approx(float(np.mean(values)), rel=1e-10)
    assert metrics.ssim(x, y) < 0.9


def test_gaussian_window_sigma() -> None:
    g = metrics.gaussian_window(11, 1.5)
    assert g.sum() == pytest.approx(1.0)
    assert g[5] / g[6] == pytest.approx(math.exp(1 / (2 * 1.5**2)))


def test_gaussian_kl_known_values() -> None:
    mu = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    logvar = np.array([[0.0, 0.0], [0.0, 0.0], [math.log(2.0), 0.0]])
    np.testing.assert_allclose(metrics.gaussian_kl(mu, logvar), [0.0, 0.5, 0.5 * (1 - math.log(2.0))])


def test_class_entropy() -> None:
    assert metrics.class_entropy(np.arange(10).repeat(7)) == pytest.approx(math.log(10))
    assert metrics.class_entropy(np.full(50, 3)) == 0.0
    assert metrics.class_entropy(np.array([0, 0, 1, 1])) == pytest.approx(math.log(2))
    assert metrics.max_class_entropy() == pytest.approx(2.302585, rel=1e-6)
