"""The `evaluate` stage: FID (Fréchet LeNet Distance by default), reconstruction metrics,
precision/recall and class statistics of a trained VAE-GAN, then the report and MLflow logging.

`evaluate_model` is the core (keyword arguments in, an `Evaluation` out, no files); `run` is the
stage entry (load checkpoint, evaluator and data; write metrics/eval.json and the report; log).

Every image that reaches a feature extractor is 8-bit quantised first (generated and reconstructed
images are rounded to k/255 exactly like the real data), prior samples come from a CPU generator
seeded with `evaluate.seed`, and the work is batched under `torch.no_grad()` on the chosen device.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from vaegan.artifacts.atomic_io import write_json
from vaegan.artifacts.checkpoint import load_checkpoint, model_from_checkpoint
from vaegan.artifacts.provenance import sha256_file
from vaegan.data.splits import Split, data_sha256, load_split
from vaegan.errors import CheckpointError, ConfigError
from vaegan.evaluator import LeNet, images_to_tensor, load_evaluator
from vaegan.nn.networks import VAEGAN
from vaegan.scoring import metrics as M

if TYPE_CHECKING:
    from vaegan.config import Config

log = logging.getLogger(__name__)

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # (B, 1, 28, 28) in [0, 1] -> (B, D)

# Top-level numeric keys of metrics/eval.json (the registry reads `fid` and `evaluator_test_accuracy`).
METRIC_KEYS = (
    "fid", "fid_standard_prior", "fid_recon", "fid_floor", "recon_mse", "recon_bce", "psnr", "ssim", "kl",
    "precision", "recall", "evaluator_test_accuracy", "label_consistency", "sample_class_entropy",
)  # fmt: skip
NUM_EXAMPLES = 100  # prior samples kept for the report's grid


@dataclass
class Evaluation:
    """What `evaluate_model` measured, plus the arrays the report draws."""

    metrics: dict[str, Any]
    samples: np.ndarray  # (NUM_EXAMPLES, 28, 28) uint8, the first prior samples
    test_mu: np.ndarray  # (num_test, latent_dim) float32, encoder means of the test set
    sample_class_counts: np.ndarray  # (10,) evaluator labels of the prior samples
    test_class_counts: np.ndarray  # (10,) true labels of the test set
    info: dict[str, Any] = field(default_factory=dict)


def quantise(images: torch.Tensor) -> torch.Tensor:
    """Round images in [0, 1] to the 8-bit grid k/255 (as real data is), staying in float."""
    return torch.round(images.clamp(0.0, 1.0) * 255.0) / 255.0


@dataclass
class _Features:
    """Per-set accumulators: FID features and evaluator labels."""

    feats: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)

    def add(self, images: torch.Tensor, evaluator: LeNet, extractor: FeatureFn | None) -> None:
        lenet_feats = evaluator.features(images)
        self.labels.append(evaluator.head(lenet_feats).argmax(dim=1).cpu().numpy())
        chosen = lenet_feats if extractor is None else extractor(images)
        self.feats.append(chosen.double().cpu().numpy())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.feats), np.concatenate(self.labels)


def _fid(a: np.ndarray, b: np.ndarray) -> float:
    return M.frechet_distance(*M.gaussian_statistics(a), *M.gaussian_statistics(b))


class Autoencoder(Protocol):
    """What evaluation needs of a model: reconstructions and generated images.

    `TorchAutoencoder` wraps a trained `VAEGAN`; `vaegan.scoring.onnx_model.OnnxAutoencoder` wraps the
    exported ONNX graphs, so the registry's artifacts are scored by the same code.
    """

    latent_dim: int

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, 1, 28, 28) -> (mu, logvar, pixel probabilities of the decoded posterior mean)."""
        ...

    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        """Standard-normal noise (B, Z) -> pixel probabilities, through the model's latent prior."""
        ...


