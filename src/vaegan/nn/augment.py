"""Differentiable augmentation of the discriminator's input (DiffAugment, Zhao et al. 2020).

The same random transform family is applied to every image the discriminator sees, real and
generated alike, inside the graph (so the generator's gradient flows through it): D cannot
memorise the 9,000 training images, and what it learns stays about digits, not about their exact
pixel positions. `train.augment` picks the policy:

- `none`: D sees the images as they are (the default; the step draws no augmentation noise).
- `translation`: each image shifted by up to `MAX_SHIFT` pixels in each direction, zero-filled.
- `translation_cutout`: the shift, then a `CUTOUT` x `CUTOUT` square of zeros at a random place.

A real image and its reconstruction get the same transform (`pair_params`), so the feature
reconstruction term L_llike still compares aligned Dis_l features; prior samples get their own.
The parameters are drawn by the caller from its seeded generator (the loop's per-step noise), so
training stays reproducible and resumable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

POLICIES = ("none", "translation", "translation_cutout")
MAX_SHIFT = 3  # pixels: 1/8 of the image side, DiffAugment's translation ratio
CUTOUT = 14  # pixels: half the image side, DiffAugment's cutout ratio


@dataclass(frozen=True)
class AugmentParams:
    """Per-image transform parameters: shifts (N, 2) in [-MAX_SHIFT, MAX_SHIFT] (rows, columns)
    and cutout centres (N, 2) in [0, 28), or None when the policy has no cutout."""

    shifts: torch.Tensor
    cutout_centres: torch.Tensor | None

    def repeat_pairs(self, prior: AugmentParams) -> AugmentParams:
        """Parameters of [real, reconstruction, prior sample]: the pair (self) twice, then `prior`."""
        centres = None
        if self.cutout_centres is not None and prior.cutout_centres is not None:
            centres = torch.cat([self.cutout_centres, self.cutout_centres, prior.cutout_centres])
        return AugmentParams(torch.cat([self.shifts, self.shifts, prior.shifts]), centres)


def draw(
    policy: str, count: int, size: int, generator: torch.Generator, device: torch.device
) -> AugmentParams:
    """Random parameters for `count` images of side `size` under `policy` (not `none`)."""
    if policy not in POLICIES[1:]:
        raise ValueError(f"unknown augmentation policy {policy!r}; expected one of {POLICIES[1:]}")
    shifts = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (count, 2), generator=generator, device=device)
    centres = None
    if policy == "translation_cutout":
        centres = torch.randint(0, size, (count, 2), generator=generator, device=device)
    return AugmentParams(shifts, centres)


def translate(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W) with image n moved by shifts[n] = (rows, columns), zeros shifted in."""
    n, _, h, w = x.shape
    pad = MAX_SHIFT
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = torch.arange(h, device=x.device)[None, :] + pad - shifts[:, :1]  # (N, H)
    cols = torch.arange(w, device=x.device)[None, :] + pad - shifts[:, 1:]  # (N, W)
    index = torch.arange(n, device=x.device)[:, None, None]
    # (N, H, W, C) gathered from the padded images, then back to channels first.
    return padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W) with a CUTOUT x CUTOUT square of zeros centred at centres[n] (clipped at edges)."""
    _, _, h, w = x.shape
    half = CUTOUT // 2
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    inside_rows = (rows - centres[:, :1]).abs() < half  # (N, H)
    inside_cols = (cols - centres[:, 1:]).abs() < half  # (N, W)
    keep = ~(inside_rows[:, :, None] & inside_cols[:, None, :])  # (N, H, W)
    return x * keep[:, None].to(x.dtype)


def apply(x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """The transform of `params` applied to x (N, C, H, W), differentiable in x."""
    x = translate(x, params.shifts)
    if params.cutout_centres is not None:
        x = cutout(x, params.cutout_centres)
    return x
