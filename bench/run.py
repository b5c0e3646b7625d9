"""`python -m bench.run [--quick] [--out bench/results]`: measure every stage next to its reference,
print a table and write `<out>/<device>.json`.

The device is chosen like the trainer chooses it (`vaegan.nn.devices.select_device("auto")`). Each
training configuration runs in its own process (`bench.training`); FID, inference and
orchestration run in this one. Parts whose dependencies are missing are recorded as skipped with
the reason (the GPU image has torch but no dvc/prefect/mlflow; onnxruntime may be missing too).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
import torch

from bench import orchestration, turns
from bench.fid import PLAIN_BATCH, measure_fid
from bench.figures import ratio, skipped, summary
from bench.report import render
from bench.training import EPOCH_IMAGES, PROJECT_VARIANTS
from vaegan.artifacts.atomic_io import write_json, write_text
from vaegan.config import EvaluateConfig
from vaegan.nn.devices import cpu_model, native_bf16, select_device

try:
    from bench import inference
except ImportError as missing:  # the inference section is skipped, with the reason
    inference = None
    NO_INFERENCE = (
        "onnxruntime is not installed"
        if missing.name == "onnxruntime"
        else f"cannot import the inference bench: {missing}"
    )

REPO_ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("training", "fid", "inference", "orchestration")


@dataclass(frozen=True)
class Plan:
    """Sizes of one bench run (`full` for `make bench`, `quick` for CI)."""

    presets: tuple[str, ...]
    batches: tuple[int, ...]
    # batch -> (steps per timed window, timed windows, warm-up windows)
    schedules: dict[int, tuple[int, int, int]]
    train_images: int
    fid_samples: int
    fid_repeats: int
    inference_batches: tuple[int, ...]
    inference_calls: dict[int, int]
    orchestration_repeats: int
    impls: tuple[str, ...] = field(default=())
    take_turns: bool = False  # the implementations of a cell train window by window in turn (bench.turns)


# The GPU's fast mode: bf16 autocast, the whole step replayed as one CUDA graph (train.cuda_graph).
GPU_FAST = "project_bf16_graph"


def plan_for(quick: bool, device_type: str) -> Plan:
    """The sizes for this device; CPU sizes keep the full bench under 10 minutes on 2 cores."""
    cuda = device_type == "cuda"
    if cuda:
        impls: tuple[str, ...] = (GPU_FAST, "project", "textbook")
    elif native_bf16(torch.device("cpu")):  # `train.precision: auto` trains in bf16 here
        impls = ("project", "project_bf16_cl", "textbook")
    else:
        impls = ("project", "textbook")
    if quick:
        return Plan(
            presets=("seed",), batches=(64,), schedules={64: (2, 2, 1)}, train_images=2048,
            fid_samples=1000, fid_repeats=2, inference_batches=(1, 8), inference_calls={1: 5, 8: 5},
            orchestration_repeats=2, impls=impls, take_turns=not cuda,
        )  # fmt: skip
    if cuda:
        schedules = {64: (100, 5, 1), 256: (100, 5, 1), 1024: (100, 5, 1)}  # windows of 0.3 s and more
        calls = {1: 300, 256: 100}
    else:
        schedules = {64: (16, 8, 1), 256: (4, 8, 1), 1024: (1, 8, 1)}  # 1,024 images a window
        calls = {1: 200, 256: 15}
    return Plan(
        presets=("default", "seed"), batches=(64, 256, 1024), schedules=schedules, train_images=60_000,
        fid_samples=10_000, fid_repeats=3, inference_batches=(1, 256), inference_calls=calls,
        orchestration_repeats=5, impls=impls, take_turns=not cuda,
    )  # fmt: skip


def device_name(device: Any) -> str:
    """A file-name-safe device label: the CUDA device name, or cpu-<N>core-<model>."""
    if device.type == "cuda":
        label = torch.cuda.get_device_name(device)
    else:
        label = f"cpu-{os.cpu_count()}core-{cpu_model()}"
    return re.sub(r"[^A-Za-z0-9.]+", "-", label).strip("-").lower()


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {
        "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
    }  # fmt: skip
    for name in ("onnxruntime", "scipy", "dvc", "prefect"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "unknown")
        except ImportError:
            versions[name] = None
    return versions


def _env() -> dict[str, str]:
    pythonpath = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": pythonpath}


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _round_or_none(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _train_command(plan: Plan, preset: str, batch: int, impl: str) -> list[str]:
    window, windows, warmup = plan.schedules[batch]
    return [
        sys.executable, "-m", "bench.training", "--impl", impl, "--preset", preset,
        "--batch", str(batch), "--window-steps", str(window), "--windows", str(windows),
        "--warmup-windows", str(warmup), "--images", str(plan.train_images),
    ]  # fmt: skip


def _train_result(returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    """A `python -m bench.training` process's JSON line, or {"error": ...}."""
    if returncode != 0:
        lines = stderr.strip().splitlines() or ["no output"]
        return {"error": f"exited {returncode}: {lines[-1]}", "stderr_tail": lines[-40:]}
    raw: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return raw


