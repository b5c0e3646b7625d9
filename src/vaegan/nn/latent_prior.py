"""The latent prior that generation draws from: N(0, I), or a Gaussian mixture fitted to the
encoder means of the training split after training (the aggregate posterior).

A VAE's decoder only learns to draw from where the encoder puts codes; N(0, I) has holes there, and
prior samples from the holes are the malformed digits. Sampling from a density fitted to the codes
(Larsen et al.'s own MNIST script fits a full-covariance Gaussian; Ghosh et al. 2020 a 10-component
mixture) avoids them at the cost of seconds after training.

`LatentPrior` maps standard-normal noise eps (B, Z) to codes z (B, Z) with elementwise ops, a gather
and a matmul only, so that it exports to ONNX inside the generator graph (noise in, image out): the
first noise coordinate picks the component (u = Phi(eps_0) against the cumulative weights) and is
then re-used, rescaled to the chosen component's interval and mapped back through Phi^-1, as that
component's first coordinate: z = mean_k + L_k eps'. The rescaled u is uniform and independent of k,
so z follows the mixture exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from vaegan.errors import ConfigError

if TYPE_CHECKING:
    from vaegan.config import TrainConfig

PRIORS = ("standard", "gaussian", "mixture")


@dataclass(frozen=True)
class MixtureFit:
    """A fitted Gaussian mixture: weights (K,), means (K, Z), Cholesky factors (K, Z, Z)."""

    weights: np.ndarray
    means: np.ndarray
    cholesky: np.ndarray
    log_likelihood: float  # mean per code at the end of EM

    @property
    def components(self) -> int:
        return len(self.weights)


def _products(x: np.ndarray) -> np.ndarray:
    """x_i x_i^T of every code as its upper triangle: (N, Z(Z+1)/2)."""
    rows, cols = np.triu_indices(x.shape[1])
    return x[:, rows] * x[:, cols]


def _log_gaussians(x: np.ndarray, products: np.ndarray, means: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """log N(x_i | mean_k, L_k L_k^T) for every code and component: (N, K). The Mahalanobis term is
    x^T P x - 2 x^T P m + m^T P m with P = (L L^T)^-1, its first part one matrix product of the
    codes' outer products (`products`) with every P: a GEMM, not a solve per component."""
    dim = x.shape[1]
    inverse = np.linalg.inv(chol)  # (K, Z, Z): L_k^-1
    precision = inverse.transpose(0, 2, 1) @ inverse  # (K, Z, Z)
    rows, cols = np.triu_indices(dim)
    packed = precision[:, rows, cols] * np.where(rows == cols, 1.0, 2.0)  # both off-diagonal halves
    precision_means = np.einsum("kij,kj->ki", precision, means)  # (K, Z)
    mahalanobis = (
        products @ packed.T - 2.0 * (x @ precision_means.T) + np.einsum("ki,ki->k", means, precision_means)
    )
    log_det = 2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(1)  # (K,)
    return -0.5 * (mahalanobis + log_det + dim * math.log(2 * math.pi))


