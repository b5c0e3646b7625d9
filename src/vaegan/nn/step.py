"""One optimisation step of the VAE/GAN or of the `vae` baseline, with explicit gradient routing.

The decoder decodes the posterior codes z and the prior codes z_p in two separate calls, so that
its BatchNorm layers normalise each batch with its own statistics: in one shared batch the encoder
learns to move the posterior where it dominates the batch statistics, and G(z_p) (which no
reconstruction term constrains) decays to grey blobs (issue 3). The discriminator then sees real,
reconstructed and generated images, the real ones in a call of their own without input gradients
(`train.d_pass: split`; `fused` is one call on all three). Each network gets the gradient of its own
objective through a separate `backward(inputs=...)` pass, all of them done before any optimizer
step, so no parameter is modified while a graph still needs it:

    encoder        beta * L_prior + encoder_llike_weight * L_llike [+ L_pixel]
    decoder        gamma * L_llike [+ L_pixel] + gan_weight * L_GAN(generator, non-saturating)
    discriminator  L_GAN(discriminator)       (BCE: real -> 1, G(z_p) [and x~] -> 0)

With `train.augment` (vaegan.nn.augment) every image D sees is augmented inside the graph, real
and fake alike, a real image and its reconstruction by the same transform.

`backward(inputs=params)` accumulates gradients into those parameters only: the discriminator
never sees L_llike or L_prior, the encoder never sees L_GAN. The `vae` objective has no
discriminator: encoder and decoder learn beta * L_prior + L_pixel.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vaegan.config import TrainConfig
from vaegan.nn import augment as aug
from vaegan.nn.losses import (
    discriminator_bce,
    equilibrium_gates,
    feature_llike,
    generator_bce,
    kl_prior,
    pixel_recon,
)

# Columns of the metric vector a step returns, per objective.
VAEGAN_METRICS = ("loss_prior", "loss_llike", "loss_pixel", "loss_dis", "loss_gan", "d_real", "d_fake")
VAE_METRICS = ("loss_prior", "loss_pixel")


@dataclass(frozen=True)
class LossSettings:
    """The train.* params that define the objectives."""

    objective: str = "vaegan"
    recon_loss: str = "both"
    pixel_loss: str = "bce"
    beta: float = 1.0
    gamma: float = 1e-2
    encoder_llike_weight: float = 0.03
    gan_weight: float = 10.0
    gan_on_recon: bool = True
    equilibrium: bool = False
    equilibrium_target: float = 0.68
    equilibrium_margin: float = 0.35
    d_pass: Literal["split", "fused"] = "split"

    @classmethod
    def from_config(cls, train: TrainConfig) -> LossSettings:
        return cls(
            objective=train.objective,
            recon_loss=train.recon_loss,
            pixel_loss=train.pixel_loss,
            beta=train.beta,
            gamma=train.gamma,
            encoder_llike_weight=train.encoder_llike_weight,
            gan_weight=train.gan_weight,
            gan_on_recon=train.gan_on_recon,
            equilibrium=train.equilibrium,
            equilibrium_target=train.equilibrium_target,
            equilibrium_margin=train.equilibrium_margin,
            d_pass=train.d_pass,
        )

    @property
    def metric_names(self) -> tuple[str, ...]:
        return VAEGAN_METRICS if self.objective == "vaegan" else VAE_METRICS

    @property
    def uses_features(self) -> bool:
        return self.recon_loss in ("feature", "both")

    @property
    def uses_pixels(self) -> bool:
        return self.recon_loss in ("pixel", "both")


@dataclass
class Objectives:
    """The scalar each network minimises, plus the metric vector (detached) of the step.

    The decoder minimises `decoder_recon + decoder_gan_gate * generator_gan`; the gate is 1
    unless equilibrium gating switches the GAN term off for this step.
    """

    encoder: torch.Tensor
    decoder_recon: torch.Tensor
    discriminator: torch.Tensor | None
    metrics: torch.Tensor  # (len(settings.metric_names),) float32
    generator_gan: torch.Tensor | None = None
    bce_real: torch.Tensor | None = None
    bce_fake: torch.Tensor | None = None
    decoder_gan_gate: torch.Tensor | None = None  # 0-d bool

    @property
    def decoder(self) -> torch.Tensor:
        if self.generator_gan is None:
            return self.decoder_recon
        if self.decoder_gan_gate is None:
            return self.decoder_recon + self.generator_gan
        return self.decoder_recon + self.generator_gan * self.decoder_gan_gate.to(self.generator_gan.dtype)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + eps * sigma, with the noise eps ~ N(0, I) drawn by the caller. (B, Z)."""
    return mu + eps * torch.exp(0.5 * logvar)


