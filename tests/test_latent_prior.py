"""The fitted latent prior: EM recovers a known mixture, and the noise -> code map samples it exactly."""

from __future__ import annotations

import numpy as np
import torch

from vaegan.nn.latent_prior import (
    LatentPrior,
    MixtureFit,
    _covariances,
    _log_gaussians,
    _ndtr,
    _ndtri,
    _products,
    fit_mixture,
)

WEIGHTS = np.array([0.3, 0.7])
MEANS = np.array([[-4.0, 0.0], [3.0, 2.0]])
COVS = np.array([[[1.0, 0.5], [0.5, 1.0]], [[0.5, 0.0], [0.0, 2.0]]])


def _known_mixture(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.choice(2, size=n, p=WEIGHTS)
    noise = rng.standard_normal((n, 2))
    chol = np.linalg.cholesky(COVS)
    return MEANS[labels] + np.einsum("nij,nj->ni", chol[labels], noise)


def test_em_recovers_a_known_mixture() -> None:
    fit = fit_mixture(_known_mixture(6000, seed=1), components=2, seed=0)
    order = np.argsort(fit.means[:, 0])
    np.testing.assert_allclose(fit.weights[order], WEIGHTS, atol=0.02)
    np.testing.assert_allclose(fit.means[order], MEANS, atol=0.1)
    covs = fit.cholesky @ fit.cholesky.transpose(0, 2, 1)
    np.testing.assert_allclose(covs[order], COVS, atol=0.15)


def test_the_em_passes_match_a_direct_computation_per_component() -> None:
    """The GEMM forms of the E and M steps against scipy-free float64 reference formulas: the
    log-density by a triangular solve per component, the covariance by centred weighted sums."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)) * 3.0 + 2.0
    means = rng.normal(size=(4, 5)) * 3.0
    factors = rng.normal(size=(4, 5, 5)) * 0.3
    covs = factors @ factors.transpose(0, 2, 1) + 0.05 * np.eye(5)
    chol = np.linalg.cholesky(covs)
    got = _log_gaussians(x, _products(x), means, chol)
    for k in range(4):
        solved = np.linalg.solve(chol[k], (x - means[k]).T)  # L^-1 (x - mean)
        expected = -0.5 * ((solved**2).sum(0) + np.linalg.slogdet(covs[k])[1] + 5 * np.log(2 * np.pi))
        np.testing.assert_allclose(got[:, k], expected, rtol=1e-10)
    resp = rng.dirichlet(np.ones(4), size=300)
    counts = resp.sum(0)
    weighted_means = (resp.T @ x) / counts[:, None]
    got_cov = _covariances(_products(x), resp, weighted_means, counts, reg=1e-3)
    for k in range(4):
        centred = x - weighted_means[k]
        expected_cov = (centred * resp[:, k, None]).T @ centred / counts[k] + 1e-3 * np.eye(5)
        np.testing.assert_allclose(got_cov[k], expected_cov, rtol=1e-10, atol=1e-12)


def test_covariance_floor_is_added_to_every_component() -> None:
    # Three codes on a line: a component fitted to them alone would have a zero variance across it.
    codes = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]] * 10)
    for floor in (1e-4, 1e-2):
        fit = fit_mixture(codes, components=1, seed=0, reg=floor)
        cov = fit.cholesky[0] @ fit.cholesky[0].T
        np.testing.assert_allclose(cov, [[2.0 / 3.0 + floor, 0.0], [0.0, floor]], atol=1e-12)


def test_ndtri_matches_torch() -> None:
    tails = torch.logspace(-7, -1, 200, dtype=torch.float64)
    u = torch.cat([tails, torch.linspace(0.01, 0.99, 500, dtype=torch.float64), 1 - tails])
    np.testing.assert_allclose(_ndtri(u).numpy(), torch.special.ndtri(u).numpy(), rtol=1e-6, atol=1e-7)


def test_standard_prior_is_the_identity() -> None:
    eps = torch.randn(5, 3)
    assert torch.equal(LatentPrior(3)(eps), eps)


def test_mixture_prior_samples_the_mixture() -> None:
    fit = MixtureFit(weights=WEIGHTS, means=MEANS, cholesky=np.linalg.cholesky(COVS), log_likelihood=0.0)
    prior = LatentPrior.from_fit(fit).double()
    z = prior(torch.randn(200_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    z = z.numpy()
    first = z[:, 0] < -0.5  # the components are ~5 standard deviations apart along x
    assert abs(first.mean() - 0.3) < 0.005
    for mask, k in ((first, 0), (~first, 1)):
        np.testing.assert_allclose(z[mask].mean(0), MEANS[k], atol=0.03)
        np.testing.assert_allclose(np.cov(z[mask].T), COVS[k], atol=0.05)


def test_ndtr_matches_torch() -> None:
    x = torch.linspace(-8, 8, 2001, dtype=torch.float64)
    np.testing.assert_allclose(_ndtr(x).numpy(), torch.special.ndtr(x).numpy(), rtol=2e-7, atol=1e-15)
