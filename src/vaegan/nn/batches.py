"""The training images on the device and the batch of each step (`Batches`): data order and noise
are functions of (train.seed, epoch, step, rank) alone, so a resumed run draws what the
interrupted one would have drawn."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vaegan.nn import augment as aug
from vaegan.nn.plan import Plan


def images_to_device(images: np.ndarray, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1] on `device`, one tensor."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).unsqueeze(1).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _seed_for(*parts: int) -> int:
    """A 63-bit seed mixing integers (seed, epoch/step, rank) without collisions in practice."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part + 0x632BE59BD9B4E019 + (value << 6) + (value >> 2))) & ((1 << 63) - 1)
    return value


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, aug.AugmentParams | None]


@dataclass
class Batches:
    """The training images on the device, drawn in the order (seed, epoch) fixes, with the noise
    (seed, step, rank) fixes."""

    images: torch.Tensor  # (N, 1, 28, 28)
    plan: Plan
    latent_dim: int
    device: torch.device
    perm_gen: torch.Generator
    noise_gen: torch.Generator
    perm: torch.Tensor | None = None  # this epoch's order of the images

    @classmethod
    def on_device(cls, images: np.ndarray, plan: Plan, latent_dim: int, device: torch.device) -> Batches:
        x_all = images_to_device(images, device, plan.channels_last)
        generators = torch.Generator(device=device), torch.Generator(device=device)
        return cls(x_all, plan, latent_dim, device, *generators)

    def batch(self, step: int) -> Batch:
        """(x (B, 1, 28, 28), eps (B, Z), z_prior (B, Z), D's augmentation or None) of this rank
        at `step`; the augmentation is drawn after the noise, so `train.augment: none` draws the
        same noise as before it existed."""
        plan, device = self.plan, self.device
        seed, batch = plan.seed, plan.batch_size
        epoch, position = divmod(step, plan.per_epoch)
        if position == 0 or self.perm is None:
            self.perm_gen.manual_seed(_seed_for(seed, epoch))
            self.perm = torch.randperm(len(self.images), generator=self.perm_gen, device=device)
        start = (position * plan.world_size + plan.rank) * batch
        x = self.images[self.perm[start : start + batch]]  # indexed on the device
        self.noise_gen.manual_seed(_seed_for(seed, step, plan.rank))
        noise = torch.randn(2, batch, self.latent_dim, generator=self.noise_gen, device=device)
        if plan.augment == "none":
            return x, noise[0], noise[1], None
        size = x.shape[-1]
        pairs = aug.draw(plan.augment, batch, size, self.noise_gen, device)
        prior = aug.draw(plan.augment, batch, size, self.noise_gen, device)
        return x, noise[0], noise[1], pairs.repeat_pairs(prior)
