"""`python -m bench.lab.quality`: sample quality of training variants x seeds on the device present.

Each job trains one variant (params overrides on top of params.yaml) with one `train.seed` through
the project's own code, exactly as `vaegan train` and `vaegan evaluate` do it but without files or
MLflow: `fit_vaegan`, the latent prior fitted to the training split's encoder means
(`fit_trained_prior`), then `load_scoring(config).score(...)` (FID against the floor, precision and
recall, class entropy, label consistency). It needs the prepared data and the evaluator
(`dvc repro evaluator`) and nothing else, so it runs where DVC and MLflow are not installed (the
GPU image): on this project's CPU machines the same grid is a `dvc exp run --queue` grid
(docs/training.md), which also records every run; this is the quick screen of levers before it.

Jobs run in `--workers` processes (spawned, `--threads` torch threads each); each finished job
appends one JSON line to `<out>/quality.jsonl` at once (a run cut short keeps what finished), and
at the end `<out>/quality.json` holds every job, the table per variant (median and worst seed) and
`<out>/samples.npz` the first 100 prior samples of each job.

    python -m bench.lab.quality --seeds 0 1 2 --variant base \\
        --variant "augment:train.augment=translation" --variant "sn:model.spectral_norm=true"
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaegan.config import load_config
from vaegan.data.splits import load_split
from vaegan.nn.batches import images_to_device
from vaegan.nn.devices import select_device
from vaegan.nn.latent_prior import fit_trained_prior
from vaegan.nn.loop import fit_vaegan
from vaegan.scoring.core import load_scoring

REPO_ROOT = Path(__file__).resolve().parents[2]
REPORTED = (
    "fid", "fid_floor", "fid_ratio", "fid_standard_prior", "fid_recon", "precision", "recall",
    "sample_class_entropy", "label_consistency",
)  # fmt: skip


@dataclass(frozen=True)
class Variant:
    """A named set of `section.key=value` overrides."""

    name: str
    overrides: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Variant:
        """`NAME` (no overrides) or `NAME:section.key=value,section.key=value`."""
        name, _, rest = text.partition(":")
        overrides = tuple(part.strip() for part in rest.split(",") if part.strip())
        if not name or any("=" not in part for part in overrides):
            raise argparse.ArgumentTypeError(f"expected NAME[:section.key=value,...], got {text!r}")
        return cls(name, overrides)


def run_job(variant: Variant, seed: int, params: str, base: tuple[str, ...], threads: int) -> dict[str, Any]:
    """Train `variant` with `seed`, fit its prior, score it; the record of one job."""
    torch.set_num_threads(threads)
    config = load_config(params, [*base, *variant.overrides, f"train.seed={seed}"])
    train_split = load_split(config.data.prepared_dir, "train")
    images = train_split.images[: config.train.limit_train_images or None]
    val_split = load_split(config.data.prepared_dir, "val")
    started = time.perf_counter()
    result = fit_vaegan(
        config=config,
        train_images=images,
        val_images=val_split.images,
        device=select_device(config.train.device),
    )
    trained = time.perf_counter()
    model = result.model
    x = images_to_device(images, torch.device("cpu"), channels_last=False)
    model.prior, _, _ = fit_trained_prior(model.encoder, x, config.train)
    fitted = time.perf_counter()
    evaluation = load_scoring(config).score(model, seed=config.evaluate.seed)
    metrics = evaluation.metrics
    record = {k: metrics.get(k) for k in REPORTED if k in metrics}
    record["fid_ratio"] = metrics["fid"] / metrics["fid_floor"]
    return {
        "variant": variant.name,
        "overrides": list(variant.overrides),
        "seed": seed,
        **record,
        "train_s": trained - started,
        "prior_fit_s": fitted - trained,
        "score_s": time.perf_counter() - fitted,
        "images_per_s": result.metrics["images_per_s"],
        "final_losses": {k: v for k, v in result.metrics.items() if k.startswith("loss_")},
        "steps": result.metrics["steps"],
        "device": result.metrics["device"],
        "samples": evaluation.samples.tolist(),
    }


def _outcome(variant: Variant, seed: int, handle: Any, deadline: float | None) -> dict[str, Any]:
    """The job's record, or one saying why there is none (an error, or the deadline)."""
    try:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        record: dict[str, Any] = handle.get(timeout)
    except multiprocessing.TimeoutError:
        record = {"variant": variant.name, "seed": seed, "error": "cut: --deadline-s reached"}
    except Exception as exc:  # one failed job is a row, not the end of the grid
        record = {"variant": variant.name, "seed": seed, "error": f"{type(exc).__name__}: {exc}"}
    if "error" in record:
        print(f"{variant.name} seed {seed}: {record['error']}", flush=True)
    else:
        print(
            f"{variant.name} seed {seed}: FID {record['fid']:.2f} ({record['fid_ratio']:.2f}x floor), "
            f"P {record['precision']:.3f} R {record['recall']:.3f}, train {record['train_s']:.0f} s",
            flush=True,
        )
    return record


