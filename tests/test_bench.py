"""The benchmark harness: its quick mode runs end to end in a subprocess and writes a well-formed
result (keys, positive figures, min <= median <= max, ratios equal to the ratio of the medians).
Timings themselves are not asserted: they depend on the machine and its load."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import TinyConfig
from vaegan.nn.devices import native_bf16

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_summary_and_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT))  # bench/ is a top-level folder, not an installed package
    from bench.figures import ratio, summary

    assert summary([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert summary([4.0, 1.0])["median"] == 2.5
    assert ratio({"median": 6.0}, {"median": 4.0}) == 1.5
    with pytest.raises(ValueError):
        summary([])


def test_paired_ratio_is_the_median_of_window_ratios(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    from bench.turns import paired_ratio

    assert paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0  # window ratios 2, 2, 3
    # window ratios 3 and 4.5: their median 3.75, not the ratio of the medians (6 / 1.5 = 4)
    assert paired_ratio([3.0, 9.0], [1.0, 2.0]) == 3.75
    with pytest.raises(ValueError, match="paired windows"):
        paired_ratio([1.0, 2.0], [1.0])


TURN_TAKER = """
import sys, time
from bench.turns import Turns
name, windows, fds, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
turns = Turns.parse(fds)
if windows < 0:
    sys.exit(1)  # fails before taking its turn
turns.wait()
for k in range(windows):
    with open(log, "a") as out:
        out.write(f"{name} start {k}\\n")
    time.sleep(0.02)  # another process writing now would land between start and end
    with open(log, "a") as out:
        out.write(f"{name} end {k}\\n")
    if k < windows - 1:
        turns.hand_over()
"""


def _turn_takers(tmp_path: Path, plan: list[tuple[str, int]]) -> tuple[list[int], list[str]]:
    """Run TURN_TAKER processes (name, windows) in a ring; their exit codes and the window log."""
    from bench import turns

    log = tmp_path / "windows.log"
    ends = turns.ring(len(plan))
    procs = []
    for (name, windows), (read_fd, write_fd) in zip(plan, ends, strict=True):
        cmd = [sys.executable, "-c", TURN_TAKER, name, str(windows), f"{read_fd},{write_fd}", str(log)]
        procs.append(subprocess.Popen(cmd, cwd=REPO_ROOT, pass_fds=(read_fd, write_fd)))
    turns.start(ends)
    codes = [proc.wait(timeout=60) for proc in procs]
    return codes, log.read_text().splitlines() if log.exists() else []


def test_processes_take_turns_window_by_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    codes, lines = _turn_takers(tmp_path, [("a", 3), ("b", 3), ("c", 3)])
    assert codes == [0, 0, 0]
    starts = [line.replace(" start ", "") for line in lines if " start " in line]
    assert starts == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"]
    for start, end in zip(lines[::2], lines[1::2], strict=True):  # no window overlaps another
        assert start.replace("start", "end") == end


def test_a_failed_process_does_not_stall_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """b fails before its first window (-1 windows: TURN_TAKER exits 1): a and c still train all theirs."""
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    codes, lines = _turn_takers(tmp_path, [("a", 2), ("b", -1), ("c", 2)])
    assert codes == [0, 1, 0]
    assert sorted(line for line in lines if " end " in line) == ["a end 0", "a end 1", "c end 0", "c end 1"]


def test_window_observer_takes_the_wait_for_the_token_out_of_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fit_vaegan's clock for a window starts before the observer hands the token over, so the
    observer subtracts the wait; after the last window it keeps the token (the process exits)."""
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    from bench.training import Schedule, _WindowObserver
    from bench.turns import Turns

    token_in, to_me = os.pipe()
    from_me, token_out = os.pipe()
    threading.Timer(0.2, os.write, (to_me, b"tt")).start()  # the token comes back after 0.2 s
    observer = _WindowObserver(
        Schedule(window_steps=2, windows=2, warmup_windows=1), 8, Turns(token_in, token_out)
    )
    observer.on_log(2, {"images_per_s": 16 / 1.0})  # 16 images in 1.0 s, then 0.2 s waiting
    waited = observer.waited
    assert 0.19 < waited < 5
    observer.on_log(4, {"images_per_s": 16 / 1.5})  # the loop's clock: 1.5 s, of which `waited` waiting
    waited_again = observer.waited  # the second token was already there
    observer.on_log(6, {"images_per_s": 16 / 1.0})  # the last window: no hand-over
    assert observer.images_per_s[0] == pytest.approx(16.0)
    assert observer.images_per_s[1] == pytest.approx(16 / (1.5 - waited))
    assert observer.images_per_s[2] == pytest.approx(16 / (1.0 - waited_again))
    assert waited_again < 0.19 and observer.waited == 0.0
    assert os.read(from_me, 8) == b"tt"  # passed on twice, not after the last window


