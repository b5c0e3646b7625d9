"""`python -m bench.lab.second_stage`: a second-stage VAE on the codes (Dai & Wipf 2019) against the
mixture prior, on one trained first stage.

Dai & Wipf's two-stage VAE trains a second, small VAE on the first stage's codes and generates by
decoding standard-normal noise through it: u ~ N(0, I) -> second decoder's mean -> first decoder.
Their decoder variance gamma is learnt (one scalar), so the reconstruction term sharpens as the fit
improves and the second stage's aggregate posterior comes to match N(0, I), which a mixture fitted to
the codes does by construction only near the codes. Here: MLPs of `--depth` ReLU layers of `--width`
units on the standardised encoder means of the training split, Adam with a cosine decay to 0, fp32 on
the CPU; the result is put in the model's place of the prior and scored like `vaegan evaluate`
(`load_scoring(config).score`), next to the 400-component mixture from the EM start `--em-seed` (the
pipeline's prior when it equals the training seed).

    python -m bench.lab.second_stage --checkpoint models/vaegan.pt --em-seed 0 --set data.source=sample

Writes `<out>/second_stage.json` and prints a table.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.lab.prior_screen import FirstStage, first_stage_parser
from vaegan.nn.latent_prior import fit_prior


def _mlp(inputs: int, width: int, depth: int, outputs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(inputs if i == 0 else width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, outputs))


class SecondStage(nn.Module):
    """A VAE on first-stage codes with a learnt decoder variance gamma; as a prior (`forward`), noise
    (B, Z) -> the second decoder's mean code, in the first stage's units."""

    kind = "second_stage"
    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self, codes: np.ndarray, width: int, depth: int, gamma_init: float = 1.0) -> None:
        super().__init__()
        dim = codes.shape[1]
        self.register_buffer("shift", torch.as_tensor(codes.mean(0), dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(codes.std(0), dtype=torch.float32))
        self.encoder = _mlp(dim, width, depth, 2 * dim)
        self.decoder = _mlp(dim, width, depth, dim)
        self.log_gamma = nn.Parameter(torch.full((), math.log(gamma_init)))

    def loss(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(negative ELBO per code, mean squared error) of standardised codes z (B, Z)."""
        mu, logvar = self.encoder(z).chunk(2, dim=1)
        logvar = logvar.clamp(-12.0, 6.0)
        u = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        squared = (z - self.decoder(u)).pow(2).sum(1)
        log_gamma = self.log_gamma.clamp(min=-12.0)
        dim = z.shape[1]
        nll = squared / (2 * log_gamma.exp()) + 0.5 * dim * (log_gamma + math.log(2 * math.pi))
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
        return (nll + kl).mean(), squared.mean() / dim

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.decoder(noise) * self.scale + self.shift


def train_second_stage(
    codes: np.ndarray,
    *,
    seed: int,
    width: int,
    depth: int,
    epochs: int,
    batch_size: int,
    lr: float,
    gamma_init: float,
) -> tuple[SecondStage, dict[str, float]]:
    """The second stage trained on codes (N, Z) from `seed`; its last epoch's loss, mse and gamma."""
    torch.manual_seed(seed)
    stage = SecondStage(codes, width, depth, gamma_init)
    z_all = (torch.as_tensor(codes, dtype=torch.float32) - stage.shift) / stage.scale
    steps_per_epoch = math.ceil(len(z_all) / batch_size)
    optimizer = torch.optim.Adam(stage.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    loss_sum = mse_sum = 0.0
    for _ in range(epochs):
        loss_sum = mse_sum = 0.0
        order = torch.randperm(len(z_all), generator=generator)
        for start in range(0, len(z_all), batch_size):
            loss, mse = stage.loss(z_all[order[start : start + batch_size]])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum, mse_sum = loss_sum + loss.item(), mse_sum + mse.item()
    stage.eval()
    gamma = stage.log_gamma.exp().item()
    return stage, {"loss": loss_sum / steps_per_epoch, "mse": mse_sum / steps_per_epoch, "gamma": gamma}


def main(argv: list[str] | None = None) -> int:
    parser = first_stage_parser(__doc__.splitlines()[0].replace("`", ""), "second-stage")
    parser.add_argument("--em-seed", type=int, default=0, help="EM start of the reference mixture")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="second-stage training seeds")
    parser.add_argument("--width", type=int, default=512, help="units per hidden layer")
    parser.add_argument("--depth", type=int, default=3, help="hidden layers of each MLP")
    parser.add_argument("--epochs", type=int, default=200, help="passes over the codes")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's peak rate, cosine decay to 0")
    parser.add_argument("--gamma-init", type=float, default=1.0, help="initial decoder variance gamma")
    args = parser.parse_args(argv)
    stage = FirstStage.load(args)
    config, model, codes, scoring = stage.config, stage.model, stage.codes, stage.scoring
    components, floor = config.train.prior_components, config.train.prior_covariance_floor
    records: list[dict[str, Any]] = []

    def score(name: str, fit_s: float, **extra: float) -> None:
        metrics = scoring.score(model, seed=config.evaluate.seed).metrics
        record = {
            "prior": name,
            **{k: metrics[k] for k in ("fid", "fid_floor", "fid_recon", "precision", "recall")},
            "fid_ratio": metrics["fid"] / metrics["fid_floor"],
            "fit_s": fit_s,
            **extra,
        }
        records.append(record)
        print(
            f"{name}: FID {record['fid']:.2f} ({record['fid_ratio']:.2f}x floor), "
            f"P {record['precision']:.3f} R {record['recall']:.3f}, fit {fit_s:.1f} s {extra}",
            flush=True,
        )

    started = time.perf_counter()
    model.prior, _ = fit_prior(codes, "mixture", components, args.em_seed, floor)
    score(f"mixture {components}, EM seed {args.em_seed}", time.perf_counter() - started)
    for seed in args.seeds:
        started = time.perf_counter()
        model.prior, last = train_second_stage(
            codes, seed=seed, width=args.width, depth=args.depth, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, gamma_init=args.gamma_init,
        )  # fmt: skip
        score(f"second stage {args.depth}x{args.width}, seed {seed}", time.perf_counter() - started, **last)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {
        k: getattr(args, k) for k in ("width", "depth", "epochs", "batch_size", "lr", "gamma_init", "em_seed")
    }
    code_std = [round(float(v), 4) for v in codes.std(0)]  # inactive first-stage dimensions show as ~0
    summary = {"checkpoint": str(args.checkpoint), "codes": len(codes), "code_std": code_std, **settings}
    summary["rows"] = records
    (args.out / "second_stage.json").write_text(json.dumps(summary, indent=1))
    print("| prior | FID | x floor | precision | recall | fit s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in records:
        print(
            f"| {r['prior']} | {r['fid']:.2f} | {r['fid_ratio']:.2f} "
            f"| {r['precision']:.3f} | {r['recall']:.3f} | {r['fit_s']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