class TorchAutoencoder:
    """A `VAEGAN`'s encoder, decoder and prior (eval mode, on `device`) as an `Autoencoder`."""

    def __init__(self, model: VAEGAN, device: torch.device) -> None:
        self.model = model.eval().to(device)
        self.device = device
        self.latent_dim = model.args.latent_dim

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.model.encoder(x.to(self.device))
        return mu, logvar, self.model.decoder.decode(mu)

    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        return self.model.generate(noise.to(self.device))

    def generate_standard(self, noise: torch.Tensor) -> torch.Tensor:
        """Images from z ~ N(0, I), the prior the networks trained with (for `fid_standard`)."""
        return self.model.decoder.decode(noise.to(self.device))


def _generated(
    generate: Callable[[torch.Tensor], torch.Tensor], *, num_samples: int, seed: int, latent_dim: int,
    batch_size: int, evaluator: LeNet, extractor: FeatureFn | None, device: torch.device,
) -> tuple[_Features, np.ndarray]:  # fmt: skip
    """Features of `num_samples` generated images and the first NUM_EXAMPLES of them (uint8).

    The noise comes from a CPU generator seeded with `seed`: the same draws on every device."""
    generator = torch.Generator().manual_seed(seed)
    fake = _Features()
    kept: list[np.ndarray] = []
    for start in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - start)
        noise = torch.randn(count, latent_dim, generator=generator).to(device)
        samples = quantise(generate(noise).to(device))
        fake.add(samples, evaluator, extractor)
        if sum(len(k) for k in kept) < NUM_EXAMPLES:
            kept.append(to_uint8_tensor(samples[:, 0]))
    return fake, np.concatenate(kept)[:NUM_EXAMPLES]


@torch.no_grad()
def evaluate_model(
    *,
    model: VAEGAN | Autoencoder,
    evaluator: LeNet,
    test: Split,
    floor: Split,
    num_samples: int,
    seed: int,
    batch_size: int = 1000,
    precision_recall_k: int = 3,
    feature_extractor: FeatureFn | None = None,
    feature_name: str = "lenet",
    device: str | torch.device = "cpu",
) -> Evaluation:
    """Measure `model` against the test split (`floor`: real images whose FID to the test split is the
    floor); `feature_extractor` None means the evaluator's fc1."""
    device = torch.device(device)
    autoencoder = TorchAutoencoder(model, device) if isinstance(model, VAEGAN) else model
    evaluator = evaluator.eval().to(device)
    real, recon, floor_set = _Features(), _Features(), _Features()
    sq_err = bce = 0.0
    kl_parts, mu_parts, recon_images = [], [], []
    x_all = images_to_tensor(test.images)  # (N, 1, 28, 28) in [0, 1], exactly the 8-bit data
    for start in range(0, len(test), batch_size):
        x = x_all[start : start + batch_size].to(device)
        mu, logvar, probs = autoencoder.reconstruct(x)  # reconstructions from the posterior mean
        probs = probs.to(device)
        sq_err += float(((probs - x) ** 2).sum())
        bce += float(F.binary_cross_entropy(probs.float(), x, reduction="sum"))  # log clamped at -100
        kl_parts.append(M.gaussian_kl(mu.cpu().numpy(), logvar.cpu().numpy()))
        mu_parts.append(mu.float().cpu().numpy())
        x_hat = quantise(probs)
        recon_images.append(x_hat[:, 0].cpu().numpy())
        real.add(x, evaluator, feature_extractor)
        recon.add(x_hat, evaluator, feature_extractor)
    x_floor = images_to_tensor(floor.images)  # real vs real: the FID of a perfect model at this N
    for start in range(0, len(floor), batch_size):
        floor_set.add(x_floor[start : start + batch_size].to(device), evaluator, feature_extractor)

    def draw(generate: Callable[[torch.Tensor], torch.Tensor]) -> tuple[_Features, np.ndarray]:
        return _generated(
            generate, num_samples=num_samples, seed=seed, latent_dim=autoencoder.latent_dim,
            batch_size=batch_size, evaluator=evaluator, extractor=feature_extractor, device=device,
        )  # fmt: skip

    fake, kept = draw(autoencoder.generate)

    real_f, real_labels = real.arrays()
    recon_f, recon_labels = recon.arrays()
    floor_f, _ = floor_set.arrays()
    fake_f, fake_labels = fake.arrays()
    originals = test.images.astype(np.float64) / 255.0
    reconstructions = np.concatenate(recon_images).astype(np.float64)
    precision, recall = M.precision_recall(real_f, fake_f, k=precision_recall_k)
    test_labels = test.labels.astype(np.int64)
    num_pixels = originals[0].size
    fid = _fid(real_f, fake_f)
    prior = "standard"
    fid_standard: float | None = None  # the same networks sampled from N(0, I); not in ONNX graphs
    if isinstance(autoencoder, TorchAutoencoder):
        prior = autoencoder.model.prior.kind
        fid_standard = fid
        if prior != "standard":
            standard, _ = draw(autoencoder.generate_standard)
            fid_standard = _fid(real_f, standard.arrays()[0])
    values: dict[str, Any] = {
        "fid": fid,
        "fid_standard_prior": fid_standard,
        "prior": prior,
        "fid_recon": _fid(real_f, recon_f),
        "fid_floor": _fid(floor_f, real_f),
        "recon_mse": sq_err / (len(test) * num_pixels),
        "recon_bce": bce / len(test),
        "psnr": M.psnr(originals, reconstructions),
        "ssim": M.ssim(originals, reconstructions),
        "kl": float(np.concatenate(kl_parts).mean()),
        "precision": precision,
        "recall": recall,
        "evaluator_test_accuracy": float((real_labels == test_labels).mean()),
        "label_consistency": float((recon_labels == real_labels).mean()),
        "sample_class_entropy": M.class_entropy(fake_labels),
        "num_samples": num_samples,
        "num_test": len(test),
        "num_floor": len(floor),
        "seed": seed,
        "precision_recall_k": precision_recall_k,
        "feature_extractor": feature_name,
        "feature_dim": int(real_f.shape[1]),
    }
    return Evaluation(
        metrics=values,
        samples=kept,
        test_mu=np.concatenate(mu_parts),
        sample_class_counts=np.bincount(fake_labels, minlength=10),
        test_class_counts=np.bincount(test_labels, minlength=10),
    )


