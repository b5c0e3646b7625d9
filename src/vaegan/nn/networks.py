"""The three networks of the VAE/GAN (Larsen et al. 2016), sized for 28x28x1 images.

- `Encoder`  q(z|x): x (B, 1, 28, 28) in [0, 1] -> (mu, logvar), each (B, latent_dim)
- `Decoder`  G(z):   z (B, latent_dim) -> logits (B, 1, 28, 28); `decode` applies the sigmoid
- `Discriminator` D(x): x -> (logit (B,), features Dis_l (B, C, 7, 7))
- `LatentPrior` (vaegan.nn.latent_prior): noise (B, Z) -> codes z; N(0, I) while training, then the
  prior fitted to the encoder means that generation draws from (`VAEGAN.generate`)

Every size lives in `ModelArgs`, which is saved inside each checkpoint so that evaluation and
export rebuild exactly the trained model. Strided transposed convolutions use k=4, s=2, p=1
(28 -> 14 -> 7 and back) with no output_padding, which exports cleanly to ONNX.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from vaegan.artifacts.stored_args import StoredArgs
from vaegan.nn.latent_prior import LatentPrior

IMAGE_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class ModelArgs(StoredArgs):
    """Everything needed to rebuild the networks."""

    latent_dim: int
    channels: tuple[int, int]  # conv widths at 14x14 and 7x7
    hidden: int  # dense layer between the conv trunk and (mu, logvar); 0 = none
    batch_norm: bool
    dis_channels: tuple[int, int, int]  # discriminator widths at 14x14, 7x7 and Dis_l (7x7)
    dis_hidden: int  # dense layer after Dis_l in the discriminator
    # Spectral normalisation of every discriminator layer (Miyato et al. 2018), and then no
    # BatchNorm in the discriminator: its batch mixes real, reconstructed and generated images.
    dis_spectral_norm: bool = False
    # Residual blocks (two 3x3 convolutions and a skip) at each of the decoder's resolutions, 7x7
    # and 14x14: depth for the generator without changing its input, output or the other networks.
    decoder_blocks: int = 0
    # The same in the discriminator's trunk (14x14 and 7x7, before Dis_l), with its LeakyReLU.
    discriminator_blocks: int = 0


PRESETS: dict[str, ModelArgs] = {
    # The Keras VAE notebook: Conv2D 32 and 64 (stride 2), Dense 16, latent 2, no BatchNorm.
    "seed": ModelArgs(
        latent_dim=2,
        channels=(32, 64),
        hidden=16,
        batch_norm=False,
        dis_channels=(32, 64, 64),
        dis_hidden=64,
    ),
    # The stronger model: wider trunk, BatchNorm, 32 latent dimensions.
    "default": ModelArgs(
        latent_dim=32,
        channels=(64, 128),
        hidden=512,
        batch_norm=True,
        dis_channels=(64, 128, 128),
        dis_hidden=512,
    ),
}


def model_args_for(
    preset: str,
    latent_dim: int | None = None,
    dis_spectral_norm: bool = False,
    decoder_blocks: int = 0,
    discriminator_blocks: int = 0,
) -> ModelArgs:
    """The preset's args, with `latent_dim` replaced when given, the discriminator's norm and the
    residual blocks of the decoder and the discriminator."""
    args = dataclasses.replace(
        PRESETS[preset],
        dis_spectral_norm=dis_spectral_norm,
        decoder_blocks=decoder_blocks,
        discriminator_blocks=discriminator_blocks,
    )
    return dataclasses.replace(args, latent_dim=latent_dim) if latent_dim is not None else args


def _norm(channels: int, enabled: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if enabled else nn.Identity()


class ResidualBlock(nn.Module):
    """x + conv(act(norm(conv(x)))) followed by norm and the activation, at constant size (He et al.
    2016). With the DCGAN initialisation the branch starts near zero, so the block starts near the
    identity and a deeper decoder starts where the shallow one does."""

    def __init__(self, channels: int, batch_norm: bool, slope: float = 0.0) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels, batch_norm),
            _relu(slope),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.out = nn.Sequential(_norm(channels, batch_norm), _relu(slope))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x + self.branch(x))


def _relu(slope: float) -> nn.Module:
    return nn.LeakyReLU(slope) if slope else nn.ReLU()


def _residual_blocks(count: int, channels: int, batch_norm: bool, slope: float = 0.0) -> list[nn.Module]:
    return [ResidualBlock(channels, batch_norm, slope) for _ in range(count)]


class Encoder(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        c1, c2 = args.channels
        self.trunk = nn.Sequential(
            nn.Conv2d(1, c1, 4, stride=2, padding=1),  # (B, c1, 14, 14)
            _norm(c1, args.batch_norm),
            nn.LeakyReLU(0.2) if args.batch_norm else nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),  # (B, c2, 7, 7)
            _norm(c2, args.batch_norm),
            nn.LeakyReLU(0.2) if args.batch_norm else nn.ReLU(),
            nn.Flatten(),
        )
        width = c2 * 7 * 7
        if args.hidden:
            self.hidden: nn.Module = nn.Sequential(nn.Linear(width, args.hidden), nn.ReLU())
            width = args.hidden
        else:
            self.hidden = nn.Identity()
        self.mu = nn.Linear(width, args.latent_dim)
        self.logvar = nn.Linear(width, args.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(self.trunk(x))
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        c1, c2 = args.channels
        self.c2 = c2
        self.project = nn.Sequential(
            nn.Linear(args.latent_dim, c2 * 7 * 7),
            nn.BatchNorm1d(c2 * 7 * 7) if args.batch_norm else nn.Identity(),
            nn.ReLU(),
        )
        blocks, norm = args.decoder_blocks, args.batch_norm
        self.body = nn.Sequential(
            *_residual_blocks(blocks, c2, norm),  # (B, c2, 7, 7)
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),  # (B, c1, 14, 14)
            _norm(c1, norm),
            nn.ReLU(),
            *_residual_blocks(blocks, c1, norm),  # (B, c1, 14, 14)
            nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1),  # (B, 1, 28, 28) logits
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of the Bernoulli pixel means."""
        h = self.project(z).view(z.shape[0], self.c2, 7, 7)
        return self.body(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1]."""
        return torch.sigmoid(self(z))


class Discriminator(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        c1, c2, c3 = args.dis_channels
        batch_norm = args.batch_norm and not args.dis_spectral_norm
        blocks = args.discriminator_blocks
        self.trunk = nn.Sequential(
            nn.Conv2d(1, c1, 4, stride=2, padding=1),  # (B, c1, 14, 14)
            nn.LeakyReLU(0.2),
            *_residual_blocks(blocks, c1, batch_norm, slope=0.2),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),  # (B, c2, 7, 7)
            _norm(c2, batch_norm),
            nn.LeakyReLU(0.2),
            *_residual_blocks(blocks, c2, batch_norm, slope=0.2),
        )
        # Dis_l: the layer whose activations define the learned similarity metric.
        self.features = nn.Conv2d(c2, c3, 3, stride=1, padding=1)  # (B, c3, 7, 7)
        self.head = nn.Sequential(
            _norm(c3, batch_norm),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(c3 * 7 * 7, args.dis_hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(args.dis_hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit (B,), Dis_l features (B, c3, 7, 7))."""
        features = self.features(self.trunk(x))
        return self.head(features).squeeze(1), features


class VAEGAN(nn.Module):
    """The three networks and the latent prior; the discriminator is unused by the `vae` objective."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.encoder = Encoder(args)
        self.decoder = Decoder(args)
        self.discriminator = Discriminator(args)
        self.prior = LatentPrior(args.latent_dim)  # standard until `train` fits one

    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, 1, 28, 28) from standard-normal noise (B, Z), through the prior."""
        return self.decoder.decode(self.prior(noise))


WeightedLayer = nn.Conv2d | nn.ConvTranspose2d | nn.Linear


def _weighted_layers(module: nn.Module) -> list[WeightedLayer]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]


def build_model(args: ModelArgs) -> VAEGAN:
    """A freshly initialised model (DCGAN-style init: N(0, 0.02) conv/linear weights), with the
    discriminator's layers spectrally normalised when `args.dis_spectral_norm`."""
    model = VAEGAN(args)
    for layer in _weighted_layers(model):
        nn.init.normal_(layer.weight, 0.0, 0.02)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    if args.dis_spectral_norm:
        for layer in _weighted_layers(model.discriminator):
            nn.utils.parametrizations.spectral_norm(layer)
    return model
