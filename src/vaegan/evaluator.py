"""The `evaluator` stage: train the LeNet-style classifier (`vaegan.scoring.lenet`) whose
penultimate layer defines the Fréchet LeNet Distance, and save it with its metrics.

Training is deterministic: CPU, a fixed seed for initialisation, shuffling and dropout, and the
RNG state of the caller restored afterwards. Adam with a linear warm-up then cosine learning rate,
and random integer shifts of the training images.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vaegan.artifacts.atomic_io import write_json
from vaegan.artifacts.checkpoint import save_checkpoint
from vaegan.artifacts.provenance import git_commit
from vaegan.data.splits import Split, data_sha256, load_split
from vaegan.scoring.lenet import EvaluatorArgs, LeNet, accuracy, evaluator_payload, images_to_tensor

if TYPE_CHECKING:
    from vaegan.config import Config

log = logging.getLogger(__name__)


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