def to_uint8_tensor(images: torch.Tensor) -> np.ndarray:
    """Quantised float images in [0, 1] -> uint8 numpy, exactly (they are already on the k/255 grid)."""
    return torch.round(images * 255.0).to(torch.uint8).cpu().numpy()


def load_feature_extractor(config: Config, device: torch.device) -> FeatureFn | None:
    """None for the evaluator's own features (lenet); the FID Inception for `inception`."""
    if config.evaluate.feature_extractor == "lenet":
        return None
    from vaegan.scoring.inception import load_fid_inception

    if not config.evaluate.inception_weights:
        raise ConfigError(
            "evaluate.inception_weights: required when evaluate.feature_extractor is 'inception'"
        )
    return load_fid_inception(config.evaluate.inception_weights).to(device)


def checkpoint_path(config: Config) -> str:
    """The model file `evaluate` reads: evaluate.checkpoint, else train.model_path."""
    return config.evaluate.checkpoint or config.train.model_path


def load_baseline(path: str | None) -> dict[str, Any] | None:
    """The baseline's metrics JSON, or None when there is none (yet)."""
    if not path or not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"evaluate.baseline_metrics: {path} is not a readable JSON file: {exc}") from exc
    return data if isinstance(data, dict) else None


def run(config: Config, args: argparse.Namespace) -> int:
    """`vaegan evaluate`: metrics JSON, report directory, MLflow metrics and artifacts."""
    from vaegan.nn.devices import select_device
    from vaegan.scoring.report import write_report

    cfg = config.evaluate
    started = time.perf_counter()
    device = select_device(cfg.device)
    extractor = load_feature_extractor(config, device)
    model_path = checkpoint_path(config)
    payload = load_checkpoint(model_path, "vaegan")
    model = model_from_checkpoint(payload, model_path)
    if not Path(config.evaluator.path).is_file():
        raise CheckpointError(
            f"evaluator checkpoint {config.evaluator.path} does not exist: run `vaegan evaluator` first"
        )
    evaluator = load_evaluator(config.evaluator.path)
    prepared = config.data.prepared_dir
    test, train = load_split(prepared, "test"), load_split(prepared, "train")
    log.info(
        "evaluating %s on %s: %d test images, %d prior samples (seed %d), %s features",
        model_path,
        device,
        len(test),
        cfg.num_samples,
        cfg.seed,
        cfg.feature_extractor,
    )
    evaluation = evaluate_model(
        model=model, evaluator=evaluator, test=test, floor=train, num_samples=cfg.num_samples, seed=cfg.seed,
        batch_size=cfg.batch_size, precision_recall_k=cfg.precision_recall_k, feature_extractor=extractor,
        feature_name=cfg.feature_extractor, device=device,
    )  # fmt: skip
    state = payload.get("state") or {}
    evaluation.metrics["provenance"] = {
        "checkpoint": str(model_path),
        "checkpoint_sha256": sha256_file(model_path),
        "evaluator_sha256": sha256_file(config.evaluator.path),
        "data_sha256": data_sha256(prepared),
        "objective": str(
            state.get("objective") or payload.get("config", {}).get("train", {}).get("objective")
        ),
    }
    baseline = load_baseline(cfg.baseline_metrics)
    evaluation.info["device"] = str(device)
    evaluation.info["seconds"] = round(time.perf_counter() - started, 2)
    write_report(
        out_dir=cfg.report_dir, model=model, evaluation=evaluation, test=test, baseline=baseline,
        baseline_path=cfg.baseline_metrics, seed=cfg.seed, device=device,
    )  # fmt: skip
    write_json(cfg.metrics_path, evaluation.metrics)
    seconds = time.perf_counter() - started
    log.info(
        "fid %.3f (floor %.3f, recon %.3f), precision %.3f recall %.3f, psnr %.2f dB, ssim %.4f "
        "in %.1f s -> %s",
        evaluation.metrics["fid"], evaluation.metrics["fid_floor"], evaluation.metrics["fid_recon"],
        evaluation.metrics["precision"], evaluation.metrics["recall"], evaluation.metrics["psnr"],
        evaluation.metrics["ssim"], seconds, cfg.metrics_path,
    )  # fmt: skip
    log_to_mlflow(config, evaluation.metrics, state.get("mlflow_run_id"), seconds)
    return 0