def check_figure(figure: dict[str, Any], n: int | None = None) -> None:
    assert set(figure) == {"median", "min", "max", "n"}, figure
    assert 0 < figure["min"] <= figure["median"] <= figure["max"] < math.inf, figure
    if n is not None:
        assert figure["n"] == n


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=2e-3, abs_tol=1e-4)


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(out.glob("*-quick.json"))
    assert len(files) == 1, list(out.iterdir())
    assert files[0].with_suffix(".md").is_file()
    return json.loads(files[0].read_text()), proc.stdout


@pytest.mark.slow
def test_quick_bench_header_and_table(quick_result: tuple[dict[str, Any], str]) -> None:
    result, stdout = quick_result
    assert result["format"] == "vaegan-bench/1" and result["quick"] is True
    assert result["device"] and result["device_type"] in ("cpu", "cuda", "mps")
    assert result["versions"]["torch"] and result["torch_threads"] >= 1 and result["wall_s"] > 0
    assert set(result) >= {"training", "fid", "inference", "orchestration", "targets"}
    for heading in ("### training", "### fid", "### inference", "### orchestration", "### targets"):
        assert heading in stdout


@pytest.mark.slow
def test_quick_bench_training(quick_result: tuple[dict[str, Any], str]) -> None:
    result = quick_result[0]
    training = result["training"]
    assert training["epoch_images"] == 60_000
    assert [(c["preset"], c["batch"]) for c in training["configs"]] == [("seed", 64)]
    config = training["configs"][0]
    if result["device_type"] == "cuda":
        fast = {"project_bf16_graph"}
    else:  # bf16 + channels_last where the CPU has native bf16
        fast = {"project_bf16_cl"} if native_bf16(torch.device("cpu")) else set()
    assert set(config["results"]) == {"project", "textbook", *fast}
    assert set(config["ratio"]) == {"project", *fast}
    textbook = config["results"]["textbook"]
    for impl, res in config["results"].items():
        check_figure(res["images_per_s"], n=2)
        check_figure(res["epoch_s"], n=2)
        # epoch time is 60,000 images / throughput, window by window
        assert close(res["epoch_s"]["min"], 60_000 / res["images_per_s"]["max"])
        assert res["peak_rss_mib"] > 50
        assert res["steps"] == res["window_steps"] * (2 + res["warmup_windows"])
        assert res["took_turns"] is (result["device_type"] == "cpu")
        if impl == "textbook":
            continue
        if res["took_turns"]:  # window k of each implementation ran right after window k of the one before
            pairs = zip(res["windows_images_per_s"], textbook["windows_images_per_s"], strict=True)
            expected = float(np.median([a / b for a, b in pairs]))
        else:
            expected = res["images_per_s"]["median"] / textbook["images_per_s"]["median"]
        assert close(config["ratio"][impl], expected)


@pytest.mark.slow
def test_quick_bench_fid(quick_result: tuple[dict[str, Any], str]) -> None:
    fid = quick_result[0]["fid"]
    assert fid["num_samples"] == 1000
    check_figure(fid["project"]["seconds"], n=2)
    assert "skipped" not in fid["plain"], fid["plain"]  # scipy is a dev dependency
    check_figure(fid["plain"]["seconds"], n=2)
    # the same computation: the two FID values agree
    assert math.isclose(fid["project"]["fid"], fid["plain"]["fid"], rel_tol=1e-6, abs_tol=1e-6)
    expected = fid["plain"]["seconds"]["median"] / fid["project"]["seconds"]["median"]
    assert close(fid["speedup"], expected)


