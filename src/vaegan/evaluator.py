"""The evaluator: a small LeNet-style MNIST classifier whose penultimate layer defines the
Fréchet LeNet Distance (TF-GAN's `mnist_frechet_distance` idea), and which labels generated digits.

Architecture (input (B, 1, 28, 28) in [0, 1], normalised inside the network):

    conv 5x5 pad 2 (c1=32) + ReLU + maxpool 2   -> (B, 32, 14, 14)
    conv 5x5 pad 0 (c2=64) + ReLU + maxpool 2   -> (B, 64, 5, 5)
    flatten + linear (hidden=128) + ReLU        -> (B, 128)  = the FID features ("fc1")
    dropout 0.25 + linear (10)                  -> logits

Training is deterministic: CPU, a fixed seed for initialisation, shuffling and dropout, and the
RNG state of the caller restored afterwards. The checkpoint is a `kind="evaluator"` payload of
`vaegan.artifacts.checkpoint` holding its own architecture args, so `load_evaluator` rebuilds it exactly.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from vaegan.artifacts.atomic_io import write_json
from vaegan.artifacts.checkpoint import load_checkpoint, save_checkpoint
from vaegan.artifacts.provenance import git_commit
from vaegan.artifacts.stored_args import StoredArgs
from vaegan.data.splits import Split, data_sha256, load_split
from vaegan.errors import CheckpointError

if TYPE_CHECKING:
    from vaegan.config import Config

log = logging.getLogger(__name__)

KIND = "evaluator"
# MNIST pixel mean and std, applied inside the network so callers pass images in [0, 1].
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081


@dataclass(frozen=True)
class EvaluatorArgs(StoredArgs):
    """Everything needed to rebuild the classifier."""

    channels: tuple[int, int] = (32, 64)
    conv2_padding: int = 0  # 0: 14x14 -> 10x10 (-> 5x5 after pooling); 2 keeps 14x14 (-> 7x7)
    hidden: int = 128  # the FID feature dimension
    dropout: float = 0.25
    num_classes: int = 10


class LeNet(nn.Module):
    """LeNet-style classifier; `features` is the penultimate (fc1, post-ReLU) layer."""

    def __init__(self, args: EvaluatorArgs) -> None:
        super().__init__()
        self.args = args
        c1, c2 = args.channels
        side = (14 + 2 * args.conv2_padding - 4) // 2
        self.trunk = nn.Sequential(
            nn.Conv2d(1, c1, 5, padding=2),  # (B, c1, 28, 28)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c1, 14, 14)
            nn.Conv2d(c1, c2, 5, padding=args.conv2_padding),  # (B, c2, side * 2, side * 2)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, c2, side, side)
            nn.Flatten(),
            nn.Linear(c2 * side * side, args.hidden),  # fc1
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(args.dropout), nn.Linear(args.hidden, args.num_classes))

    @property
    def feature_dim(self) -> int:
        return self.args.hidden

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations (B, hidden) of images (B, 1, 28, 28) in [0, 1]."""
        return self.trunk((x - PIXEL_MEAN) / PIXEL_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes)."""
        return self.head(self.features(x))


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1]."""
    return torch.from_numpy(np.asarray(images, dtype=np.uint8)).float().div_(255.0).unsqueeze(1)


@torch.no_grad()
def predict(
    model: LeNet, images: torch.Tensor, batch_size: int = 1000, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, hidden) float32, predicted labels (N,) int64) of images (N, 1, 28, 28) in [0, 1]."""
    model.eval()
    feats, labels = [], []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device)
        f = model.features(batch)
        feats.append(f.float().cpu())
        labels.append(model.head(f).argmax(dim=1).cpu())
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def features(
    model: LeNet, images: torch.Tensor, batch_size: int = 1000, device: str | torch.device = "cpu"
) -> np.ndarray:
    """FID features (N, hidden) of images (N, 1, 28, 28) in [0, 1]."""
    return predict(model, images, batch_size, device)[0]


def accuracy(model: LeNet, split: Split, batch_size: int = 1000) -> float:
    """Fraction of `split` the classifier labels correctly."""
    _, predicted = predict(model, images_to_tensor(split.images), batch_size)
    return float((predicted == split.labels.astype(np.int64)).mean())


def warmup_cosine(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """LR factor per step: linear warm-up over `warmup_fraction` of the steps, then cosine to 0."""
    warmup = max(1, round(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image (B, 1, H, W) by its own random integer offset in [-max_shift, max_shift]
    (zero fill), drawn from `generator`."""
    if max_shift == 0:
        return images
    b, _, h, w = images.shape
    padded = nn.functional.pad(images, (max_shift,) * 4)  # (B, 1, H+2s, W+2s)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)
    rows = (torch.arange(h)[None, :] + dy[:, None])[:, :, None]  # (B, H, 1)
    cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, :]  # (B, 1, W)
    return padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)


