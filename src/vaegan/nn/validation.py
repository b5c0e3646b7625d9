"""The epoch end's validation (`Validation`): the negative ELBO of the validation images and the
sample and reconstruction grids, from codes fixed by the seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vaegan.nn.batches import images_to_device
from vaegan.nn.networks import VAEGAN
from vaegan.nn.step import reparameterize

GRID_SAMPLES = 64
GRID_RECONSTRUCTIONS = 32
VAL_IMAGES = 1000


@dataclass
class Validation:
    """The validation images and the fixed codes of the epoch's sample and reconstruction grids."""

    images: torch.Tensor  # (V, 1, 28, 28)
    sample_z: torch.Tensor  # (GRID_SAMPLES, Z)
    recon_eps: torch.Tensor  # (V, Z)

    @classmethod
    def on_device(cls, images: np.ndarray, seed: int, latent_dim: int, device: torch.device) -> Validation:
        val = images_to_device(images[:VAL_IMAGES], device, False)
        grid_gen = torch.Generator(device="cpu").manual_seed(seed)
        sample_z = torch.randn(GRID_SAMPLES, latent_dim, generator=grid_gen).to(device)
        recon_eps = torch.randn(val.shape[0], latent_dim, generator=grid_gen).to(device)
        return cls(val, sample_z, recon_eps)

    @torch.no_grad()
    def evaluate(self, model: VAEGAN) -> tuple[float, dict[str, np.ndarray]]:
        """(negative ELBO in nats per image (Bernoulli decoder), sample/reconstruction grids)."""
        val = self.images
        was_training = model.training
        model.eval()
        total = torch.zeros((), device=val.device, dtype=torch.float64)
        for start in range(0, val.shape[0], 500):
            x = val[start : start + 500]
            mu, logvar = model.encoder(x)
            logits = model.decoder(reparameterize(mu, logvar, self.recon_eps[start : start + 500]))
            bce = nn.functional.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="sum")
            kl = 0.5 * (mu.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).sum()
            total += (bce + kl).double()
        val_loss = float(total.item()) / val.shape[0]
        samples = model.decoder.decode(self.sample_z).float().cpu().numpy()[:, 0]  # (64, 28, 28)
        originals = val[:GRID_RECONSTRUCTIONS]
        mu, _ = model.encoder(originals)
        recons = model.decoder.decode(mu).float().cpu().numpy()[:, 0]
        originals_np = originals.float().cpu().numpy()[:, 0]
        # Rows of 8: originals, then their reconstructions (from the posterior mean).
        rows = []
        for start in range(0, GRID_RECONSTRUCTIONS, 8):
            rows += [originals_np[start : start + 8], recons[start : start + 8]]
        model.train(was_training)
        return val_loss, {"samples": samples, "reconstructions": np.concatenate(rows)}
