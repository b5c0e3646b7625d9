"""A digest of a model's weights alone: the three networks and the fitted latent prior.

A checkpoint file's sha256 also covers its provenance (MLflow run id, training wall time, git
commit), so two trainings that made the same weights bit for bit still give different files.
`weights_sha256` hashes only what the model computes with, so that `vaegan reproduce` can say
whether a rebuild made *the same model*.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

NETWORKS = ("encoder", "decoder", "discriminator")


def _update(digest: Any, name: str, tensor: torch.Tensor) -> None:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}\n".encode())
    digest.update(flat.view(torch.uint8).numpy().tobytes())


def weights_sha256(payload: Mapping[str, Any]) -> str:
    """sha256 over the name, dtype, shape and bytes of every tensor of the encoder, decoder,
    discriminator and latent prior of a `vaegan` checkpoint payload, in name order."""
    digest = hashlib.sha256()
    for network in NETWORKS:
        for name, tensor in sorted(payload[network].items()):
            _update(digest, f"{network}.{name}", tensor)
    prior = payload.get("prior")
    if prior is not None:
        digest.update(f"prior:{prior['kind']}:{prior['components']}\n".encode())
        for name, tensor in sorted(prior["state"].items()):
            _update(digest, f"prior.{name}", tensor)
    return digest.hexdigest()
