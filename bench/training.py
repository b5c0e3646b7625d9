"""Training throughput: `vaegan train`'s loop (`vaegan.nn.loop.fit_vaegan`) against a textbook loop.

Both sides train the same networks (`vaegan.nn.networks.build_model`) with the same losses, gradient
routing and Adam settings, on 60,000 MNIST images:

- project: `fit_vaegan` itself, with the data on the device, no per-step host syncs, noise drawn on
  the device, one forward pass for all three networks; throughput is read from its own log windows
  (`observer.on_log(..., images_per_s)`, timed between host syncs);
- textbook: a DataLoader over a CPU TensorDataset (shuffle, drop_last), `.to(device)` per batch,
  fp32 eager, the decoder and discriminator called once per input, the losses written inline, and
  `.item()` on each loss every step (the usual logging), timed per window of steps.

Each (implementation, preset, batch) runs in its own process (`python -m bench.training ...`) so
that its peak host RSS (`ru_maxrss`) and GPU `max_memory_allocated` are its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from bench.data import real_images
from bench.device_sync import sync_device
from bench.turns import Turns
from vaegan.config import Config, build_config
from vaegan.nn.devices import select_device
from vaegan.nn.loop import fit_vaegan
from vaegan.nn.networks import build_model, model_args_for

EPOCH_IMAGES = 60_000


@dataclass(frozen=True)
class Schedule:
    """How many steps to run: `warmup_windows` untimed windows, then `windows` timed ones."""

    window_steps: int
    windows: int
    warmup_windows: int = 1

    @property
    def total_steps(self) -> int:
        return self.window_steps * (self.windows + self.warmup_windows)


class _WindowObserver:
    """Collects fit_vaegan's per-window throughput (its `images_per_s` log value).

    With `turns`, each window but the last ends by handing the token over; the loop's clock for the
    next window is already running then, so the time spent waiting is taken out of that window."""

    def __init__(self, schedule: Schedule, batch: int, turns: Turns | None = None) -> None:
        self.images_per_s: list[float] = []
        self.window_images = schedule.window_steps * batch
        self.windows = schedule.windows + schedule.warmup_windows
        self.turns = turns
        self.waited = 0.0  # seconds of the running window spent waiting for the token

    def on_log(self, step: int, values: dict[str, float]) -> None:
        seconds = self.window_images / float(values["images_per_s"]) - self.waited
        self.images_per_s.append(self.window_images / seconds)
        last = len(self.images_per_s) == self.windows
        self.waited = self.turns.hand_over() if self.turns is not None and not last else 0.0

    def on_epoch(self, epoch: int, row: dict[str, Any], grids: dict[str, np.ndarray]) -> None:
        pass

    def on_checkpoint(self, payload: dict[str, Any]) -> None:
        pass


@dataclass(frozen=True)
class Variant:
    """One way to run the project's loop: the `train.*` params it runs with."""

    train: dict[str, Any] = field(default_factory=dict)

    def settings(self, config: Config) -> dict[str, Any]:
        """What the JSON records of this variant: the train.* values `config` (its config) ran with."""
        train = config.train
        return {
            "precision": train.precision, "compile": train.compile, "channels_last": train.channels_last,
            "d_pass": train.d_pass, "cuda_graph": train.cuda_graph, "data": "on the device",
        }  # fmt: skip


def variant_config(
    variant: Variant, *, preset: str, batch: int, device: torch.device, schedule: Schedule
) -> Config:
    """The config the bench trains with: the preset, `schedule.total_steps` steps logged once a
    window, no checkpoints, the variant's train.* params."""
    train = {
        "batch_size": batch, "epochs": 1000, "max_steps": schedule.total_steps,
        "log_every": schedule.window_steps, "checkpoint_every": schedule.total_steps + 1,
        "device": device.type, "resume": "never", **variant.train,
    }  # fmt: skip
    return build_config({"model": {"preset": preset}, "train": train})


