"""`python -m bench.lab.grad_norms`: how much each loss term pulls on the decoder and the encoder.

The decoder learns gamma * L_llike + L_pixel + gan_weight * L_GAN (`vaegan.nn.step`); Adam rescales
the sum, so what decides the mix is the relative size of each term's gradient. For each checkpoint
(and, with `--init-seeds`, freshly initialised networks), the gradient of every term alone with
respect to the decoder's and the encoder's parameters, on `--batches` training batches drawn like a
training step's (the networks in train mode, fp32, N(0, I) prior codes as in training), as the mean
L2 norm over the batches, plus the cosine between the decoder's reconstruction and GAN gradients.

    python -m bench.lab.grad_norms --checkpoint models/vaegan.pt --init-seeds 0

Writes `<out>/grad_norms.json` and prints a table.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vaegan.config import load_config
from vaegan.data.splits import load_split
from vaegan.nn.batches import images_to_device
from vaegan.nn.checkpoint_payload import load_model
from vaegan.nn.networks import VAEGAN
from vaegan.nn.step import LossSettings, Objectives, vaegan_objectives
from vaegan.nn.training_networks import configured_model_args, initial_model

REPO_ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ("dec_feature", "dec_pixel", "dec_gan", "enc_feature", "enc_pixel", "enc_kl")


def flat_grad(loss: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """The gradient of `loss` with respect to `module`'s parameters, as one flat vector."""
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    filled = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)]
    return torch.cat([g.flatten() for g in filled])


def term_gradients(
    model: VAEGAN, x: torch.Tensor, eps: torch.Tensor, z_prior: torch.Tensor, settings: LossSettings
) -> dict[str, torch.Tensor]:
    """Flat gradients of each weighted term, on the decoder (`dec_*`) and the encoder (`enc_*`).

    The terms come from the training step's own `vaegan_objectives`, once per term with the others
    weighted 0 (the forward pass is deterministic for fixed x, eps and z_prior)."""
    parts = model.encoder, model.decoder, model.discriminator

    def objectives(**weights: Any) -> Objectives:
        return vaegan_objectives(*parts, x, eps, z_prior, replace(settings, **weights))

    feature = objectives(recon_loss="feature", beta=0.0)
    pixel = objectives(recon_loss="pixel", beta=0.0)
    kl = objectives(recon_loss="feature", encoder_llike_weight=0.0)
    assert feature.generator_gan is not None
    return {
        "dec_feature": flat_grad(feature.decoder_recon, model.decoder),
        "dec_pixel": flat_grad(pixel.decoder_recon, model.decoder),
        "dec_gan": flat_grad(feature.generator_gan, model.decoder),
        "enc_feature": flat_grad(feature.encoder, model.encoder),
        "enc_pixel": flat_grad(pixel.encoder, model.encoder),
        "enc_kl": flat_grad(kl.encoder, model.encoder),
    }


def measure(model: VAEGAN, images: torch.Tensor, settings: LossSettings, batches: int, batch_size: int,
            seed: int) -> dict[str, float]:  # fmt: skip
    """Mean gradient norm of each term over `batches` batches, and the mean cosine between the
    decoder's reconstruction gradient (feature + pixel) and its GAN gradient."""
    model.train()
    generator = torch.Generator().manual_seed(seed)
    norms: dict[str, list[float]] = {c: [] for c in COLUMNS}
    cosines: list[float] = []
    latent_dim = model.args.latent_dim
    for _ in range(batches):
        x = images[torch.randint(len(images), (batch_size,), generator=generator)]
        eps, z_prior = torch.randn(2, batch_size, latent_dim, generator=generator)
        grads = term_gradients(model, x, eps, z_prior, settings)
        for column in COLUMNS:
            norms[column].append(float(grads[column].norm()))
        recon = grads["dec_feature"] + grads["dec_pixel"]
        cosines.append(float(torch.nn.functional.cosine_similarity(recon, grads["dec_gan"], dim=0)))
    return {**{c: float(np.mean(v)) for c, v in norms.items()}, "dec_cos_recon_gan": float(np.mean(cosines))}


def table(records: list[dict[str, Any]]) -> str:
    ratios = ("feature / pixel (decoder)", "GAN / (feature + pixel)", "cos(recon, GAN)")
    lines = ["| model | " + " | ".join(COLUMNS + ratios) + " |", "|" + " --- |" * (len(COLUMNS) + 4)]
    for r in records:
        ratio = r["dec_feature"] / r["dec_pixel"]
        gan = r["dec_gan"] / (r["dec_feature"] + r["dec_pixel"])
        cells = " | ".join(f"{r[c]:.3g}" for c in COLUMNS)
        lines.append(f"| {r['model']} | {cells} | {ratio:.3f} | {gan:.3f} | {r['dec_cos_recon_gan']:+.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].replace("`", ""))
    parser.add_argument("--checkpoint", nargs="*", default=[], help="trained models (vaegan checkpoints)")
    parser.add_argument("--init-seeds", type=int, nargs="*", default=[], help="freshly initialised models")
    parser.add_argument("--params", default="params.yaml", help="params file (data, model, train)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--batches", type=int, default=20, help="batches per model")
    parser.add_argument("--seed", type=int, default=0, help="draws of images and noise")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "lab" / "results" / "grad-norms")
    args = parser.parse_args(argv)
    if not args.checkpoint and not args.init_seeds:
        parser.error("give --checkpoint and/or --init-seeds")
    torch.set_num_threads(args.threads)
    config = load_config(args.params, args.overrides)
    settings = LossSettings.from_config(config.train)
    limit = config.train.limit_train_images or None
    train_images = load_split(config.data.prepared_dir, "train").images[:limit]
    images = images_to_device(train_images, torch.device("cpu"), channels_last=False)
    model_args = configured_model_args(config.model)
    models = [(f"init, seed {s}", initial_model(model_args, s)) for s in args.init_seeds]
    models += [(str(path), load_model(path)) for path in args.checkpoint]
    records = []
    for name, model in models:
        row = measure(model, images, settings, args.batches, config.train.batch_size, args.seed)
        records.append({"model": name, **row})
        print(f"{name}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    weights = ("gamma", "gan_weight", "beta", "encoder_llike_weight")
    settings_record = {k: getattr(settings, k) for k in weights}
    report = {"settings": settings_record, "batches": args.batches, "batch_size": config.train.batch_size,
              "records": records}  # fmt: skip
    (args.out / "grad_norms.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