@pytest.mark.slow
def test_quick_bench_inference(quick_result: tuple[dict[str, Any], str]) -> None:
    inference = quick_result[0]["inference"]
    assert "skipped" not in inference, inference  # onnxruntime is a dependency
    assert set(inference["providers"]) == {"decoder", "encoder"}
    assert all(p and p[-1] == "CPUExecutionProvider" for p in inference["providers"].values())
    seen = {(r["network"], r["batch"]) for r in inference["results"]}
    assert seen == {("decoder", 1), ("decoder", 8), ("encoder", 1), ("encoder", 8)}
    for r in inference["results"]:
        assert r["max_abs_diff"] < 1e-4  # ORT computes what eager computes
        for runtime in ("ort", "eager"):
            check_figure(r[runtime]["latency_ms"], n=5)
            check_figure(r[runtime]["images_per_s"], n=5)
            assert close(
                r[runtime]["images_per_s"]["max"], r["batch"] * 1e3 / r[runtime]["latency_ms"]["min"]
            )
        assert close(
            r["latency_ratio"], r["ort"]["latency_ms"]["median"] / r["eager"]["latency_ms"]["median"]
        )


@pytest.mark.slow
def test_quick_bench_orchestration_and_targets(quick_result: tuple[dict[str, Any], str]) -> None:
    result = quick_result[0]
    orchestration = result["orchestration"]
    for key in ("vaegan_help", "dvc_repro_noop"):  # dvc is a dependency: the no-op repro is measured
        figure = orchestration[key]
        assert "skipped" not in figure, figure
        check_figure(figure["seconds"], n=2)
        check_figure(figure["reference"]["seconds"], n=2)
        assert close(figure["ratio"], figure["seconds"]["median"] / figure["reference"]["seconds"]["median"])
    assert orchestration["retrain_cached"] == {"skipped": "quick mode"}

    # Each target carries the figure it names, and `met` is that figure against its threshold.
    help_s = orchestration["vaegan_help"]["seconds"]["median"]
    noop_s = orchestration["dvc_repro_noop"]["seconds"]["median"]
    fid_s = result["fid"]["project"]["seconds"]["median"]
    (decoder_1,) = [r for r in result["inference"]["results"] if (r["network"], r["batch"]) == ("decoder", 1)]
    latency = decoder_1["latency_ratio"]
    if result["device_type"] == "cuda":  # the quick plan trains seed/64, not the default/1024 of the targets
        speed: list[tuple[str, float | None, bool | None]] = [
            (">= 100,000 images/s (default, batch 1024)", None, None),
            (">= 5x the textbook loop (default, batch 1024)", None, None),
            (">= 5x the textbook loop (default, batch 256)", None, None),
        ]
        fid_limit = 2.0
    else:
        ratios = result["training"]["configs"][0]["ratio"]
        speed = [(">= 1.5x the textbook loop (seed, batch 64)", ratios["project"], ratios["project"] >= 1.5)]
        if "project_bf16_cl" in ratios:  # a CPU with native bf16: the quick profile's loop too
            fast = ratios["project_bf16_cl"]
            name = ">= 1.5x the textbook loop (seed, batch 64, bf16 + channels_last)"
            speed.append((name, fast, fast >= 1.5))
        fid_limit = 20.0
    expected = [
        *speed,
        (f"FID on 1,000 samples < {fid_limit:g} s", fid_s, fid_s < fid_limit),
        ("ORT decoder latency at batch 1 <= 0.5x PyTorch eager", latency, latency <= 0.5),
        ("`dvc repro` with nothing to do < 3 s", noop_s, noop_s < 3.0),
        ("`vaegan --help` < 1 s", help_s, help_s < 1.0),
        ("fully cached `retrain` flow < 30 s", None, None),
    ]
    assert [(t["target"], t["value"], t["met"]) for t in result["targets"]] == expected
    for target in result["targets"]:
        assert (target["measured"] == "not measured") == (target["value"] is None), target


