"""The evaluation core: FID (Fréchet LeNet Distance by default), reconstruction metrics,
precision/recall and class statistics of an autoencoder, shared by `vaegan evaluate` and the
champion check (`vaegan check-champion`).

`load_scoring(config)` is the one builder both use: it loads what `evaluate.*` and `evaluator.*`
name (the evaluator, the feature extractor, the test and floor splits, the device) and fixes the
settings, so `Scoring.score(model, seed=...)` measures a PyTorch `VAEGAN` and the registry's ONNX
pair alike. `evaluate_model` is the core underneath (keyword arguments in, an `Evaluation` out, no
files).

Every image that reaches a feature extractor is 8-bit quantised first (generated and reconstructed
images are rounded to k/255 exactly like the real data), prior samples come from a CPU generator
seeded with the given seed, and the work is batched under `torch.no_grad()` on the chosen device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from vaegan.data.splits import Split, load_split
from vaegan.errors import CheckpointError, ConfigError
from vaegan.nn.devices import select_device
from vaegan.nn.networks import VAEGAN
from vaegan.scoring import metrics as M
from vaegan.scoring.inception import load_fid_inception
from vaegan.scoring.lenet import LeNet, images_to_tensor, load_evaluator

if TYPE_CHECKING:
    from vaegan.config import Config

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # (B, 1, 28, 28) in [0, 1] -> (B, D)

# Top-level numeric keys of metrics/eval.json (the registry reads `fid` and `evaluator_test_accuracy`).
METRIC_KEYS = (
    "fid", "fid_standard_prior", "fid_recon", "fid_floor", "recon_mse", "recon_bce", "psnr", "ssim", "kl",
    "precision", "recall", "evaluator_test_accuracy", "label_consistency", "sample_class_entropy",
)  # fmt: skip
NUM_EXAMPLES = 100  # prior samples kept for the report's grid
FLOOR_SPLIT = "train"  # real images whose FID to the test split is the floor (a perfect model's FID)


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


def to_uint8_tensor(images: torch.Tensor) -> np.ndarray:
    """Quantised float images in [0, 1] -> uint8 numpy, exactly (they are already on the k/255 grid)."""
    return torch.round(images * 255.0).to(torch.uint8).cpu().numpy()


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


@dataclass
class _TestPass:
    """What one pass over the test split gathers: features and labels of the real images and of
    their reconstructions, the summed reconstruction errors, KL terms, encoder means and the
    quantised reconstructions."""

    real: _Features = field(default_factory=_Features)
    recon: _Features = field(default_factory=_Features)
    sq_err: float = 0.0
    bce: float = 0.0
    kl_parts: list[np.ndarray] = field(default_factory=list)
    mu_parts: list[np.ndarray] = field(default_factory=list)
    recon_images: list[np.ndarray] = field(default_factory=list)


def _test_pass(
    autoencoder: Autoencoder, test: Split, *, evaluator: LeNet, extractor: FeatureFn | None, batch_size: int,
    device: torch.device,
) -> _TestPass:  # fmt: skip
    """Reconstruct the test split batch by batch (from the posterior mean) and gather `_TestPass`."""
    tested = _TestPass()
    x_all = images_to_tensor(test.images)  # (N, 1, 28, 28) in [0, 1], exactly the 8-bit data
    for start in range(0, len(test), batch_size):
        x = x_all[start : start + batch_size].to(device)
        mu, logvar, probs = autoencoder.reconstruct(x)  # reconstructions from the posterior mean
        probs = probs.to(device)
        tested.sq_err += float(((probs - x) ** 2).sum())
        tested.bce += float(F.binary_cross_entropy(probs.float(), x, reduction="sum"))  # log clamped at -100
        tested.kl_parts.append(M.gaussian_kl(mu.cpu().numpy(), logvar.cpu().numpy()))
        tested.mu_parts.append(mu.float().cpu().numpy())
        x_hat = quantise(probs)
        tested.recon_images.append(x_hat[:, 0].cpu().numpy())
        tested.real.add(x, evaluator, extractor)
        tested.recon.add(x_hat, evaluator, extractor)
    return tested


def _real_features(
    split: Split, *, evaluator: LeNet, extractor: FeatureFn | None, batch_size: int, device: torch.device
) -> _Features:
    """Features and labels of a split's real images."""
    features = _Features()
    x_all = images_to_tensor(split.images)
    for start in range(0, len(split), batch_size):
        features.add(x_all[start : start + batch_size].to(device), evaluator, extractor)
    return features


