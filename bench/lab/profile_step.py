"""Where a training step's time goes: `python -m bench.lab.profile_step --preset default --batch 1024
--impl project_bf16 [--device cuda] [--by-shape] [--out FILE.json]`.

Builds the training step exactly as `fit_vaegan` does (`vaegan.nn.step_builder.build_training_step`:
the networks, optimizers, batches and step function), or with `--impl textbook` the textbook loop's
step (`bench.training.textbook_step`) on batches already on the device; runs `--warmup` steps, times
`--steps` steps without the profiler, then the same number under `torch.profiler`. Prints the
operators by self time on the device that did the work and writes JSON: wall ms per step, and on
a GPU the kernel time and kernel count per step; a step whose wall time is far above its kernel
time is bound by launches, not by the GPU's arithmetic.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.data import real_images
from bench.device_sync import sync_device
from bench.training import PROJECT_VARIANTS, Schedule, textbook_step, variant_config
from vaegan.config import Config
from vaegan.errors import ConfigError
from vaegan.nn.batches import images_to_device
from vaegan.nn.devices import select_device
from vaegan.nn.step_builder import build_training_step

TOP_OPS = 25
TOP_OPS_BY_SHAPE = 60


StepFn = Callable[[int], Any]  # runs step i (its batch included)


def _textbook(preset: str, batch: int, train_images: np.ndarray, device: torch.device) -> StepFn:
    """`bench.training.textbook_step`, fed consecutive batches of the images (no DataLoader: the
    profile is of the step)."""
    images = images_to_device(train_images, device, channels_last=False)  # the textbook's NCHW floats
    count = len(images) // batch
    step = textbook_step(preset, device)

    def run(index: int) -> Any:
        first = (index % count) * batch
        return step(images[first : first + batch])

    return run


def _project(config: Config, train_images: np.ndarray, device: torch.device) -> StepFn:
    """The loop's own step, built as `fit_vaegan` builds it."""
    return build_training_step(config=config, train_images=train_images, device=device)


def profile_step(
    *, impl: str, preset: str, batch: int, device: torch.device, warmup: int, steps: int, images: int,
    by_shape: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Per-step wall time, device time and the top operators of `impl`'s training step; with
    `by_shape`, one row per operator and input shapes (which layer a convolution is)."""
    train_images, source = real_images("train", images)
    if impl == "textbook":  # the reference loop's step, on batches already on the device
        step_fn = _textbook(preset, batch, train_images, device)
        settings: dict[str, Any] = {"precision": "fp32", "channels_last": False, "data": "on the device"}
    else:
        variant = PROJECT_VARIANTS[impl]
        schedule = Schedule(steps, 2, 1)
        config = variant_config(variant, preset=preset, batch=batch, device=device, schedule=schedule)
        step_fn = _project(config, train_images, device)
        settings = variant.settings(config)

    def run(first: int, count: int) -> float:
        started = time.perf_counter()
        for step in range(first, first + count):
            step_fn(step)
        sync_device(device)
        return time.perf_counter() - started

    run(0, warmup)
    wall = run(warmup, steps)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=by_shape) as prof:
        profiled_wall = run(warmup + steps, steps)
    on_gpu = device.type == "cuda"
    averages = prof.key_averages(group_by_input_shape=by_shape)
    key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    rows = TOP_OPS_BY_SHAPE if by_shape else TOP_OPS
    top = sorted(averages, key=lambda op: getattr(op, key), reverse=True)[:rows]
    print(averages.table(sort_by=key, row_limit=rows), flush=True)

    def ms_per_step(op: Any) -> float:
        return float(getattr(op, key)) / 1000 / steps

    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    result: dict[str, Any] = {
        "impl": impl, "preset": preset, "batch": batch, "device": str(device), "data": source,
        "settings": settings, "warmup_steps": warmup, "steps": steps,
        "wall_ms_per_step": 1000 * wall / steps, "profiled_wall_ms_per_step": 1000 * profiled_wall / steps,
        "images_per_s": batch * steps / wall,
        "kernels_per_step": len(kernels) / steps if on_gpu else None,
        "kernel_ms_per_step": sum(e.device_time for e in kernels) / 1000 / steps if on_gpu else None,
        "top_ops": [
            {
                "name": op.key, "calls_per_step": op.count / steps, "self_ms_per_step": ms_per_step(op),
                **({"input_shapes": op.input_shapes} if by_shape else {}),
            }
            for op in top
        ],
    }  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--impl", default="project", choices=["textbook", *sorted(PROJECT_VARIANTS)],
        help="a project variant (bench.training.PROJECT_VARIANTS) or the textbook loop's step",
    )  # fmt: skip
    parser.add_argument("--preset", default="default")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compiling, autotuning)")
    parser.add_argument("--steps", type=int, default=20, help="steps timed, then as many profiled")
    parser.add_argument("--images", type=int, default=10_000, help="training images on the device")
    parser.add_argument("--by-shape", action="store_true", help="one row per operator and input shapes")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here as well")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    try:
        result = profile_step(
            impl=args.impl, preset=args.preset, batch=args.batch, device=select_device(args.device),
            warmup=args.warmup, steps=args.steps, images=args.images, by_shape=args.by_shape,
        )  # fmt: skip
    except ConfigError as error:  # a variant this device cannot run (e.g. a CUDA graph on a CPU)
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    text = json.dumps(result, indent=1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    keys = ("wall_ms_per_step", "kernel_ms_per_step", "kernels_per_step", "images_per_s")
    summary = {key: result[key] for key in keys}
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
