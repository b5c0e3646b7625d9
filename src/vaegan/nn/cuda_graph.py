"""The whole training step as one CUDA graph (`train.cuda_graph: true`, CUDA only).

On an H100 the default preset's eager step is bound by the host, not by the GPU: about 620 kernel
launches a step, 17.5 ms of wall time against 9.8 ms of kernel time at batch 1024 and 14.9 ms
against 3.8 ms at batch 256 (`bench.lab.profile_step`, docs/performance.md). PyTorch's whole-network
capture (`torch.cuda.graph`) records `train_step` - the forward pass, the three backward passes and
the three Adam steps - once; every later step is one replay after its batch is copied into the
graph's static inputs.

Every step is still a real step on its own batch: the first `WARMUP_STEPS` run eagerly on a side
stream (cuDNN picks its algorithms, Adam creates its state, as the capture recipe asks); the next
one is captured (capturing records the kernels without running them) and then replayed.

What capture needs, and where it is arranged:
- no host sync inside the step: `train_step` has none unless equilibrium gating is on, and the
  config refuses that pair (also compile and augmentation: `vaegan.config`);
- Adam with `capturable=True` and its learning rate as a tensor on the device
  (`vaegan.nn.training_networks.adam_optimizers`), so that the lr schedule's in-place updates
  reach the replays;
- the same input addresses on every replay: x, eps and z_prior are copied into static tensors;
- one process: an all-reduce inside a capture needs more than this does (`check_graphable`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from vaegan.errors import ConfigError
from vaegan.nn.step import LossSettings, StepModules, train_step

WARMUP_STEPS = 3  # eager steps before the capture (PyTorch's recipe uses a few)


def check_graphable(device: torch.device, world_size: int) -> None:
    """ConfigError unless a captured step can run here: a CUDA device, one process."""
    if device.type != "cuda":
        raise ConfigError(f"train.cuda_graph: needs a CUDA device; this run trains on {device.type}")
    if world_size > 1:
        raise ConfigError(f"train.cuda_graph: one process only; this run has {world_size} (torchrun)")


class GraphedStep:
    """`train_step` on static inputs: eager for the first steps, then captured once and replayed."""

    def __init__(
        self,
        modules: StepModules,
        settings: LossSettings,
        autocast: Callable[[], AbstractContextManager[object]],
        warmup_steps: int = WARMUP_STEPS,
    ) -> None:
        self.modules = modules
        self.settings = settings
        self.autocast = autocast
        self.warmup_left = warmup_steps
        self.inputs: tuple[torch.Tensor, ...] = ()
        self.graph: torch.cuda.CUDAGraph | None = None
        self.metrics: torch.Tensor | None = None  # the captured step's output, rewritten by each replay

    def __call__(self, x: torch.Tensor, eps: torch.Tensor, z_prior: torch.Tensor) -> torch.Tensor:
        """One training step on this batch; returns its metric vector (a tensor of its own)."""
        batch = (x, eps, z_prior)
        if not self.inputs:
            self.inputs = tuple(torch.empty_like(tensor) for tensor in batch)
        for static, tensor in zip(self.inputs, batch, strict=True):
            static.copy_(tensor)
        if self.warmup_left > 0:
            self.warmup_left -= 1
            return self._eager_on_side_stream()
        if self.graph is None:
            self._capture()
        assert self.graph is not None and self.metrics is not None
        self.graph.replay()
        return self.metrics.clone()

    def _step(self) -> torch.Tensor:
        x, eps, z_prior = self.inputs
        return train_step(self.modules, x, eps, z_prior, self.settings, self.autocast)

    def _eager_on_side_stream(self) -> torch.Tensor:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            metrics = self._step()
        torch.cuda.current_stream().wait_stream(side)
        return metrics.clone()

    def _capture(self) -> None:
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.metrics = self._step()