def _prior_fids(
    autoencoder: Autoencoder,
    fid: float,
    real_f: np.ndarray,
    draw: Callable[..., tuple[_Features, np.ndarray]],
) -> tuple[str, float | None]:
    """(the model's latent prior, FID of the same networks sampled from N(0, I)): a PyTorch model's
    own; ONNX graphs carry no prior of their own ("standard", None)."""
    if not isinstance(autoencoder, TorchAutoencoder):
        return "standard", None
    prior = autoencoder.model.prior.kind
    if prior == "standard":
        return prior, fid
    standard, _ = draw(autoencoder.generate_standard)
    return prior, _fid(real_f, standard.arrays()[0])


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
    extractor = feature_extractor
    tested = _test_pass(
        autoencoder, test, evaluator=evaluator, extractor=extractor, batch_size=batch_size, device=device
    )
    # real vs real: the FID of a perfect model at this N
    floor_set = _real_features(
        floor, evaluator=evaluator, extractor=extractor, batch_size=batch_size, device=device
    )
    draw = functools.partial(
        _generated, num_samples=num_samples, seed=seed, latent_dim=autoencoder.latent_dim,
        batch_size=batch_size, evaluator=evaluator, extractor=extractor, device=device,
    )  # fmt: skip
    fake, kept = draw(autoencoder.generate)

    real_f, real_labels = tested.real.arrays()
    recon_f, recon_labels = tested.recon.arrays()
    floor_f, _ = floor_set.arrays()
    fake_f, fake_labels = fake.arrays()
    originals = test.images.astype(np.float64) / 255.0
    reconstructions = np.concatenate(tested.recon_images).astype(np.float64)
    precision, recall = M.precision_recall(real_f, fake_f, k=precision_recall_k)
    test_labels = test.labels.astype(np.int64)
    num_pixels = originals[0].size
    fid = _fid(real_f, fake_f)
    prior, fid_standard = _prior_fids(autoencoder, fid, real_f, draw)
    values: dict[str, Any] = {
        "fid": fid,
        "fid_standard_prior": fid_standard,
        "prior": prior,
        "fid_recon": _fid(real_f, recon_f),
        "fid_floor": _fid(floor_f, real_f),
        "recon_mse": tested.sq_err / (len(test) * num_pixels),
        "recon_bce": tested.bce / len(test),
        "psnr": M.psnr(originals, reconstructions),
        "ssim": M.ssim(originals, reconstructions),
        "kl": float(np.concatenate(tested.kl_parts).mean()),
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
        test_mu=np.concatenate(tested.mu_parts),
        sample_class_counts=np.bincount(fake_labels, minlength=10),
        test_class_counts=np.bincount(test_labels, minlength=10),
    )


def load_feature_extractor(config: Config, device: torch.device) -> FeatureFn | None:
    """None for the evaluator's own features (lenet); the FID Inception for `inception`."""
    if config.evaluate.feature_extractor == "lenet":
        return None
    if not config.evaluate.inception_weights:
        raise ConfigError(
            "evaluate.inception_weights: required when evaluate.feature_extractor is 'inception'"
        )
    return load_fid_inception(config.evaluate.inception_weights).to(device)


@dataclass(frozen=True, eq=False)
class Scoring:
    """Everything a scoring fixes besides the model and the seed: evaluator, features, data, settings."""

    evaluator: LeNet
    feature_extractor: FeatureFn | None
    feature_name: str
    test: Split
    floor: Split
    num_samples: int
    batch_size: int
    precision_recall_k: int
    device: torch.device

    def score(self, model: VAEGAN | Autoencoder, *, seed: int) -> Evaluation:
        """`evaluate_model` of `model` with prior samples drawn from `seed`."""
        return evaluate_model(
            model=model, evaluator=self.evaluator, test=self.test, floor=self.floor,
            num_samples=self.num_samples, seed=seed, batch_size=self.batch_size,
            precision_recall_k=self.precision_recall_k, feature_extractor=self.feature_extractor,
            feature_name=self.feature_name, device=self.device,
        )  # fmt: skip


def load_scoring(config: Config) -> Scoring:
    """The scoring `evaluate.*` describes: the feature extractor `evaluate.feature_extractor`, the
    evaluator at `evaluator.path`, the test split against the floor split of `data.prepared_dir`
    (their first `evaluate.limit_test_images` when that is set), `evaluate.num_samples`,
    `batch_size`, `precision_recall_k`, on `evaluate.device`."""
    cfg = config.evaluate
    device = select_device(cfg.device)
    extractor = load_feature_extractor(config, device)
    if not Path(config.evaluator.path).is_file():
        raise CheckpointError(
            f"evaluator checkpoint {config.evaluator.path} does not exist: run `vaegan evaluator` "
            "(or `dvc pull evaluator`) first"
        )
    prepared = config.data.prepared_dir
    return Scoring(
        evaluator=load_evaluator(config.evaluator.path),
        feature_extractor=extractor,
        feature_name=cfg.feature_extractor,
        test=load_split(prepared, "test").head(cfg.limit_test_images),
        floor=load_split(prepared, FLOOR_SPLIT).head(cfg.limit_test_images),
        num_samples=cfg.num_samples,
        batch_size=cfg.batch_size,
        precision_recall_k=cfg.precision_recall_k,
        device=device,
    )