def project_throughput(
    *,
    batch: int,
    images: np.ndarray,
    device: torch.device,
    schedule: Schedule,
    config: Config,
    turns: Turns | None = None,
) -> list[float]:
    """Images/s of each timed window of `fit_vaegan` trained with `config` (a variant's
    `variant_config`; the warm-up windows are dropped); with
    `turns`, training starts when the token arrives and the token moves on after each window but
    the last (the process passes it on by exiting)."""
    observer = _WindowObserver(schedule, batch, turns)
    if turns is not None:
        turns.wait()
    fit_vaegan(config=config, train_images=images, val_images=images[:1000], device=device, observer=observer)
    return observer.images_per_s[schedule.warmup_windows :]


def textbook_step(preset: str, device: torch.device) -> Callable[[torch.Tensor], list[float]]:
    """One step of the plain PyTorch loop described in the module docstring, on a batch already on
    `device`; returns the five losses as floats (the `.item()` calls of the usual logging)."""
    torch.manual_seed(0)
    model = build_model(model_args_for(preset)).to(device).train()
    enc, dec, dis = model.encoder, model.decoder, model.discriminator
    betas = (0.5, 0.999)
    opt_enc = torch.optim.Adam(enc.parameters(), lr=3e-4, betas=betas)
    opt_dec = torch.optim.Adam(dec.parameters(), lr=3e-4, betas=betas)
    opt_dis = torch.optim.Adam(dis.parameters(), lr=3e-4, betas=betas)
    gamma, beta = 1e-2, 1.0

    def step(x: torch.Tensor) -> list[float]:
        mu, logvar = enc(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon_logits = dec(z)
        prior_logits = dec(torch.randn_like(mu))
        x_rec, x_p = torch.sigmoid(recon_logits), torch.sigmoid(prior_logits)
        d_real, f_real = dis(x)
        d_rec, f_rec = dis(x_rec)
        d_p, _ = dis(x_p)
        loss_prior = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).sum(1).mean()
        loss_llike = 0.5 * ((f_rec - f_real) ** 2).flatten(1).sum(1).mean()
        loss_pixel = F.binary_cross_entropy_with_logits(recon_logits, x, reduction="none").flatten(1)
        loss_pixel = loss_pixel.sum(1).mean()
        d_fake = torch.cat([d_p, d_rec])
        loss_dis = F.binary_cross_entropy_with_logits(
            d_real, torch.ones_like(d_real)
        ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        loss_gan = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
        loss_enc = beta * loss_prior + loss_llike + loss_pixel
        loss_dec = gamma * loss_llike + loss_pixel + loss_gan
        opt_enc.zero_grad()
        opt_dec.zero_grad()
        opt_dis.zero_grad()
        loss_enc.backward(retain_graph=True, inputs=list(enc.parameters()))
        loss_dec.backward(retain_graph=True, inputs=list(dec.parameters()))
        loss_dis.backward(inputs=list(dis.parameters()))
        opt_enc.step()
        opt_dec.step()
        opt_dis.step()
        return [loss.item() for loss in (loss_prior, loss_llike, loss_pixel, loss_dis, loss_gan)]

    return step


def textbook_throughput(
    *, preset: str, batch: int, images: np.ndarray, device: torch.device, schedule: Schedule,
    turns: Turns | None = None,
) -> list[float]:  # fmt: skip
    """Images/s of each timed window of `textbook_step` over a DataLoader; with `turns`, each window
    is timed while this process holds the token."""
    step = textbook_step(preset, device)
    dataset = TensorDataset(torch.from_numpy(images).float().div(255.0).unsqueeze(1))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True)
    rates: list[float] = []
    steps_done = 0
    if turns is not None:
        turns.wait()
    window_start = time.perf_counter()
    while steps_done < schedule.total_steps:
        for (x,) in loader:
            step(x.to(device))
            steps_done += 1
            if steps_done % schedule.window_steps == 0:
                sync_device(device)
                rates.append(schedule.window_steps * batch / (time.perf_counter() - window_start))
                if turns is not None and steps_done < schedule.total_steps:
                    turns.hand_over()
                window_start = time.perf_counter()
            if steps_done == schedule.total_steps:
                break
    return rates[schedule.warmup_windows :]