def _covariances(
    products: np.ndarray, resp: np.ndarray, means: np.ndarray, counts: np.ndarray, reg: float
) -> np.ndarray:
    """The responsibility-weighted covariance of every component plus `reg` on the diagonal:
    E_k[x x^T] - mean_k mean_k^T from one matrix product of the responsibilities with `products`."""
    components, dim = means.shape
    rows, cols = np.triu_indices(dim)
    second = np.empty((components, dim, dim))
    packed = (resp.T @ products) / counts[:, None]  # (K, Z(Z+1)/2)
    second[:, rows, cols] = packed
    second[:, cols, rows] = packed
    return second - means[:, :, None] * means[:, None, :] + reg * np.eye(dim)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: k distinct codes, each drawn proportionally to its squared distance to the
    nearest centre drawn before it (kept up to date, not recomputed over every centre)."""
    centres = [x[rng.integers(len(x))]]
    dist = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        centres.append(x[rng.choice(len(x), p=dist / dist.sum())])
        dist = np.minimum(dist, ((x - centres[-1]) ** 2).sum(1))
    return np.stack(centres)


def fit_mixture(
    codes: np.ndarray, components: int, seed: int = 0, iterations: int = 100, reg: float = 1e-4
) -> MixtureFit:
    """EM for a full-covariance Gaussian mixture on codes (N, Z) (float64 inside), seeded init."""
    x = np.asarray(codes, dtype=np.float64)
    n = len(x)
    if components < 1 or components > n:
        raise ValueError(f"{components} mixture components for {n} codes")
    rng = np.random.default_rng(seed)
    means = _kmeans_pp(x, components, rng)
    labels = np.argmin([((x - c) ** 2).sum(1) for c in means], axis=0)
    resp = np.eye(components)[labels]  # (N, K) hard assignment to start
    products = _products(x)  # (N, Z(Z+1)/2): 37 MiB for 9,000 codes of 32 dimensions
    previous = -np.inf
    log_lik = -np.inf
    for _ in range(iterations):
        counts = resp.sum(0) + 1e-10  # (K,)
        weights = counts / n
        means = (resp.T @ x) / counts[:, None]  # (K, Z)
        chol = np.linalg.cholesky(_covariances(products, resp, means, counts, reg))  # (K, Z, Z)
        log_p = _log_gaussians(x, products, means, chol) + np.log(weights)  # (N, K)
        top = log_p.max(1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(log_p - top).sum(1))  # (N,)
        resp = np.exp(log_p - log_norm[:, None])
        log_lik = float(log_norm.mean())
        if log_lik - previous < 1e-6 * abs(log_lik):
            break
        previous = log_lik
    return MixtureFit(weights=weights, means=means, cholesky=chol, log_likelihood=log_lik)


def _constant(value: float | tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """`value` as a tensor of `like`'s dtype: the ONNX exporter stores bare Python floats as float32
    constants, which costs float64 code 1e-8 of relative precision (and parity with torch)."""
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _horner(coeffs: tuple[float, ...], t: torch.Tensor) -> torch.Tensor:
    """The polynomial with `coeffs` (highest power first) at t, in t's dtype."""
    c = _constant(coeffs, t)
    out = torch.zeros_like(t) + c[0]
    for i in range(1, len(coeffs)):
        out = out * t + c[i]
    return out


def _ndtri(u: torch.Tensor) -> torch.Tensor:
    """Phi^-1(u) for u in (0, 1): Acklam's rational approximation (relative error < 1.2e-9), written
    in elementwise ops so that it exports to ONNX (which has no erfinv)."""
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
         1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)  # fmt: skip
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
         6.680131188771972e01, -1.328068155288572e01)  # fmt: skip
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
         -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)  # fmt: skip
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)

    low = 0.02425
    q = u - 0.5
    r = q * q
    central = q * _horner(a, r) / (_horner(b, r) * r + 1.0)
    tail_u = torch.minimum(u, 1.0 - u)
    s = torch.sqrt(-2.0 * torch.log(tail_u))
    tail = _horner(c, s) / (_horner(d, s) * s + 1.0)  # Phi^-1(tail_u), negative
    tail = torch.where(u > 0.5, -tail, tail)
    return torch.where(tail_u < low, tail, central)


def _ndtr(x: torch.Tensor) -> torch.Tensor:
    """Phi(x) from erfc's Chebyshev fit (Numerical Recipes `erfcc`, relative error < 1.2e-7), in
    elementwise ops: ONNX Runtime has no float64 Erf kernel, and torch and the exported graph must
    compute the same function."""
    z = torch.abs(x) * _constant(1.0 / math.sqrt(2.0), x)
    t = 1.0 / (1.0 + 0.5 * z)
    coeffs = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807,
              -0.18628806, 0.09678418, 0.37409196, 1.00002368, -1.26551223)  # fmt: skip
    tail = 0.5 * t * torch.exp(-z * z + _horner(coeffs, t))  # Phi(-|x|)
    return torch.where(x >= 0, 1.0 - tail, tail)