def test_targets_compare_each_figure_with_its_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_targets on made-up results: thresholds are inclusive where the target says so."""
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    from bench.run import check_targets

    def seconds(median: float) -> dict[str, Any]:
        return {"seconds": {"median": median, "min": median, "max": median, "n": 1}}

    results = {
        "training": {
            "configs": [
                {"preset": "default", "batch": 1024, "ratio": {"project_bf16_graph": 5.0},
                 "results": {"project_bf16_graph": {"images_per_s": {"median": 99_999.0}}}},
                {"preset": "default", "batch": 256, "ratio": {"project_bf16_graph": 4.99}, "results": {}},
            ]
        },
        "fid": {"num_samples": 10_000, "project": seconds(1.99)},
        "inference": {"results": [
            {"network": "decoder", "batch": 1, "latency_ratio": 0.5},
            {"network": "encoder", "batch": 1, "latency_ratio": 9.0},
        ]},
        "orchestration": {"vaegan_help": seconds(1.0), "dvc_repro_noop": seconds(2.5),
                          "retrain_cached": {"skipped": "no --pipeline-dir given"}},
    }  # fmt: skip
    got = [(t["target"], t["measured"], t["value"], t["met"]) for t in check_targets(results, "cuda")]
    assert got == [
        (">= 100,000 images/s (default, batch 1024)", "99,999 images/s", 99_999.0, False),
        (">= 5x the textbook loop (default, batch 1024)", "5.00x", 5.0, True),
        (">= 5x the textbook loop (default, batch 256)", "4.99x", 4.99, False),
        ("FID on 10,000 samples < 2 s", "1.99 s", 1.99, True),
        ("ORT decoder latency at batch 1 <= 0.5x PyTorch eager", "0.50x", 0.5, True),
        ("`dvc repro` with nothing to do < 3 s", "2.50 s", 2.5, True),
        ("`vaegan --help` < 1 s", "1.00 s", 1.0, False),
        ("fully cached `retrain` flow < 30 s", "not measured", None, None),
    ]
    training = {"configs": [{"preset": "seed", "batch": 64, "ratio": {"project": 1.5}}]}
    cpu = check_targets({"training": training}, "cpu")  # the other sections were not run
    assert [(t["target"], t["value"], t["met"]) for t in cpu] == [
        (">= 1.5x the textbook loop (seed, batch 64)", 1.5, True),
        ("FID on 10,000 samples < 20 s", None, None),
        ("`dvc repro` with nothing to do < 3 s", None, None),
        ("`vaegan --help` < 1 s", None, None),
        ("fully cached `retrain` flow < 30 s", None, None),
    ]


@pytest.mark.slow
def test_quality_screen_scores_every_variant_and_seed(
    tmp_path: Path, tiny_config: TinyConfig, trained_evaluator: Path
) -> None:
    """`bench.lab.quality`: each (variant, seed) job trains, fits the prior and scores like the stages;
    the variant's overrides reach the training; one JSON line per job, the table, the samples."""
    config = tiny_config(evaluator={"path": str(trained_evaluator)}, train={"prior_components": 3})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(config.to_dict()))
    out = tmp_path / "quality"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.lab.quality", "--params", str(params), "--out", str(out),
         "--seeds", "0", "1", "--threads", "1", "--variant", "base",
         "--variant", "cutout:train.augment=translation_cutout",
         "--variant", "broken:train.batch_size=100000"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # the broken variant failed
    lines = [json.loads(line) for line in (out / "quality.jsonl").read_text().splitlines()]
    assert [(r["variant"], r["seed"]) for r in lines] == [
        ("base", 0),
        ("base", 1),
        ("cutout", 0),
        ("cutout", 1),
        ("broken", 0),
        ("broken", 1),
    ]
    done = [r for r in lines if "error" not in r]
    assert len(done) == 4 and all("batch_size" in r["error"] for r in lines[4:])
    for record in done:
        assert record["fid"] > record["fid_floor"] > 0
        assert record["fid_ratio"] == pytest.approx(record["fid"] / record["fid_floor"])
        assert 0 <= record["precision"] <= 1 and 0 <= record["recall"] <= 1
        assert record["steps"] == 8  # 256 images, batch 32, one epoch
    # the seed and the variant reach the training (8 steps leave the samples too saturated for their
    # FID to tell the runs apart; the final losses do)
    losses = [r["final_losses"] for r in done]
    assert losses[0]["loss_dis"] != losses[1]["loss_dis"] and losses[0]["loss_dis"] != losses[2]["loss_dis"]
    assert set(losses[0]) >= {"loss_prior", "loss_llike", "loss_pixel", "loss_dis", "loss_gan"}
    summary = json.loads((out / "quality.json").read_text())
    assert "| base | 2 |" in summary["table"] and "| cutout | 2 |" in summary["table"]
    assert "broken" not in summary["table"]
    with np.load(out / "samples.npz") as samples:
        assert sorted(samples.files) == ["base-s0", "base-s1", "cutout-s0", "cutout-s1"]
        assert samples["base-s0"].shape == (100, 28, 28) and samples["base-s0"].dtype == np.uint8


