"""The evaluator network: a small LeNet-style MNIST classifier whose penultimate layer defines the
Fréchet LeNet Distance (TF-GAN's `mnist_frechet_distance` idea), and which labels generated digits.

Architecture (input (B, 1, 28, 28) in [0, 1], normalised inside the network):

    conv 5x5 pad 2 (c1=32) + ReLU + maxpool 2   -> (B, 32, 14, 14)
    conv 5x5 pad 0 (c2=64) + ReLU + maxpool 2   -> (B, 64, 5, 5)
    flatten + linear (hidden=128) + ReLU        -> (B, 128)  = the FID features ("fc1")
    dropout 0.25 + linear (10)                  -> logits

The checkpoint is a `kind="evaluator"` payload of `vaegan.artifacts.checkpoint` holding its own
architecture args, so `load_evaluator` rebuilds it exactly. `vaegan evaluator` (vaegan.evaluator)
trains it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from vaegan.artifacts.checkpoint import load_checkpoint
from vaegan.artifacts.stored_args import StoredArgs
from vaegan.data.splits import Split
from vaegan.errors import CheckpointError, first_line

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
        first = first_line(exc)
        raise CheckpointError(
            f"evaluator checkpoint {path} does not match its architecture: {first}"
        ) from exc
    return model.eval()