def _train_one_by_one(plan: Plan, preset: str, batch: int) -> dict[str, dict[str, Any]]:
    """Each implementation in its own process, one process after the other."""
    raws = {}
    for impl in plan.impls:
        _log(f"training {preset} batch {batch}: {impl}")
        cmd = _train_command(plan, preset, batch, impl)
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True)
        raws[impl] = _train_result(proc.returncode, proc.stdout, proc.stderr)
    return raws


def _train_in_turns(plan: Plan, preset: str, batch: int) -> dict[str, dict[str, Any]]:
    """Each implementation in its own process, all started together and training window by window
    in turn (bench.turns): window k of each ran right after window k of the one before."""
    _log(f"training {preset} batch {batch}: {', '.join(plan.impls)}, in turns")
    ends = turns.ring(len(plan.impls))
    procs = {}
    for impl, (read_fd, write_fd) in zip(plan.impls, ends, strict=True):
        cmd = [*_train_command(plan, preset, batch, impl), "--turn-fds", f"{read_fd},{write_fd}"]
        procs[impl] = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            pass_fds=(read_fd, write_fd),
        )  # fmt: skip
    turns.start(ends)
    raws = {}
    for impl, proc in procs.items():
        stdout, stderr = proc.communicate()
        raws[impl] = _train_result(proc.returncode, stdout, stderr)
    return raws


def run_training(plan: Plan) -> dict[str, Any]:
    """Every (preset, batch): each implementation in its own process; on CPU the processes take
    turns window by window (a drift of the machine's speed then hits every side alike) and the
    ratios are paired window by window, else they run one after the other and ratios are of medians."""
    configs = []
    for preset in plan.presets:
        for batch in plan.batches:
            train = _train_in_turns if plan.take_turns else _train_one_by_one
            raws = train(plan, preset, batch)
            results: dict[str, Any] = {}
            for impl, raw in raws.items():
                if "error" in raw:
                    results[impl] = {**skipped(raw["error"]), "stderr_tail": raw["stderr_tail"]}
                    continue
                rates = raw["images_per_s"]
                results[impl] = {
                    "images_per_s": summary(rates, 3),
                    "windows_images_per_s": [round(rate, 3) for rate in rates],
                    "epoch_s": summary([EPOCH_IMAGES / r for r in rates], 3),
                    "peak_rss_mib": round(raw["peak_rss_mib"], 1),
                    "gpu_max_allocated_mib": _round_or_none(raw["gpu_max_allocated_mib"]),
                    "steps": raw["steps"], "window_steps": raw["window_steps"],
                    "warmup_windows": raw["warmup_windows"], "took_turns": raw["took_turns"],
                    "process_wall_s": round(raw["wall_s"], 2), "settings": raw["settings"],
                }  # fmt: skip
            ratios = _ratios(raws, plan.take_turns)
            configs.append({"preset": preset, "batch": batch, "results": results, "ratio": ratios})
    return {
        "epoch_images": EPOCH_IMAGES,
        "train_images_on_device": plan.train_images,
        "ratio_is": (
            "median over windows k of images/s of the implementation's window k / the textbook loop's "
            "window k (the processes took turns)" if plan.take_turns
            else "images/s of the implementation / images/s of the textbook loop (medians)"
        ),
        "configs": configs,
    }  # fmt: skip


def _ratios(raws: dict[str, dict[str, Any]], paired: bool) -> dict[str, float]:
    """Each implementation against the textbook loop, where both were measured."""
    reference = raws.get("textbook", {}).get("images_per_s")
    if reference is None:
        return {}
    measured = {impl: raw for impl, raw in raws.items() if impl != "textbook" and "error" not in raw}
    rates = {impl: raw["images_per_s"] for impl, raw in measured.items()}
    if paired:
        return {impl: turns.paired_ratio(values, reference) for impl, values in rates.items()}
    return {impl: ratio(summary(values), summary(reference)) for impl, values in rates.items()}