def train_evaluator(
    *,
    train: Split,
    test: Split,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    max_shift: int = 2,
    args: EvaluatorArgs | None = None,
    progress: bool = False,
) -> tuple[LeNet, dict[str, Any]]:
    """Train the classifier deterministically on CPU; return it (eval mode) and its metrics."""
    args = args or EvaluatorArgs()
    x = images_to_tensor(train.images)
    y = torch.from_numpy(train.labels.astype(np.int64))
    steps_per_epoch = math.ceil(len(train) / batch_size)
    started = time.perf_counter()
    history = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LeNet(args)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(epochs * steps_per_epoch, warmup_fraction=0.2)
        )
        order = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            model.train()
            permutation = torch.randperm(len(train), generator=order)
            batches = range(0, len(train), batch_size)
            if progress:
                from tqdm import tqdm

                batches = tqdm(batches, desc=f"evaluator epoch {epoch + 1}/{epochs}", leave=False)
            total = 0.0
            for start in batches:
                index = permutation[start : start + batch_size]
                batch = random_shift(x[index], max_shift, order)
                loss = nn.functional.cross_entropy(model(batch), y[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += float(loss.detach()) * len(index)
            history.append(total / len(train))
            log.info("evaluator epoch %d/%d: train loss %.4f", epoch + 1, epochs, history[-1])
    model.eval()
    metrics = {
        "test_accuracy": accuracy(model, test),
        "train_accuracy": accuracy(model, train),
        "train_loss": history[-1],
        "num_train": len(train),
        "num_test": len(test),
        "epochs": epochs,
        "seed": seed,
        "feature_layer": "fc1 (post-ReLU)",
        "feature_dim": args.hidden,
        "train_seconds": round(time.perf_counter() - started, 2),
    }
    return model, metrics


def evaluator_payload(model: LeNet, config: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint dict of a trained evaluator."""
    return {
        "kind": KIND,
        "model_args": model.args.to_dict(),
        "config": config,
        "model": model.state_dict(),
        "state": state,
    }


def load_evaluator(path: str, map_location: str | torch.device = "cpu") -> LeNet:
    """Load an evaluator checkpoint and rebuild the classifier (eval mode); `CheckpointError` if unfit."""
    payload = load_checkpoint(path, KIND, map_location)
    try:
        model = LeNet(EvaluatorArgs.from_dict(payload["model_args"]))
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"evaluator checkpoint {path} does not match its architecture: {first}"
        ) from exc
    return model.eval()


def run(config: Config, args: argparse.Namespace) -> int:
    """`vaegan evaluator`: train the classifier on the train split, save it and its metrics."""
    cfg = config.evaluator
    prepared = config.data.prepared_dir
    train, test = load_split(prepared, "train"), load_split(prepared, "test")
    log.info("training the evaluator on %d images (%d epochs, seed %d)", len(train), cfg.epochs, cfg.seed)
    model, metrics = train_evaluator(
        train=train,
        test=test,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        max_shift=cfg.max_shift,
        progress=sys.stderr.isatty(),
    )
    state = {"data_sha256": data_sha256(prepared), "git_commit": git_commit(), "metrics": metrics}
    save_checkpoint(cfg.path, evaluator_payload(model, config.to_dict(), state))
    write_json(cfg.metrics_path, metrics)
    log.info(
        "evaluator test accuracy %.4f (%d test images) in %.1f s -> %s",
        metrics["test_accuracy"],
        metrics["num_test"],
        metrics["train_seconds"],
        cfg.path,
    )
    return 0
