"""The champion check (`vaegan check-champion`, scheduled by the `check-champion` flow): is the model
in production still as good as when it was promoted?

The champion's encoder and decoder are loaded from the registry as ONNX (sha256 verified against
the tags written at registration), scored with ONNX Runtime on the current test data by the same
scoring as the `evaluate` stage (`vaegan.scoring.core.load_scoring`: evaluator, feature extractor,
splits, settings), with a fresh sampling seed, and the FID is compared with the one
recorded at promotion (`metric.fid` on the decoder version). A relative degradation beyond
`registry.max_fid_drift` is a failure. Every check is logged to the MLflow experiment
`check-champion`, tagged with the model versions and the data hash.
"""

from __future__ import annotations

import argparse
import logging
import math
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vaegan.artifacts.onnx_runtime import active_provider
from vaegan.artifacts.provenance import sha256_file
from vaegan.config import check_seed
from vaegan.data.splits import data_sha256
from vaegan.errors import CheckpointError, VaeganError
from vaegan.registry.verified import champion_pair
from vaegan.scoring.core import load_scoring
from vaegan.scoring.onnx_model import OnnxAutoencoder
from vaegan.tracking.store import connect, ensure_experiment, log_metrics

if TYPE_CHECKING:
    from vaegan.config import Config

log = logging.getLogger(__name__)

EXPERIMENT = "check-champion"


class ChampionDrift(VaeganError):
    """The champion's FID degraded beyond `registry.max_fid_drift`."""

    exit_code = 1


@dataclass
class ChampionReport:
    """One champion check: what was measured, what was recorded at promotion, the verdict."""

    decoder: str  # "name vN"
    encoder: str
    pair_id: str
    metrics: dict[str, Any]
    promoted_fid: float
    max_fid_drift: float
    seed: int
    data_sha256: str
    promoted_data_sha256: str
    evaluator_sha256: str
    promoted_evaluator_sha256: str
    provider: str
    seconds: float
    run_id: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def fid(self) -> float:
        return float(self.metrics["fid"])

    @property
    def fid_drift(self) -> float:
        """(FID now - FID at promotion) / FID at promotion; positive is worse."""
        return (self.fid - self.promoted_fid) / self.promoted_fid

    @property
    def passed(self) -> bool:
        return math.isfinite(self.fid) and self.fid_drift <= self.max_fid_drift

    def message(self) -> str:
        verdict = "within" if self.passed else "BEYOND"
        return (
            f"champion {self.decoder} / {self.encoder}: fid {self.fid:.3f} vs {self.promoted_fid:.3f} "
            f"at promotion, drift {self.fid_drift:+.1%} ({verdict} the allowed "
            f"+{self.max_fid_drift:.0%}); seed {self.seed}, data {self.data_sha256[:12]}"
        )


def fresh_seed() -> int:
    """A new sampling seed for each scheduled run (recorded, so a run can be repeated)."""
    return secrets.randbelow(2**31)


def _recorded_fid(tags: dict[str, str], where: str) -> float:
    try:
        value = float(tags["metric.fid"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{where} carries no usable `metric.fid` tag: it was not registered by vaegan"
        ) from exc
    if not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"{where}: recorded fid {value} cannot be compared with")
    return value