def run_fid(plan: Plan, device: Any) -> dict[str, Any]:
    """FID on plan.fid_samples samples, project vs plain."""
    batch = EvaluateConfig().batch_size
    _log(f"FID on {plan.fid_samples} samples")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's sqrtm warns on the untrained model's singular product
        raw = measure_fid(
            num_samples=plan.fid_samples, repeats=plan.fid_repeats, device=device, batch_size=batch
        )
    project = {
        "seconds": summary(raw["seconds"]["project"], 4), "fid": raw["fid"]["project"],
        "how": f"batch {batch}, eigenvalue trace",
    }  # fmt: skip
    if raw["plain_available"]:
        plain = {
            "seconds": summary(raw["seconds"]["plain"], 4), "fid": raw["fid"]["plain"],
            "how": f"batch {PLAIN_BATCH}, scipy sqrtm",
        }  # fmt: skip
        speedup = ratio(plain["seconds"], project["seconds"])
    else:
        plain, speedup = skipped("scipy is not installed"), None
    return {
        "num_samples": plan.fid_samples, "real_images": raw["real_images"],
        "project": project, "plain": plain,
        "speedup": speedup, "speedup_is": "plain seconds / project seconds (medians)",
        "includes": "sampling and features of N fakes, features of N real test images, Fréchet distance",
    }  # fmt: skip


def run_inference(plan: Plan, device: Any) -> dict[str, Any]:
    """ORT vs eager latency and throughput per (network, batch)."""
    if inference is None:
        return skipped(NO_INFERENCE)
    _log("inference: ONNX export and ORT vs eager")
    raw = inference.measure_inference(
        batches=plan.inference_batches, calls=plan.inference_calls, device=device
    )
    results = []
    for key, times in raw["times"].items():
        network, batch = key.split("/")[0], times["batch"]
        entry: dict[str, Any] = {"network": network, "batch": batch, "max_abs_diff": times["max_abs_diff"]}
        for runtime in ("ort", "eager"):
            entry[runtime] = {
                "latency_ms": summary([t * 1e3 for t in times[runtime]], 4),
                "images_per_s": summary([batch / t for t in times[runtime]], 3),
            }
        entry["latency_ratio"] = ratio(entry["ort"]["latency_ms"], entry["eager"]["latency_ms"])
        entry["throughput_ratio"] = ratio(entry["ort"]["images_per_s"], entry["eager"]["images_per_s"])
        results.append(entry)
    return {
        "ort_version": raw["ort_version"], "providers": raw["providers"], "exporter": raw["exporter"],
        "latency_ratio_is": "ORT latency / eager latency (medians; < 1: ORT faster)",
        "results": results,
    }  # fmt: skip


def run_orchestration(plan: Plan, pipeline_dir: Path | None, quick: bool) -> dict[str, Any]:
    """`vaegan --help`, a no-op `dvc repro`, a cached retrain flow (each skipped, with why, if impossible)."""

    def figure(raw: dict[str, Any], reference_command: str | None) -> dict[str, Any]:
        if "skipped" in raw:
            return raw
        out: dict[str, Any] = {"command": raw["command"], "seconds": summary(raw["seconds"], 4)}
        if reference_command is not None:
            out["reference"] = {"command": reference_command, "seconds": summary(raw["reference_seconds"], 4)}
            out["ratio"] = ratio(out["seconds"], out["reference"]["seconds"])
        return out

    repeats = plan.orchestration_repeats
    _log("orchestration: vaegan --help")
    section = {"vaegan_help": figure(orchestration.measure_cli_help(repeats), "python -c pass")}
    _log("orchestration: dvc repro no-op")
    section["dvc_repro_noop"] = figure(orchestration.measure_dvc_noop(repeats), "dvc --version")
    if quick and pipeline_dir is None:
        section["retrain_cached"] = skipped("quick mode")
    else:
        _log("orchestration: cached retrain flow")
        section["retrain_cached"] = figure(
            orchestration.measure_cached_retrain(pipeline_dir, min(repeats, 2)), None
        )
    return section


def _median(section: dict[str, Any] | None, *path: Any) -> float | None:
    node: Any = section
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node["median"]) if isinstance(node, dict) and "median" in node else None