def vaegan_objectives(
    encoder: nn.Module,
    decoder: nn.Module,
    discriminator: nn.Module,
    x: torch.Tensor,
    eps: torch.Tensor,
    z_prior: torch.Tensor,
    settings: LossSettings,
    augment: aug.AugmentParams | None = None,
) -> Objectives:
    """Forward pass and the three objectives. x (B, 1, 28, 28) in [0, 1]; eps, z_prior (B, Z);
    `augment`: the transforms of D's 3B input images (real, reconstructed, generated), or None."""
    batch = x.shape[0]
    mu, logvar = encoder(x)  # (B, Z) each
    z = reparameterize(mu, logvar, eps)
    recon_logits = decoder(z)  # (B, 1, 28, 28); a separate call: own BatchNorm batch statistics
    logits = torch.cat([recon_logits, decoder(z_prior)])  # (2B, 1, 28, 28): x~, then G(z_p)
    fakes = torch.sigmoid(logits).to(x.dtype)  # x~ and G(z_p)
    d_input = torch.cat([x, fakes])  # (3B, 1, 28, 28)
    if augment is not None:
        d_input = aug.apply(d_input, augment)
    d_logits, d_features = discriminate(discriminator, d_input, batch, settings.d_pass)
    d_logits = d_logits.float()
    real_logits, recon_d_logits, prior_d_logits = (
        d_logits[:batch],
        d_logits[batch : 2 * batch],
        d_logits[2 * batch :],
    )
    features_real, features_recon = d_features[:batch].float(), d_features[batch : 2 * batch].float()

    loss_prior = kl_prior(mu.float(), logvar.float())
    loss_llike = feature_llike(features_recon, features_real)
    loss_pixel = pixel_recon(recon_logits.float(), x.float(), settings.pixel_loss)
    fake_logits = torch.cat([prior_d_logits, recon_d_logits]) if settings.gan_on_recon else prior_d_logits
    bce_real, bce_fake = discriminator_bce(real_logits, fake_logits)
    loss_dis = bce_real + bce_fake
    loss_gan = generator_bce(fake_logits)  # unweighted in the metrics; gan_weight applies to the decoder

    encoder_objective = settings.beta * loss_prior
    decoder_objective = torch.zeros((), device=x.device)
    if settings.uses_features:
        encoder_objective = encoder_objective + settings.encoder_llike_weight * loss_llike
        decoder_objective = decoder_objective + settings.gamma * loss_llike
    if settings.uses_pixels:
        encoder_objective = encoder_objective + loss_pixel
        decoder_objective = decoder_objective + loss_pixel

    with torch.no_grad():
        d_real = torch.sigmoid(real_logits).mean()
        d_fake = torch.sigmoid(prior_d_logits).mean()  # D(G(z_p))
        metrics = torch.stack([loss_prior, loss_llike, loss_pixel, loss_dis, loss_gan, d_real, d_fake])
    return Objectives(
        encoder=encoder_objective,
        decoder_recon=decoder_objective,
        discriminator=loss_dis,
        metrics=metrics.detach().float(),
        generator_gan=settings.gan_weight * loss_gan,
        bce_real=bce_real.detach(),
        bce_fake=bce_fake.detach(),
    )


