"""`python -m bench.lab.prior_screen`: how much of a trained model's FID is its latent prior's.

One first stage (a trained `models/vaegan.pt`), several priors fitted to the encoder means of the
training split it was trained on, each scored like `vaegan evaluate` (`load_scoring(config).score`):
the mixture of params.yaml with other EM starts, other component counts, one Gaussian, and as a
bound the training codes themselves (every code a component with the covariance floor: what a prior
that memorised the codes would sample; a diagnostic, not a prior to ship). The reconstructions'
FID (`fid_recon`) is the same for every row: it is the decoder's quality on codes the encoder gives.

    python -m bench.lab.prior_screen --checkpoint models/vaegan.pt --set data.source=sample

Writes `<out>/prior_screen.json` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaegan.config import Config, load_config
from vaegan.data.splits import load_split
from vaegan.nn.batches import images_to_device
from vaegan.nn.checkpoint_payload import load_model
from vaegan.nn.latent_prior import LatentPrior, MixtureFit, encoder_means, fit_prior
from vaegan.nn.networks import VAEGAN
from vaegan.scoring.core import Scoring, load_scoring

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class PriorSpec:
    name: str
    kind: str  # gaussian | mixture | codes
    components: int
    seed: int


def memorised_codes(codes: np.ndarray, covariance_floor: float) -> LatentPrior:
    """Every training code a component of equal weight with covariance `covariance_floor` * I."""
    n, dim = codes.shape
    chol = np.broadcast_to(np.sqrt(covariance_floor) * np.eye(dim), (n, dim, dim)).copy()
    return LatentPrior.from_fit(MixtureFit(np.full(n, 1.0 / n), codes.astype(np.float64), chol, float("nan")))


def fitted(spec: PriorSpec, codes: np.ndarray, covariance_floor: float) -> LatentPrior:
    if spec.kind == "codes":
        return memorised_codes(codes, covariance_floor)
    prior, _ = fit_prior(codes, spec.kind, spec.components, spec.seed, covariance_floor)
    return prior


def specs(components: list[int], em_seeds: list[int], default_components: int) -> list[PriorSpec]:
    k0, seed0 = default_components, em_seeds[0]
    rows = [PriorSpec(f"mixture {k0}, EM seed {s}", "mixture", k0, s) for s in em_seeds]
    rows += [PriorSpec(f"mixture {k}", "mixture", k, seed0) for k in components if k != k0]
    rows.append(PriorSpec("gaussian (full covariance)", "gaussian", 1, seed0))
    rows.append(PriorSpec("the training codes (bound)", "codes", 0, seed0))
    return rows


def first_stage_parser(description: str, out: str) -> argparse.ArgumentParser:
    """The arguments of a screen of priors on one trained first stage; results under `out`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--checkpoint", default="models/vaegan.pt", help="the trained model")
    parser.add_argument("--params", default="params.yaml", help="params file (data, evaluator, evaluate)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "lab" / "results" / out)
    return parser


@dataclass
class FirstStage:
    """A trained model in eval mode, the encoder means (N, Z) of the training split it trained on,
    the resolved params and the scoring of `vaegan evaluate`."""

    config: Config
    model: VAEGAN
    codes: np.ndarray
    scoring: Scoring

    @classmethod
    def load(cls, args: argparse.Namespace) -> FirstStage:
        torch.set_num_threads(args.threads)
        config = load_config(args.params, args.overrides)
        model = load_model(args.checkpoint).eval()
        limit = config.train.limit_train_images or None
        images = load_split(config.data.prepared_dir, "train").images[:limit]
        x = images_to_device(images, torch.device("cpu"), channels_last=False)
        return cls(config, model, encoder_means(model.encoder, x), load_scoring(config))


def main(argv: list[str] | None = None) -> int:
    parser = first_stage_parser(__doc__.splitlines()[0].replace("`", ""), "prior-screen")
    parser.add_argument("--components", type=int, nargs="+", default=[10, 40, 80, 200, 400])
    parser.add_argument(
        "--em-seeds", type=int, nargs="+", default=[0, 1, 2], help="EM starts of the default mixture"
    )
    args = parser.parse_args(argv)
    stage = FirstStage.load(args)
    config, model, codes, scoring = stage.config, stage.model, stage.codes, stage.scoring
    records: list[dict[str, Any]] = []
    for spec in specs(args.components, args.em_seeds, config.train.prior_components):
        started = time.perf_counter()
        model.prior = fitted(spec, codes, config.train.prior_covariance_floor)
        fit_s = time.perf_counter() - started
        metrics = scoring.score(model, seed=config.evaluate.seed).metrics
        record = {
            "prior": spec.name, "kind": spec.kind, "components": spec.components, "em_seed": spec.seed,
            **{k: metrics[k] for k in ("fid", "fid_floor", "fid_recon", "precision", "recall")},
            "fid_ratio": metrics["fid"] / metrics["fid_floor"], "fit_s": fit_s,
        }  # fmt: skip
        records.append(record)
        print(
            f"{spec.name}: FID {record['fid']:.2f} ({record['fid_ratio']:.2f}x floor), "
            f"recon {record['fid_recon']:.2f}, P {record['precision']:.3f} R {record['recall']:.3f}, "
            f"fit {fit_s:.1f} s",
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prior_screen.json").write_text(
        json.dumps({"checkpoint": str(args.checkpoint), "codes": len(codes), "rows": records}, indent=1)
    )
    print("| prior | FID | x floor | FID recon | precision | recall | fit s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in records:
        print(
            f"| {r['prior']} | {r['fid']:.2f} | {r['fid_ratio']:.2f} | {r['fid_recon']:.2f} "
            f"| {r['precision']:.3f} | {r['recall']:.3f} | {r['fit_s']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