def check_champion(*, config: Config, seed: int, device: str = "auto") -> ChampionReport:
    """Load the verified champion pair and score it on the current test data exactly as the
    `evaluate` stage scores (`load_scoring`: same evaluator, feature extractor, splits, settings and
    torch device), with `seed` for the prior samples; compare with the FID recorded at promotion.
    `device` (auto, cpu, cuda) is ONNX Runtime's."""
    check_seed(seed)  # before any download
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vaegan-check-champion-") as download_dir:
        decoder, encoder = champion_pair(config=config, dst_dir=download_dir)
        decoder_label = f"{decoder.name} v{decoder.version}"
        promoted_fid = _recorded_fid(decoder.tags, decoder_label)
        scoring = load_scoring(config)
        autoencoder = OnnxAutoencoder(encoder.path, decoder.path, device)
        evaluation = scoring.score(autoencoder, seed=seed)
    prepared = config.data.prepared_dir
    report = ChampionReport(
        decoder=decoder_label,
        encoder=f"{encoder.name} v{encoder.version}",
        pair_id=str(decoder.tags.get("pair_id", "")),
        metrics=evaluation.metrics,
        promoted_fid=promoted_fid,
        max_fid_drift=config.registry.max_fid_drift,
        seed=seed,
        data_sha256=data_sha256(prepared),
        promoted_data_sha256=str(decoder.tags.get("data_sha256", "unknown")),
        evaluator_sha256=sha256_file(config.evaluator.path),
        promoted_evaluator_sha256=str(decoder.tags.get("evaluator_sha256", "unknown")),
        provider=active_provider(autoencoder.decoder),
        seconds=time.perf_counter() - started,
    )
    recorded_n = decoder.tags.get("metric.num_samples")
    if recorded_n is not None and float(recorded_n) != config.evaluate.num_samples:
        report.notes.append(
            f"promotion FID used {float(recorded_n):.0f} samples, this one {config.evaluate.num_samples}: "
            "FID depends on N"
        )
    recorded_test = decoder.tags.get("metric.num_test")
    if recorded_test is not None and float(recorded_test) != report.metrics["num_test"]:
        report.notes.append(
            f"promotion FID used {float(recorded_test):.0f} test images, "
            f"this one {report.metrics['num_test']} (evaluate.limit_test_images): FID depends on N"
        )
    recorded_features = decoder.tags.get("metric.feature_extractor")
    if recorded_features is not None and recorded_features != config.evaluate.feature_extractor:
        report.notes.append(
            f"promotion FID used {recorded_features} features, this one {config.evaluate.feature_extractor}: "
            "FIDs differ in scale"
        )
    if report.evaluator_sha256 != report.promoted_evaluator_sha256:
        report.notes.append("the evaluator differs from the one the promotion FID used: FIDs differ in scale")
    if report.data_sha256 != report.promoted_data_sha256:
        report.notes.append("the data differs from the data the champion was trained and evaluated on")
    return report


def log_check(config: Config, report: ChampionReport) -> str:
    """Log the check to the MLflow experiment `check-champion`; return the run id."""
    client = connect(config.tracking)
    experiment_id = ensure_experiment(client, config.tracking, EXPERIMENT)
    tags = {
        "model.decoder": report.decoder,
        "model.encoder": report.encoder,
        "pair_id": report.pair_id,
        "data_sha256": report.data_sha256,
        "evaluator_sha256": report.evaluator_sha256,
        "seed": str(report.seed),
        "onnx_provider": report.provider,
        "verdict": "pass" if report.passed else "drift",
    }
    run = client.create_run(experiment_id, run_name=f"check {report.decoder}", tags=tags)
    numeric = {k: float(v) for k, v in report.metrics.items() if isinstance(v, int | float)}
    numeric |= {"promoted_fid": report.promoted_fid, "fid_drift": report.fid_drift, "seconds": report.seconds}
    log_metrics(client, run.info.run_id, numeric)
    if report.notes:
        client.set_tag(run.info.run_id, "notes", " | ".join(report.notes))
    client.set_terminated(run.info.run_id, status="FINISHED" if report.passed else "FAILED")
    report.run_id = run.info.run_id
    return run.info.run_id


def report_markdown(report: ChampionReport) -> str:
    """The Prefect artifact / console summary of one check."""
    rows: list[tuple[str, Any, float | None]] = [("fid", report.fid, report.promoted_fid)]
    rows += [
        (key, report.metrics.get(key), None) for key in ("fid_recon", "precision", "recall", "psnr", "ssim")
    ]
    lines = [
        f"# Champion evaluation: {'pass' if report.passed else 'DRIFT'}",
        "",
        report.message(),
        "",
        "| metric | now | at promotion |",
        "| --- | --- | --- |",
    ]
    for name, now, then in rows:
        now_text = "" if now is None else f"{float(now):.4g}"
        lines.append(f"| {name} | {now_text} | {'' if then is None else f'{then:.4g}'} |")
    lines += ["", f"- pair: `{report.pair_id}`, ONNX Runtime provider: {report.provider}"]
    lines += [f"- MLflow run: `{report.run_id}` (experiment `{EXPERIMENT}`)"] if report.run_id else []
    lines += [f"- note: {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def run(config: Config, args: argparse.Namespace) -> int:
    """`vaegan check-champion`: exit 0 within the allowed drift, 1 beyond it."""
    seed = args.seed if args.seed is not None else fresh_seed()
    report = check_champion(config=config, seed=seed, device=args.device)
    log_check(config, report)
    print(report_markdown(report), end="")
    if not report.passed:
        raise ChampionDrift(report.message())
    return 0
