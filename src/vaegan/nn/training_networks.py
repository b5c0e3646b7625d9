"""The networks a training updates (`Networks`): the model, its decoder's moving average, the Adam
optimizers and the lr schedules, fresh for a config or restored from a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vaegan.config import Config, ModelConfig
from vaegan.nn.networks import VAEGAN, ModelArgs, build_model, model_args_for


def configured_model_args(model: ModelConfig) -> ModelArgs:
    """The network sizes the `model` section of the params describes."""
    return model_args_for(
        model.preset, model.latent_dim, model.spectral_norm, model.decoder_blocks, model.discriminator_blocks
    )


def initial_model(args: ModelArgs, seed: int) -> VAEGAN:
    """The freshly initialised networks for `seed`, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(args)


def decoder_ema(model: VAEGAN, decay: float, resume: dict[str, Any] | None) -> AveragedModel | None:
    """The decoder's exponential moving average (torch.optim.swa_utils), resumed when the checkpoint
    holds one; None when `decay` is 0."""
    if decay == 0.0:
        return None
    ema = AveragedModel(model.decoder, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    if resume is not None and resume.get("decoder_ema") is not None:
        ema.load_state_dict(resume["decoder_ema"])
    return ema


def adam_optimizers(model: VAEGAN, config: Config, device: torch.device) -> dict[str, torch.optim.Optimizer]:
    """Adam per network, with PyTorch's fused kernel (one vectorised pass over all of a network's
    parameters; the per-tensor loop took 13% of a default-preset step on CPU). Under
    `train.cuda_graph` the kernels are capturable and read their learning rate from a tensor on
    `device`, which the lr schedule updates in place (a float would be frozen into the graph)."""
    train = config.train
    graphed = train.cuda_graph

    def adam(module: nn.Module, lr: float) -> torch.optim.Optimizer:
        rate: float | torch.Tensor = torch.tensor(lr, device=device) if graphed else lr
        betas = (train.beta1, train.beta2)
        return torch.optim.Adam(module.parameters(), lr=rate, betas=betas, fused=True, capturable=graphed)

    optimizers = {"encoder": adam(model.encoder, train.lr), "decoder": adam(model.decoder, train.lr)}
    if train.objective == "vaegan":
        optimizers["discriminator"] = adam(model.discriminator, train.lr_discriminator)
    return optimizers


def graph_ready_groups(optimizer: torch.optim.Optimizer, graphed: bool, device: torch.device) -> None:
    """Make loaded param groups fit this run: `load_state_dict` takes `lr` and `capturable` from the
    checkpoint, and a run resumed with `train.cuda_graph` toggled needs them as `adam_optimizers`
    makes them (a float lr inside a captured step would never see the lr schedule again)."""
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        group["lr"] = torch.tensor(lr, device=device) if graphed else lr
        group["capturable"] = graphed


@dataclass
class Networks:
    """The model being trained, its decoder's moving average, its optimizers and lr schedules."""

    model: VAEGAN
    ema: AveragedModel | None
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.ExponentialLR]

    @classmethod
    def build(cls, config: Config, device: torch.device, resume: dict[str, Any] | None) -> Networks:
        """Fresh networks for `config`, or those of the `resume` checkpoint, on `device`."""
        train = config.train
        args = configured_model_args(config.model)
        model = initial_model(args, train.seed)
        optimizers = adam_optimizers(model, config, device)
        schedulers = {
            name: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=train.lr_decay)
            for name, opt in optimizers.items()
        }
        if resume is not None:
            model.encoder.load_state_dict(resume["encoder"])
            model.decoder.load_state_dict(resume["decoder"])
            model.discriminator.load_state_dict(resume["discriminator"])
        model.to(device)
        if train.channels_last:
            model.to(memory_format=torch.channels_last)
        ema = decoder_ema(model, train.ema_decay, resume)
        if resume is not None:
            saved = resume["state"]
            for name, opt in optimizers.items():
                opt.load_state_dict(saved["optimizers"][name])
                graph_ready_groups(opt, train.cuda_graph, device)
            for name, sched in schedulers.items():
                sched.load_state_dict(saved["schedulers"][name])
        return cls(model, ema, optimizers, schedulers)

    @property
    def lr(self) -> float:
        return float(self.optimizers["encoder"].param_groups[0]["lr"])

    @property
    def parts(self) -> list[nn.Module]:
        return [self.model.encoder, self.model.decoder, self.model.discriminator]

    def all_finite(self) -> bool:
        return all(
            bool(torch.isfinite(t).all())
            for m in self.parts
            for t in m.state_dict().values()
            if t.is_floating_point()
        )