def table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per variant, median over its seeds and the worst seed's FID ratio."""
    lines = [
        "| variant | seeds | FID (median) | FID / floor (median, worst) | precision | recall | entropy "
        "| label consistency | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in dict.fromkeys(r["variant"] for r in records):
        rows = [r for r in records if r["variant"] == name]

        def med(key: str, rows: list[dict[str, Any]] = rows) -> float:
            return statistics.median(r[key] for r in rows)

        lines.append(
            f"| {name} | {len(rows)} | {med('fid'):.2f} | {med('fid_ratio'):.2f}x, "
            f"{max(r['fid_ratio'] for r in rows):.2f}x | {med('precision'):.3f} | {med('recall'):.3f} "
            f"| {med('sample_class_entropy'):.3f} | {med('label_consistency'):.3f} | {med('train_s'):.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].strip("`"))
    parser.add_argument("--variant", type=Variant.parse, action="append", required=True,
                        help="NAME[:section.key=value,...]; repeat for each variant")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed values")
    parser.add_argument("--set", dest="base", action="append", default=[],
                        help="section.key=value applied to every variant (before its own)")  # fmt: skip
    parser.add_argument("--params", default=str(REPO_ROOT / "params.yaml"), help="params file")
    parser.add_argument("--workers", type=int, default=1, help="jobs at a time (processes)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) // 2),
                        help="torch threads per job")  # fmt: skip
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=0.0,
        help="stop waiting after this many seconds; unfinished jobs are recorded as cut",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "lab" / "results" / "quality")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(variant, seed) for variant in args.variant for seed in args.seeds]
    records: list[dict[str, Any]] = []
    samples: dict[str, np.ndarray] = {}
    deadline = time.monotonic() + args.deadline_s if args.deadline_s else None
    base = tuple(args.base)
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers) as pool, (args.out / "quality.jsonl").open("a") as log:
        handles = [
            (variant, seed, pool.apply_async(run_job, (variant, seed, args.params, base, args.threads)))
            for variant, seed in jobs
        ]
        for variant, seed, handle in handles:
            record = _outcome(variant, seed, handle, deadline)
            if "samples" in record:
                samples[f"{variant.name}-s{seed}"] = np.asarray(record.pop("samples"), dtype=np.uint8)
            log.write(json.dumps(record) + "\n")
            log.flush()
            records.append(record)
        pool.terminate()  # jobs cut by the deadline
    ok = [r for r in records if "error" not in r]
    rendered = table(ok) if ok else "(no job finished)"
    print(rendered)
    summary = {"format": "vaegan-quality/1", "params": args.params, "base": args.base, "jobs": records,
               "table": rendered}  # fmt: skip
    (args.out / "quality.json").write_text(json.dumps(summary, indent=1) + "\n")
    np.savez_compressed(args.out / "samples.npz", **samples)
    return 0 if len(ok) == len(records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
