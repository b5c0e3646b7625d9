"""The exported ONNX encoder and decoder as a `vaegan.scoring.core.Autoencoder`, so that the artifacts the
registry holds are scored by exactly the code that scored the PyTorch model."""

from __future__ import annotations

import os

import torch

from vaegan.artifacts.onnx_runtime import (
    create_session,
    decoder_latent_dim,
    has_reconstruction,
    run_autoencoder,
    run_decoder,
    run_encoder,
)
from vaegan.errors import CheckpointError


class OnnxAutoencoder:
    """ONNX Runtime sessions of an encoder/decoder pair; tensors in and out (CPU float32)."""

    def __init__(
        self,
        encoder_path: str | os.PathLike[str],
        decoder_path: str | os.PathLike[str],
        device: str = "auto",
    ) -> None:
        self.encoder = create_session(encoder_path, device)
        self.decoder = create_session(decoder_path, device)
        self.latent_dim = decoder_latent_dim(self.decoder)
        encoder_dim = self.encoder.get_outputs()[0].shape[-1]
        if isinstance(encoder_dim, int) and encoder_dim != self.latent_dim:
            raise CheckpointError(
                f"encoder {encoder_path} gives {encoder_dim}-d codes but decoder {decoder_path} "
                f"takes {self.latent_dim}-d codes: they are not one model"
            )

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_np = x.detach().cpu().float().numpy()
        if has_reconstruction(self.encoder):
            mu, logvar, probs = run_autoencoder(self.encoder, x_np)
        else:  # an export from before the fitted prior: its decoder graph takes codes
            mu, logvar = run_encoder(self.encoder, x_np)
            probs = run_decoder(self.decoder, mu)
        return torch.from_numpy(mu), torch.from_numpy(logvar), torch.from_numpy(probs)

    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(run_decoder(self.decoder, noise.detach().cpu().float().numpy()))