def check_targets(results: dict[str, Any], device_type: str) -> list[dict[str, Any]]:
    """The issue's targets for this device, each with what was measured and whether it is met."""
    targets: list[dict[str, Any]] = []

    def add(target: str, measured: float | None, fmt: str, met: bool | None) -> None:
        shown = "not measured" if measured is None else fmt.format(measured)
        targets.append({"target": target, "measured": shown, "value": measured, "met": met})

    training = results.get("training") or {}
    configs = {(c["preset"], c["batch"]): c for c in training.get("configs", [])}
    if device_type == "cuda":
        default_1024 = configs.get(("default", 1024), {})
        ips = _median(default_1024.get("results"), GPU_FAST, "images_per_s")
        add(">= 100,000 images/s (default, batch 1024)", ips, "{:,.0f} images/s",
            None if ips is None else ips >= 100_000)  # fmt: skip
        for batch in (1024, 256):
            speedup = configs.get(("default", batch), {}).get("ratio", {}).get(GPU_FAST)
            add(f">= 5x the textbook loop (default, batch {batch})", speedup, "{:.2f}x",
                None if speedup is None else speedup >= 5)  # fmt: skip
    else:
        for (preset, batch), config in sorted(configs.items()):
            variants = [("project", "")]
            if "project_bf16_cl" in config["ratio"]:  # a CPU with native bf16
                variants.append(("project_bf16_cl", ", bf16 + channels_last"))
            for impl, how in variants:
                speedup = config["ratio"].get(impl)
                add(f">= 1.5x the textbook loop ({preset}, batch {batch}{how})", speedup, "{:.2f}x",
                    None if speedup is None else speedup >= 1.5)  # fmt: skip
    limit = 2.0 if device_type == "cuda" else 20.0
    fid = results.get("fid") or {}
    fid_s = _median(fid, "project", "seconds")
    add(f"FID on {fid.get('num_samples', 10_000):,} samples < {limit:g} s", fid_s, "{:.2f} s",
        None if fid_s is None else fid_s < limit)  # fmt: skip
    for entry in (results.get("inference") or {}).get("results", []):
        if entry["network"] == "decoder" and entry["batch"] == 1:
            value = entry["latency_ratio"]
            add("ORT decoder latency at batch 1 <= 0.5x PyTorch eager", value, "{:.2f}x", value <= 0.5)
    orchestration = results.get("orchestration") or {}
    for key, label, limit_s in (
        ("dvc_repro_noop", "`dvc repro` with nothing to do < 3 s", 3.0),
        ("vaegan_help", "`vaegan --help` < 1 s", 1.0),
        ("retrain_cached", "fully cached `retrain` flow < 30 s", 30.0),
    ):
        seconds = _median(orchestration, key, "seconds")
        add(label, seconds, "{:.2f} s", None if seconds is None else seconds < limit_s)
    return targets


def _overridden(plan: Plan, args: argparse.Namespace) -> Plan:
    """The plan with the command line's --presets/--batches/--impls/--windows; batches keep the plan's
    window size."""
    changes: dict[str, Any] = {}
    if args.presets:
        changes["presets"] = tuple(args.presets)
    if args.batches:
        unknown = sorted(set(args.batches) - set(plan.schedules))
        if unknown:
            raise SystemExit(f"--batches: no schedule for {unknown}; known: {sorted(plan.schedules)}")
        changes["batches"] = tuple(args.batches)
    if args.impls:
        changes["impls"] = tuple(args.impls)
    if args.windows is not None:
        if args.windows < 1:
            raise SystemExit(f"--windows must be at least 1, not {args.windows}")
        changes["schedules"] = {
            batch: (steps, args.windows, warmup) for batch, (steps, _, warmup) in plan.schedules.items()
        }
    return dataclasses.replace(plan, **changes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds): the CI smoke test")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results", help="results directory")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--presets", nargs="+", help="training presets instead of the plan's")
    parser.add_argument("--batches", nargs="+", type=int, help="training batch sizes instead of the plan's")
    parser.add_argument(
        "--impls", nargs="+", choices=["textbook", *PROJECT_VARIANTS],
        help="training implementations instead of the plan's (textbook is the reference of the ratios)",
    )  # fmt: skip
    parser.add_argument(
        "--windows", type=int, default=None,
        help="timed training windows per implementation instead of the plan's (8 on a CPU): more windows "
        "narrow the median of the paired ratios",
    )  # fmt: skip
    parser.add_argument(
        "--pipeline-dir", type=Path, default=None,
        help="an up-to-date pipeline workspace to time a cached retrain flow in (else it is skipped)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    device = select_device("auto")
    plan = _overridden(plan_for(args.quick, device.type), args)
    sections = args.only or list(SECTIONS)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "format": "vaegan-bench/1",
        "device": device_name(device),
        "device_type": device.type,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "quick": args.quick,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "load_average": {"start": [round(x, 2) for x in os.getloadavg()]},
    }
    if "training" in sections:
        results["training"] = run_training(plan)
    if "fid" in sections:
        results["fid"] = run_fid(plan, device)
    if "inference" in sections:
        results["inference"] = run_inference(plan, device)
    if "orchestration" in sections:
        results["orchestration"] = run_orchestration(plan, args.pipeline_dir, args.quick)
    results["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["targets"] = check_targets(results, device.type)
    suffix = "-quick" if args.quick else ""
    path = args.out / f"{results['device']}{suffix}.json"
    write_json(path, results)
    table = render(results)
    write_text(path.with_suffix(".md"), table)
    print(table)
    _log(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
