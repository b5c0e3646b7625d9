"""The "vaegan" checkpoint: the payload that carries a VAE/GAN, built from its networks and prior
and read back into them (the file I/O is `vaegan.artifacts.checkpoint`'s).

Layout (besides `format` and `kind`: "vaegan"):

    model_args:     ModelArgs.to_dict()
    config:         Config.to_dict() of the run that wrote it
    encoder, decoder, discriminator: state dicts
    decoder_ema:    the decoder's moving average (AveragedModel state) while training, or None;
                    absent from the final model, whose `decoder` is that average
    prior:          {"kind", "components", "state"} of the fitted latent prior (final models only;
                    absent: N(0, I))
    state:          further entries the writer owns (optimizers, schedulers, step, epoch,
                    RNG states, best metric, data sha256, ...)

`model_payload` alone builds a "vaegan" checkpoint (train's, the tests' model files);
`final_model_payload` derives the `train.model_path` file from a training checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from vaegan.artifacts.checkpoint import MODEL_KIND, load_checkpoint
from vaegan.errors import CheckpointError, first_line
from vaegan.nn.latent_prior import LatentPrior
from vaegan.nn.networks import VAEGAN, ModelArgs, build_model

# Trainer state a training checkpoint carries and the final model file leaves out.
TRAINER_STATE = ("optimizers", "schedulers", "rng", "epoch_sums", "window_sums")


def model_from_checkpoint(payload: dict[str, Any], source: str = "checkpoint") -> VAEGAN:
    """Rebuild the VAE/GAN the checkpoint describes and load its weights (eval mode)."""
    try:
        args = ModelArgs.from_dict(payload["model_args"])
        model = build_model(args)
        model.encoder.load_state_dict(payload["encoder"])
        model.decoder.load_state_dict(payload["decoder"])
        model.discriminator.load_state_dict(payload["discriminator"])
        if payload.get("prior") is not None:
            model.prior = LatentPrior(args.latent_dim, int(payload["prior"]["components"]))
            model.prior.load_state_dict(payload["prior"]["state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = first_line(exc)
        raise CheckpointError(f"{source} does not match the model it describes: {first}") from exc
    return model.eval()


def prior_payload(prior: LatentPrior) -> dict[str, Any]:
    """The checkpoint's `prior` entry for a fitted prior."""
    return {"kind": prior.kind, "components": prior.components, "state": prior.state_dict()}


def model_payload(
    model: VAEGAN,
    config: dict[str, Any],
    state: dict[str, Any],
    *,
    decoder_ema: dict[str, Any] | None = None,
    prior: LatentPrior | None = None,
) -> dict[str, Any]:
    """The `vaegan` checkpoint of `model`: its args and the three networks' weights, the run's
    `config` (`Config.to_dict()`), the writer's `state`, the decoder's moving average (an
    AveragedModel state dict, or None) and, when given, the fitted latent `prior`."""
    payload: dict[str, Any] = {
        "kind": MODEL_KIND,
        "model_args": model.args.to_dict(),
        "config": config,
        "encoder": model.encoder.state_dict(),
        "decoder": model.decoder.state_dict(),
        "discriminator": model.discriminator.state_dict(),
        "decoder_ema": decoder_ema,
        "state": state,
    }
    if prior is not None:
        payload["prior"] = prior_payload(prior)
    return payload


def final_model_payload(checkpoint_payload: dict[str, Any]) -> dict[str, Any]:
    """The `train.model_path` file: the checkpoint without its `TRAINER_STATE`, with the decoder's
    moving average as its decoder when training kept one."""
    payload = {k: v for k, v in checkpoint_payload.items() if k not in ("format", "state", "decoder_ema")}
    payload["state"] = {k: v for k, v in checkpoint_payload["state"].items() if k not in TRAINER_STATE}
    ema_state = checkpoint_payload.get("decoder_ema")
    if ema_state is not None:
        prefix = "module."  # AveragedModel's copy of the decoder; n_averaged is its own
        payload["decoder"] = {k.removeprefix(prefix): v for k, v in ema_state.items() if k.startswith(prefix)}
    return payload


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> VAEGAN:
    """Load a VAE/GAN checkpoint file and rebuild its model."""
    return model_from_checkpoint(load_checkpoint(path, MODEL_KIND, map_location), str(path))