def discriminate(
    discriminator: nn.Module, d_input: torch.Tensor, batch: int, d_pass: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """D's logits (3B,) and features Dis_l (3B, C, 7, 7) of d_input (3B, 1, 28, 28): real rows first.

    `split` runs D on the real rows in a call of their own, detached: they depend on no parameter
    of the encoder or decoder, so neither network's backward pass has to propagate through them
    (in one fused call the whole 3B batch would carry input gradients)."""
    if d_pass == "fused":
        result: tuple[torch.Tensor, torch.Tensor] = discriminator(d_input)
        return result
    if d_pass != "split":
        raise ValueError(f"d_pass must be 'split' or 'fused', not {d_pass!r}")
    real_logits, real_features = discriminator(d_input[:batch].detach())
    fake_logits, fake_features = discriminator(d_input[batch:])
    return torch.cat([real_logits, fake_logits]), torch.cat([real_features, fake_features])


def vae_objectives(
    encoder: nn.Module, decoder: nn.Module, x: torch.Tensor, eps: torch.Tensor, settings: LossSettings
) -> Objectives:
    """The baseline: beta * L_prior + L_pixel for both encoder and decoder."""
    mu, logvar = encoder(x)
    logits = decoder(reparameterize(mu, logvar, eps))
    loss_prior = kl_prior(mu.float(), logvar.float())
    loss_pixel = pixel_recon(logits.float(), x.float(), settings.pixel_loss)
    objective = settings.beta * loss_prior + loss_pixel
    metrics = torch.stack([loss_prior, loss_pixel]).detach().float()
    return Objectives(encoder=objective, decoder_recon=objective, discriminator=None, metrics=metrics)


def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


def backward_passes(
    objectives: Objectives, encoder: nn.Module, decoder: nn.Module, discriminator: nn.Module | None
) -> None:
    """Accumulate each objective's gradient into its own network's parameters only."""
    if objectives.discriminator is None:  # vae: one objective shared by encoder and decoder
        objectives.encoder.backward(inputs=_params(encoder) + _params(decoder))
        return
    if discriminator is None:
        raise ValueError("the vaegan objective needs the discriminator's parameters")
    objectives.encoder.backward(inputs=_params(encoder), retain_graph=True)
    objectives.decoder.backward(inputs=_params(decoder), retain_graph=True)
    objectives.discriminator.backward(inputs=_params(discriminator))


@dataclass
class StepModules:
    """The (possibly DDP-wrapped or compiled) networks and their optimizers."""

    encoder: nn.Module
    decoder: nn.Module
    discriminator: nn.Module | None
    optimizers: dict[str, torch.optim.Optimizer]


def train_step(
    modules: StepModules,
    x: torch.Tensor,
    eps: torch.Tensor,
    z_prior: torch.Tensor,
    settings: LossSettings,
    autocast: Callable[[], AbstractContextManager[object]],
    average: Callable[[torch.Tensor], torch.Tensor] | None = None,
    augment: aug.AugmentParams | None = None,
) -> torch.Tensor:
    """Forward, separate backward passes, then the optimizer steps. Returns the metric vector.

    No host sync unless equilibrium gating is on (the discriminator's step is then skipped or
    taken, which needs its decision on the host). `average` all-reduces D's BCE values under DDP
    so that every rank takes the same decision.
    """
    for optimizer in modules.optimizers.values():
        optimizer.zero_grad(set_to_none=True)
    train_dis: torch.Tensor | None = None
    with autocast():
        if settings.objective == "vae":
            objectives = vae_objectives(modules.encoder, modules.decoder, x, eps, settings)
        else:
            assert modules.discriminator is not None
            objectives = vaegan_objectives(
                modules.encoder, modules.decoder, modules.discriminator, x, eps, z_prior, settings, augment
            )
    if settings.equilibrium and objectives.discriminator is not None:
        assert objectives.bce_real is not None and objectives.bce_fake is not None
        bce = torch.stack([objectives.bce_real, objectives.bce_fake])
        if average is not None:
            bce = average(bce)
        train_dis, train_dec = equilibrium_gates(
            bce[0], bce[1], settings.equilibrium_target, settings.equilibrium_margin
        )
        objectives.decoder_gan_gate = train_dec
    backward_passes(objectives, modules.encoder, modules.decoder, modules.discriminator)
    modules.optimizers["encoder"].step()
    modules.optimizers["decoder"].step()
    if "discriminator" in modules.optimizers and (train_dis is None or bool(train_dis)):
        modules.optimizers["discriminator"].step()
    return objectives.metrics