def measure(
    *, impl: str, preset: str, batch: int, schedule: Schedule, device_name: str = "auto",
    num_images: int = EPOCH_IMAGES, turns: Turns | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run one implementation in this process; throughput windows and this process's peak memory."""
    device = select_device(device_name)
    images, source = real_images("train", num_images)
    if device.type == "cuda":
        torch.cuda.init()  # resetting the peak before CUDA is initialised is "Invalid device argument"
        torch.cuda.reset_peak_memory_stats(device)
    settings: dict[str, Any] = {"precision": "fp32", "compile": False, "data": "CPU DataLoader, .to(device)"}
    started = time.perf_counter()
    if impl == "textbook":
        rates = textbook_throughput(
            preset=preset, batch=batch, images=images, device=device, schedule=schedule, turns=turns
        )
    else:
        variant = PROJECT_VARIANTS[impl]
        config = variant_config(variant, preset=preset, batch=batch, device=device, schedule=schedule)
        settings = variant.settings(config)
        rates = project_throughput(
            batch=batch, images=images, device=device, schedule=schedule, turns=turns, config=config
        )
    wall = time.perf_counter() - started
    return {
        "impl": impl,
        "preset": preset,
        "batch": batch,
        "device": str(device),
        "images_per_s": rates,
        "steps": schedule.total_steps,
        "window_steps": schedule.window_steps,
        "warmup_windows": schedule.warmup_windows,
        "wall_s": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "gpu_max_allocated_mib": (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
        "data": source,
        "settings": settings,
        "took_turns": turns is not None,
    }


# The project's settings per variant. Each names its memory format: the config's default is
# channels_last, and `project` keeps the plain NCHW fp32 eager step it always measured. The levers
# that were measured and not kept (cudnn.benchmark, inductor's CUDA graphs, compiled autograd) have
# their figures in docs/performance.md.
_NCHW, _CL = {"channels_last": False}, {"channels_last": True}
_BF16 = {"precision": "bf16", **_NCHW}
_BF16_CL = {"precision": "bf16", **_CL}
PROJECT_VARIANTS: dict[str, Variant] = {
    "project": Variant({"precision": "fp32", **_NCHW}),
    "project_bf16": Variant(_BF16),
    "project_bf16_cl": Variant(_BF16_CL),  # the CPU's fast mode (the quick profile's settings)
    "project_compiled": Variant({"precision": "fp32", "compile": True, **_NCHW}),
    "project_bf16_compiled": Variant({**_BF16, "compile": True}),
    "project_bf16_compiled_cl": Variant({**_BF16_CL, "compile": True}),
    "project_bf16_fused": Variant({**_BF16_CL, "d_pass": "fused"}),  # GPU lever (session 9, channels_last)
    # the whole step as one CUDA graph (train.cuda_graph), channels_last like profiles/full.yaml
    "project_graph": Variant({"precision": "fp32", "cuda_graph": True, **_CL}),
    "project_bf16_graph": Variant({**_BF16_CL, "cuda_graph": True}),
    "project_bf16_fused_graph": Variant({**_BF16_CL, "d_pass": "fused", "cuda_graph": True}),
}


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.training --impl ... --preset ... --batch ...`: prints one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", required=True, choices=["textbook", *PROJECT_VARIANTS])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--window-steps", type=int, required=True)
    parser.add_argument("--windows", type=int, required=True)
    parser.add_argument("--warmup-windows", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=EPOCH_IMAGES, help="training images on the device")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument(
        "--turn-fds", type=Turns.parse, default=None, metavar="IN,OUT",
        help="take turns with other processes (bench.turns): read the token from IN, pass it to OUT",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    schedule = Schedule(args.window_steps, args.windows, args.warmup_windows)
    result = measure(
        impl=args.impl,
        preset=args.preset,
        batch=args.batch,
        schedule=schedule,
        device_name=args.device,
        num_images=args.images,
        turns=args.turn_fds,
    )
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
