"""Each convolution of a preset alone, forward + backward, against exact reformulations of it:
`python -m bench.lab.conv_layers [--preset seed] [--rows 128] [--repeats 20] [--out FILE.json]`.

The training step's time is mostly convolutions (docs/performance.md), and oneDNN runs the stride-2
4x4 layers of these networks at a fraction of the rate of the 3x3 stride-1 one. This measures each
layer the way the step uses it (bf16 autocast + channels_last, the quick profile; fp32
channels_last; fp32 NCHW, the textbook loop) for the gradients a backward pass asks of it (input
only: the encoder's and decoder's passes through D; weights only; both), and the same function
computed another way:

- `space_to_depth` (stride-2 convolution): pad, `pixel_unshuffle(2)`, a 2x2 stride-1 convolution;
- `unfold` (the one-channel first layers): im2col (`F.unfold`) and a matmul, so that the input
  gradient is a matmul and `F.fold` instead of a one-channel transposed convolution;
- `sub_pixel` (stride-2 transposed convolution): a 3x3 convolution to 4x the channels and
  `pixel_shuffle(2)` (2.25x the multiply-adds, in the layer shape oneDNN runs fastest).

Every reformulation is the same function (tests/test_bench.py checks them in float64). Prints a
table (median ms of `--repeats` calls, GFLOP/s of the native layer's multiply-adds) and writes JSON.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.device_sync import sync_device
from vaegan.nn.devices import select_device
from vaegan.nn.networks import PRESETS

Conv = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
GRADS = {"input": ("x",), "weights": ("w", "b"), "both": ("x", "w", "b")}
PRECISIONS = ("bf16_cl", "fp32_cl", "fp32")


def strided(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, w, b, stride=2, padding=1)


def space_to_depth(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`strided` as pad 1, pixel_unshuffle(2) (channel c*4 + 2*dy + dx) and a 2x2 convolution."""
    out_channels, in_channels = w.shape[:2]
    blocks = F.pixel_unshuffle(F.pad(x, (1, 1, 1, 1)), 2)
    w2 = w.view(out_channels, in_channels, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4)
    return F.conv2d(blocks, w2.reshape(out_channels, in_channels * 4, 2, 2), b)


