"""The FID Inception-v3 (the TensorFlow 2015-12-05 graph ported to PyTorch by pytorch-fid), so that
a local `pt_inception-2015-12-05-*.pth` weights file gives features comparable with the literature.

The network is torchvision's `Inception3` (1008 classes, no auxiliary head) with the TensorFlow
graph's pooling quirks in the mixed blocks: the pool branch of blocks A, C and the first E averages
over valid pixels only (`count_include_pad=False`), and the last E block max-pools. Features are
the 2048-d output of the final average pool (pytorch-fid's block 3). Inputs are (B, 1 or 3, H, W)
in [0, 1]; grey images are repeated to three channels, resized bilinearly to 299x299
(align_corners=False) and scaled to [-1, 1], as pytorch-fid does.

Nothing is downloaded: the weights must be a local file (`evaluate.inception_weights`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import inception as tv

from vaegan.errors import CheckpointError, first_line

FEATURE_DIM = 2048
INPUT_SIZE = 299


def _valid_avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class TFInceptionA(tv.InceptionA):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(_valid_avg_pool(x))
        return torch.cat([self.branch1x1(x), b5, b3, pool], 1)


class TFInceptionC(tv.InceptionC):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = x
        for layer in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            b7d = layer(b7d)
        pool = self.branch_pool(_valid_avg_pool(x))
        return torch.cat([self.branch1x1(x), b7, b7d, pool], 1)


class TFInceptionE(tv.InceptionE):
    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__(in_channels)
        self.max_pool = max_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _valid_avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, b3d, self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """Images (B, 1|3, H, W) in [0, 1] -> pool3 features (B, 2048)."""

    def __init__(self) -> None:
        super().__init__()
        net = tv.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
        net.Mixed_5b = TFInceptionA(192, pool_features=32)
        net.Mixed_5c = TFInceptionA(256, pool_features=64)
        net.Mixed_5d = TFInceptionA(288, pool_features=64)
        net.Mixed_6b = TFInceptionC(768, channels_7x7=128)
        net.Mixed_6c = TFInceptionC(768, channels_7x7=160)
        net.Mixed_6d = TFInceptionC(768, channels_7x7=160)
        net.Mixed_6e = TFInceptionC(768, channels_7x7=192)
        net.Mixed_7b = TFInceptionE(1280, max_pool=False)
        net.Mixed_7c = TFInceptionE(2048, max_pool=True)
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0  # (B, 3, 299, 299) in [-1, 1]
        n = self.net
        for layer in (n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.maxpool1,
                      n.Conv2d_3b_1x1, n.Conv2d_4a_3x3, n.maxpool2,
                      n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c, n.Mixed_6d,
                      n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c, n.avgpool):  # fmt: skip
            x = layer(x)
        return torch.flatten(x, 1)  # (B, 2048)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a state dict in the weights file's layout (torchvision Inception3 key names)."""
        self.net.load_state_dict(state_dict)


def load_fid_inception(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> FIDInception:
    """The FID Inception with the weights of a local file (eval mode); `CheckpointError` if unusable."""
    weights = Path(path)
    if not weights.is_file():
        raise CheckpointError(
            f"Inception weights file {weights} (evaluate.inception_weights) does not exist: download "
            "pytorch-fid's pt_inception-2015-12-05-6726825d.pth on a connected machine and copy it here"
        )
    try:
        state = torch.load(weights, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"Inception weights file {weights} cannot be read: {first_line(exc)}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"Inception weights file {weights} does not hold a state dict")
    model = FIDInception()
    try:
        model.load_weights(state)
    except RuntimeError as exc:
        first = first_line(exc)
        raise CheckpointError(
            f"Inception weights file {weights} does not fit the FID Inception-v3: {first}"
        ) from exc
    return model.eval()