def _profile_step(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "src")])}
    cmd = [sys.executable, "-m", "bench.lab.profile_step", *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_step_profile_times_the_loop_step_and_names_where_the_time_went(tmp_path: Path) -> None:
    """`python -m bench.lab.profile_step` on CPU: the timed steps give the images/s, the profiled ones the
    top operators (the convolutions' backward among them); kernel figures exist only on a GPU."""
    out = tmp_path / "profile.json"
    done = _profile_step(
        "--impl", "project_bf16_cl", "--preset", "seed", "--batch", "16", "--warmup", "1", "--steps", "2",
        "--images", "256", "--device", "cpu", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    summary_keys = ("wall_ms_per_step", "kernel_ms_per_step", "kernels_per_step", "images_per_s")
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {key: result[key] for key in summary_keys}
    assert (result["impl"], result["preset"], result["batch"], result["steps"]) == (
        "project_bf16_cl", "seed", 16, 2,
    )  # fmt: skip
    assert result["settings"]["precision"] == "bf16" and result["settings"]["channels_last"] is True
    assert result["images_per_s"] == pytest.approx(16 * 1000 / result["wall_ms_per_step"])
    assert result["kernel_ms_per_step"] is None and result["kernels_per_step"] is None
    names = [op["name"] for op in result["top_ops"]]
    assert "aten::convolution_backward" in names
    assert all(op["self_ms_per_step"] > 0 and op["calls_per_step"] > 0 for op in result["top_ops"])


def test_step_profile_of_the_textbook_step_by_layer_shape(tmp_path: Path) -> None:
    """`--impl textbook` profiles the reference loop's step; `--by-shape` names each operator row's
    input shapes, so a convolution's rows say which layer they are."""
    out = tmp_path / "textbook.json"
    done = _profile_step(
        "--impl", "textbook", "--preset", "seed", "--batch", "8", "--warmup", "1", "--steps", "2",
        "--images", "64", "--device", "cpu", "--by-shape", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert (result["impl"], result["batch"], result["settings"]["precision"]) == ("textbook", 8, "fp32")
    assert result["images_per_s"] == pytest.approx(8 * 1000 / result["wall_ms_per_step"])
    backward = [op for op in result["top_ops"] if op["name"] == "aten::convolution_backward"]
    # D's features layer (64 -> 64 channels, 3x3) at batch 8: its own row, by its weight's shape
    assert any([64, 64, 3, 3] in op["input_shapes"] and op["input_shapes"][0][0] == 8 for op in backward)
    assert len(backward) > 1 and all(op["calls_per_step"] > 0 for op in backward)


def test_step_profile_refuses_a_cuda_graph_on_a_cpu() -> None:
    done = _profile_step("--impl", "project_bf16_graph", "--device", "cpu")
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith("error: train.cuda_graph: needs a CUDA device; this run trains on cpu")
    )


@pytest.mark.parametrize("way", ["space_to_depth", "unfold"])
def test_strided_convolution_reformulations_are_the_same_function(way: str) -> None:
    """bench.lab.conv_layers times k4 s2 p1 convolutions computed another way; in float64 they agree with
    F.conv2d, gradients included, for one and for several input channels."""
    from bench.lab import conv_layers

    generator = torch.Generator().manual_seed(0)
    for in_channels in (1, 3):
        x = torch.randn(2, in_channels, 14, 14, dtype=torch.float64, generator=generator, requires_grad=True)
        w = torch.randn(5, in_channels, 4, 4, dtype=torch.float64, generator=generator, requires_grad=True)
        b = torch.randn(5, dtype=torch.float64, generator=generator, requires_grad=True)
        native = conv_layers.strided(x, w, b)
        other = getattr(conv_layers, way)(x, w, b)
        assert other.shape == native.shape == (2, 5, 7, 7)
        torch.testing.assert_close(other, native)
        grad = torch.randn(native.shape, dtype=torch.float64, generator=generator)
        expected = torch.autograd.grad(native, (x, w, b), grad)
        for ours, theirs in zip(torch.autograd.grad(other, (x, w, b), grad), expected, strict=True):
            torch.testing.assert_close(ours, theirs)


def test_sub_pixel_convolution_is_the_transposed_convolution() -> None:
    from bench.lab import conv_layers

    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, generator=generator)
    w = torch.randn(3, 4, 4, 4, dtype=torch.float64, generator=generator)
    b = torch.randn(4, dtype=torch.float64, generator=generator)
    native = conv_layers.transposed(x, w, b)
    assert native.shape == (2, 4, 14, 14)
    torch.testing.assert_close(conv_layers.sub_pixel(x, w, b), native)
    # 4 of the 9 taps of each output phase's 3x3 kernel are used: 16 of 36 per (C_out, C_in) pair
    assert int((conv_layers.sub_pixel_weight(w) != 0).sum()) == 3 * 4 * 16


def test_conv_layer_bench_times_every_layer_of_the_preset(tmp_path: Path) -> None:
    out = tmp_path / "layers.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "src")])}
    cmd = [sys.executable, "-m", "bench.lab.conv_layers", "--rows", "4", "--repeats", "1", "--device", "cpu",
           "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert (result["preset"], result["rows"], result["device"]) == ("seed", 4, "cpu")
    # 7 layers; ways: 3 per first layer (2 of them), 2 per other strided or transposed layer (4), 1 (features)
    assert len(result["layers"]) == (2 * 3 + 4 * 2 + 1) * 3 * 3  # x 3 gradient sets x 3 precisions
    assert len(done.stdout.strip().splitlines()) == len(result["layers"])
    assert all(row["ms"] > 0 and row["gflop_per_s"] > 0 for row in result["layers"])
    wrong = subprocess.run([*cmd[:3], "--rows", "0"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert wrong.returncode == 2 and "--rows and --repeats must be at least 1" in wrong.stderr


def test_windows_override_keeps_each_batch_window_size() -> None:
    from bench import run

    plan = run.plan_for(False, "cpu")
    longer = run._overridden(plan, run.argparse.Namespace(presets=None, batches=None, impls=None, windows=24))
    assert longer.schedules == {64: (16, 24, 1), 256: (4, 24, 1), 1024: (1, 24, 1)}
    with pytest.raises(SystemExit, match="--windows must be at least 1"):
        run._overridden(plan, run.argparse.Namespace(presets=None, batches=None, impls=None, windows=0))


def test_the_memorised_codes_bound_samples_next_to_a_training_code() -> None:
    """`bench.lab.prior_screen`'s bound: every sample is one training code plus noise of the
    covariance floor, and every code is drawn about equally often."""
    from bench.lab.prior_screen import memorised_codes

    codes = np.random.default_rng(0).normal(size=(50, 3)) * 10
    prior = memorised_codes(codes, covariance_floor=1e-4)
    z = prior(torch.randn(20_000, 3, generator=torch.Generator().manual_seed(1))).double().numpy()
    nearest = np.linalg.norm(z[:, None, :] - codes[None], axis=2)
    assert nearest.min(axis=1).max() < 0.1  # within 10 standard deviations (0.01) of a code
    counts = np.bincount(nearest.argmin(axis=1), minlength=50)
    assert counts.min() > 0.6 * 400 and counts.max() < 1.4 * 400