class LatentPrior(nn.Module):
    """noise eps (B, Z) ~ N(0, I) -> codes z (B, Z): identity for `standard`, else the fitted mixture
    (a `gaussian` prior is a mixture of one). Buffers only: it is stored with the decoder's weights."""

    boundaries: torch.Tensor  # (K - 1,) cumulative weights without the final 1
    weights: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, Z)
    cholesky: torch.Tensor  # (K, Z, Z)

    def __init__(self, latent_dim: int, components: int = 0) -> None:
        super().__init__()
        self.components = components  # 0: standard; the buffers' shapes depend on it
        k = max(components, 1)
        self.register_buffer("boundaries", torch.zeros(k - 1))
        self.register_buffer("weights", torch.ones(k))
        self.register_buffer("means", torch.zeros(k, latent_dim))
        self.register_buffer("cholesky", torch.eye(latent_dim).repeat(k, 1, 1))

    @property
    def kind(self) -> str:
        """standard (N(0, I)), gaussian (one component) or mixture."""
        return PRIORS[min(self.components, 2)]

    @classmethod
    def from_fit(cls, fit: MixtureFit) -> LatentPrior:
        prior = cls(fit.means.shape[1], fit.components)
        weights = fit.weights / fit.weights.sum()
        prior.weights.copy_(torch.from_numpy(weights))
        prior.boundaries.copy_(torch.from_numpy(np.cumsum(weights)[:-1]))
        prior.means.copy_(torch.from_numpy(fit.means))
        prior.cholesky.copy_(torch.from_numpy(fit.cholesky))
        return prior

    def forward(self, eps: torch.Tensor) -> torch.Tensor:
        if self.components == 0:
            return eps
        # float64 inside: the rescaling divides by a component's weight and Phi^-1 is steep in the
        # tails, so float32 rounding differences between runtimes grow past the export's parity
        # tolerance, or flip a draw to the neighbouring component. MPS has no float64.
        dtype = torch.float32 if eps.device.type == "mps" else torch.float64
        eps_u = 1e-7 if dtype == torch.float32 else 1e-12  # keeps u' inside (0, 1) before Phi^-1
        e = eps.to(dtype)
        u = _ndtr(e[:, :1])  # (B, 1) uniform
        boundaries, weights = self.boundaries.to(dtype), self.weights.to(dtype)
        k = (u > boundaries).sum(1)  # (B,) component index
        lower = torch.cat([torch.zeros(1, dtype=dtype, device=u.device), boundaries])[k]
        margin = _constant(eps_u, u)
        rescaled = torch.clamp((u[:, 0] - lower) / weights[k], margin, 1.0 - margin)  # (B,) uniform
        eps_k = torch.cat([_ndtri(rescaled)[:, None], e[:, 1:]], dim=1)  # (B, Z) ~ N(0, I), indep. of k
        z = self.means.to(dtype)[k] + torch.bmm(self.cholesky.to(dtype)[k], eps_k[:, :, None])[:, :, 0]
        return z.to(eps.dtype)


@torch.no_grad()
def encoder_means(encoder: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """The encoder's posterior means (N, Z) float64 of images x (N, 1, 28, 28) in [0, 1], in eval mode."""
    was_training = encoder.training
    encoder.eval()
    parts = [
        encoder(x[start : start + batch_size])[0].double().cpu().numpy()
        for start in range(0, len(x), batch_size)
    ]
    encoder.train(was_training)
    return np.concatenate(parts)


def check_prior_components(train: TrainConfig, num_images: int) -> None:
    """ConfigError when `train.prior` cannot be fitted to the codes of `num_images` training images
    (a mixture needs at least one code per component): checked before training, not after it."""
    if train.prior == "mixture" and train.prior_components > num_images:
        raise ConfigError(
            f"train.prior_components: {train.prior_components} mixture components need at least as many "
            f"training images, this run has {num_images} (the prepared train split, "
            f"train.limit_train_images={train.limit_train_images})"
        )


def fit_trained_prior(
    encoder: nn.Module, x: torch.Tensor, train: TrainConfig
) -> tuple[LatentPrior, float | None, int]:
    """(the prior `train.prior` fitted to the encoder means of images x (N, 1, 28, 28), its mean
    log-likelihood per code or None, N): what `vaegan train` stores with the model."""
    codes = encoder_means(encoder, x)
    prior, log_likelihood = fit_prior(
        codes, train.prior, train.prior_components, train.seed, train.prior_covariance_floor
    )
    return prior, log_likelihood, len(codes)


def fit_prior(
    codes: np.ndarray, kind: str, components: int, seed: int, covariance_floor: float = 1e-4
) -> tuple[LatentPrior, float | None]:
    """(the prior of `kind` fitted to codes (N, Z), its mean log-likelihood per code or None);
    `covariance_floor` is added to each component's covariance diagonal."""
    if kind not in PRIORS:
        raise ValueError(f"unknown prior {kind!r}; expected one of {PRIORS}")
    if kind == "standard":
        return LatentPrior(codes.shape[1]), None
    fit = fit_mixture(codes, 1 if kind == "gaussian" else components, seed=seed, reg=covariance_floor)
    return LatentPrior.from_fit(fit), fit.log_likelihood
