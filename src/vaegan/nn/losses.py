"""Loss terms of the VAE/GAN (Larsen et al. 2016, "Autoencoding beyond pixels using a learned
similarity metric"), written as the authors' code computes them. Each returns a scalar: the sum over
an image's dimensions, averaged over the batch.

- `kl_prior`:        L_prior = KL(q(z|x) || N(0, I)), summed over latent dimensions
- `feature_llike`:   L_llike = 1/2 sum (Dis_l(x~) - Dis_l(x))^2 (a unit-variance Gaussian in Dis_l space)
- `pixel_recon`:     the pixel-space term of the Keras notebook (Bernoulli BCE or 1/2 squared error)
- `discriminator_bce`, `generator_bce`: L_GAN on logits; the generator's is the non-saturating form
- `equilibrium_gates`: which of D and G the authors' code lets learn from L_GAN this step

Which network learns from which term is decided in `vaegan.nn.step`, not here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_prior(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dims, mean over the batch. mu, logvar: (B, Z)."""
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)  # (B, Z)
    return kl.sum(dim=1).mean()


def feature_llike(features_recon: torch.Tensor, features_real: torch.Tensor) -> torch.Tensor:
    """1/2 sum of squared Dis_l differences per image, mean over the batch. Features: (B, C, H, W)."""
    diff = (features_recon - features_real).flatten(1)  # (B, C*H*W)
    return 0.5 * diff.pow(2).sum(dim=1).mean()


def pixel_recon(logits: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Pixel reconstruction loss per image (summed over pixels), mean over the batch.

    `kind="bce"`: Bernoulli negative log-likelihood of x in [0, 1] given decoder logits;
    `kind="mse"`: 1/2 squared error between sigmoid(logits) and x (a unit-variance Gaussian).
    """
    if kind == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif kind == "mse":
        per_pixel = 0.5 * (torch.sigmoid(logits) - x).pow(2)
    else:
        raise ValueError(f"unknown pixel loss {kind!r} (expected 'bce' or 'mse')")
    return per_pixel.flatten(1).sum(dim=1).mean()


def discriminator_bce(
    real_logits: torch.Tensor, fake_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE of D on real images labelled 1, BCE of D on fakes labelled 0), each a batch mean."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real, fake


def generator_bce(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: -log D(G(z)), a batch mean."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def equilibrium_gates(
    bce_real: torch.Tensor, bce_fake: torch.Tensor, target: float, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_discriminator, train_decoder) as 0-d bool tensors, from D's BCE on real and fake images.

    As in the authors' code: D stops learning when it is too good (a BCE below target - margin),
    G stops learning from L_GAN when D is too bad (a BCE above target + margin); when both would
    stop, both learn. Computed on the device, without a host sync.
    """
    train_dis = (bce_real >= target - margin) & (bce_fake >= target - margin)
    train_dec = (bce_real <= target + margin) & (bce_fake <= target + margin)
    neither = ~(train_dis | train_dec)
    return train_dis | neither, train_dec | neither