def unfold(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`strided` as im2col and a matmul; the output is channels_last by construction."""
    rows, side, out_channels = x.shape[0], x.shape[-1] // 2, w.shape[0]
    columns = F.unfold(x, 4, padding=1, stride=2).transpose(1, 2)  # (B, L, C*16)
    y = columns @ w.view(out_channels, -1).t() + b
    return y.view(rows, side, side, out_channels).permute(0, 3, 1, 2)


def transposed(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv_transpose2d(x, w, b, stride=2, padding=1)


def sub_pixel_weight(w: torch.Tensor) -> torch.Tensor:
    """(C_in, C_out, 4, 4) of a k4 s2 p1 transposed convolution -> (4 C_out, C_in, 3, 3): output
    row 2m + a takes input rows m - 1 and m through taps 3 and 1 (a = 0), m and m + 1 through taps 2
    and 0 (a = 1); the same per column."""
    in_channels, out_channels = w.shape[:2]
    taps = {0: {-1: 3, 0: 1}, 1: {0: 2, 1: 0}}  # output phase -> {input offset: kernel tap}
    w3 = w.new_zeros(out_channels, 2, 2, in_channels, 3, 3)
    for a, rows in taps.items():
        for c, cols in taps.items():
            for dy, ky in rows.items():
                for dx, kx in cols.items():
                    w3[:, a, c, :, dy + 1, dx + 1] = w[:, :, ky, kx].t()
    return w3.reshape(out_channels * 4, in_channels, 3, 3)


def sub_pixel(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`transposed` as a 3x3 convolution to 4x the channels and pixel_shuffle(2)."""
    return F.pixel_shuffle(F.conv2d(x, sub_pixel_weight(w), b.repeat_interleave(4), padding=1), 2)


def same_size(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, w, b, padding=1)


@dataclass(frozen=True)
class Layer:
    name: str
    in_channels: int
    side: int  # input height = width
    weight: tuple[int, int, int, int]
    ways: Mapping[str, Conv]

    @property
    def is_transposed(self) -> bool:
        """A transposed convolution: weight (C_in, C_out, k, k) instead of (C_out, C_in, k, k)."""
        return "transposed" in self.ways

    @property
    def out_channels(self) -> int:
        return self.weight[1] if self.is_transposed else self.weight[0]

    def macs_per_row(self) -> int:
        """Multiply-adds of one forward pass per image."""
        if self.is_transposed:
            return self.side * self.side * self.weight[0] * self.weight[1] * 16
        out_side = self.side // 2 if self.weight[-1] == 4 else self.side
        return out_side * out_side * self.weight[0] * self.weight[1] * self.weight[2] * self.weight[3]


def preset_layers(preset: str) -> list[Layer]:
    """The convolutions of `preset`'s three networks (vaegan.nn.networks)."""
    args = PRESETS[preset]
    c1, c2 = args.channels
    d1, d2, d3 = args.dis_channels
    first = {"native": strided, "space_to_depth": space_to_depth, "unfold": unfold}
    inner = {"native": strided, "space_to_depth": space_to_depth}
    up = {"transposed": transposed, "sub_pixel": sub_pixel}
    return [
        Layer("encoder.conv1", 1, 28, (c1, 1, 4, 4), first),
        Layer("encoder.conv2", c1, 14, (c2, c1, 4, 4), inner),
        Layer("decoder.deconv1", c2, 7, (c2, c1, 4, 4), up),
        Layer("decoder.deconv2", c1, 14, (c1, 1, 4, 4), up),
        Layer("discriminator.conv1", 1, 28, (d1, 1, 4, 4), first),
        Layer("discriminator.conv2", d1, 14, (d2, d1, 4, 4), inner),
        Layer("discriminator.features", d2, 7, (d3, d2, 3, 3), {"native": same_size}),
    ]


def time_layer(
    conv: Conv, layer: Layer, *, rows: int, precision: str, grads: str, repeats: int, device: torch.device
) -> float:
    """Median ms of forward + LeakyReLU + the backward pass for `grads`."""
    generator = torch.Generator().manual_seed(0)
    memory_format = torch.contiguous_format if precision == "fp32" else torch.channels_last
    x = torch.rand(rows, layer.in_channels, layer.side, layer.side, generator=generator)
    w = torch.randn(*layer.weight, generator=generator) * 0.02
    tensors = {
        "x": x.to(device, memory_format=memory_format).requires_grad_(True),
        "w": w.to(device, memory_format=memory_format).requires_grad_(True),
        "b": torch.zeros(layer.out_channels, device=device, requires_grad=True),
    }
    wanted = [tensors[name] for name in GRADS[grads]]
    seconds = []
    for _ in range(repeats + 3):
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16_cl"):
            y = F.leaky_relu(conv(tensors["x"], tensors["w"], tensors["b"]), 0.2)
        torch.autograd.grad(y, wanted, torch.ones_like(y))
        sync_device(device)
        seconds.append(time.perf_counter() - started)
    kept = sorted(seconds[3:])
    return 1000 * kept[len(kept) // 2]


def measure(
    *, preset: str, rows: int, repeats: int, device: torch.device, precisions: tuple[str, ...] = PRECISIONS
) -> list[dict[str, Any]]:
    """One row per (layer, gradients, way, precision), printed as it is measured."""
    results = []
    timed = functools.partial(time_layer, rows=rows, repeats=repeats, device=device)
    for layer in preset_layers(preset):
        for grads, (way, conv), precision in itertools.product(GRADS, layer.ways.items(), precisions):
            ms = timed(conv, layer, precision=precision, grads=grads)
            passes = 1 + ("x" in GRADS[grads]) + ("w" in GRADS[grads])  # forward + gradients
            gflops = 2 * layer.macs_per_row() * rows * passes / ms / 1e6
            row = {"layer": layer.name, "grads": grads, "way": way, "precision": precision}
            results.append({**row, "ms": round(ms, 3), "gflop_per_s": round(gflops, 1)})
            label = f"{layer.name:24s} {grads:8s} {way:15s} {precision:8s}"
            print(f"{label} {ms:8.2f} ms {gflops:7.1f} GFLOP/s", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed", choices=sorted(PRESETS), help="whose layers are timed")
    parser.add_argument("--rows", type=int, default=128, help="images per call (D's fake call: 2 x batch)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per figure (after 3 untimed)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here as well")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.repeats < 1:
        parser.error("--rows and --repeats must be at least 1")
    device = select_device(args.device)
    results = measure(preset=args.preset, rows=args.rows, repeats=args.repeats, device=device)
    payload = {
        "preset": args.preset, "rows": args.rows, "repeats": args.repeats, "device": str(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "layers": results,
    }  # fmt: skip
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