def log_to_mlflow(config: Config, values: dict[str, Any], run_id: str | None, seconds: float) -> str:
    """Log the metrics (as `eval/<key>`), the metrics JSON and the report to the training's MLflow run
    when it exists in this tracking store, else to a new run; return the run id."""
    from mlflow.entities import Metric

    from vaegan.tracking.store import connect, dvc_experiment_tags, ensure_experiment

    client = connect(config.tracking)
    own_run = False
    if run_id:
        try:
            client.get_run(run_id)
        except Exception:  # mlflow raises MlflowException for an unknown run
            log.warning(
                "MLflow run %s (from the checkpoint) is not in this store; logging to a new run", run_id
            )
            run_id = None
    if not run_id:
        experiment_id = ensure_experiment(client, config.tracking)
        run_id = client.create_run(
            experiment_id, run_name="evaluate", tags={"vaegan.stage": "evaluate", **dvc_experiment_tags()}
        ).info.run_id
        own_run = True
    now = int(time.time() * 1000)
    keys = (*METRIC_KEYS, "num_samples", "num_test")
    numeric = {key: float(values[key]) for key in keys if values.get(key) is not None}
    numeric["seconds"] = seconds
    client.log_batch(run_id, metrics=[Metric(f"eval/{key}", value, now, 0) for key, value in numeric.items()])
    client.set_tag(run_id, "eval.feature_extractor", str(values.get("feature_extractor")))
    client.log_artifact(run_id, config.evaluate.metrics_path, artifact_path="evaluation")
    client.log_artifacts(run_id, config.evaluate.report_dir, artifact_path="evaluation/report")
    if own_run:
        client.set_terminated(run_id)
    log.info("logged evaluation to MLflow run %s", run_id)
    return run_id
