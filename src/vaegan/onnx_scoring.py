"""The exported ONNX encoder and decoder as an `evaluate.Autoencoder`, so that the artifacts the
registry holds are scored by exactly the code that scored the PyTorch model."""

from __future__ import annotations

import os

import torch

from vaegan.errors import CheckpointError
from vaegan.onnx_runtime import create_session, decoder_latent_dim, run_decoder, run_encoder


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

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = run_encoder(self.encoder, x.detach().cpu().float().numpy())
        return torch.from_numpy(mu), torch.from_numpy(logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(run_decoder(self.decoder, z.detach().cpu().float().numpy()))
