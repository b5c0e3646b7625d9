"""The benchmark harness: its quick mode runs end to end in a subprocess and writes a well-formed
result (keys, positive figures, min <= median <= max, ratios equal to the ratio of the medians).
Timings themselves are not asserted: they depend on the machine and its load."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_summary_and_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT))  # bench/ is a top-level folder, not an installed package
    from bench.figures import ratio, summary

    assert summary([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert summary([4.0, 1.0])["median"] == 2.5
    assert ratio({"median": 6.0}, {"median": 4.0}) == 1.5
    with pytest.raises(ValueError):
        summary([])


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


def test_quick_bench_header_and_table(quick_result: tuple[dict[str, Any], str]) -> None:
    result, stdout = quick_result
    assert result["format"] == "vaegan-bench/1" and result["quick"] is True
    assert result["device"] and result["device_type"] in ("cpu", "cuda", "mps")
    assert result["versions"]["torch"] and result["torch_threads"] >= 1 and result["wall_s"] > 0
    assert set(result) >= {"training", "fid", "inference", "orchestration", "targets"}
    for heading in ("### training", "### fid", "### inference", "### orchestration", "### targets"):
        assert heading in stdout


def test_quick_bench_training(quick_result: tuple[dict[str, Any], str]) -> None:
    training = quick_result[0]["training"]
    assert training["epoch_images"] == 60_000
    assert [(c["preset"], c["batch"]) for c in training["configs"]] == [("seed", 64)]
    config = training["configs"][0]
    assert "textbook" in config["results"] and "project" in config["results"]
    textbook = config["results"]["textbook"]
    for impl, res in config["results"].items():
        check_figure(res["images_per_s"], n=2)
        check_figure(res["epoch_s"], n=2)
        # epoch time is 60,000 images / throughput, window by window
        assert close(res["epoch_s"]["min"], 60_000 / res["images_per_s"]["max"])
        assert res["peak_rss_mib"] > 50
        assert res["steps"] == res["window_steps"] * (2 + res["warmup_windows"])
        if impl != "textbook":
            expected = res["images_per_s"]["median"] / textbook["images_per_s"]["median"]
            assert close(config["ratio"][impl], expected)


def test_quick_bench_fid(quick_result: tuple[dict[str, Any], str]) -> None:
    fid = quick_result[0]["fid"]
    assert fid["num_samples"] == 1000
    check_figure(fid["project"]["seconds"], n=2)
    if "skipped" not in fid["plain"]:
        check_figure(fid["plain"]["seconds"], n=2)
        # the same computation: the two FID values agree
        assert math.isclose(fid["project"]["fid"], fid["plain"]["fid"], rel_tol=1e-6, abs_tol=1e-6)
        expected = fid["plain"]["seconds"]["median"] / fid["project"]["seconds"]["median"]
        assert close(fid["speedup"], expected)


def test_quick_bench_inference(quick_result: tuple[dict[str, Any], str]) -> None:
    inference = quick_result[0]["inference"]
    if "skipped" in inference:
        pytest.skip(inference["skipped"])
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


def test_quick_bench_orchestration_and_targets(quick_result: tuple[dict[str, Any], str]) -> None:
    result = quick_result[0]
    orchestration = result["orchestration"]
    help_figure = orchestration["vaegan_help"]
    check_figure(help_figure["seconds"], n=2)
    check_figure(help_figure["reference"]["seconds"], n=2)
    assert close(
        help_figure["ratio"], help_figure["seconds"]["median"] / help_figure["reference"]["seconds"]["median"]
    )
    assert (
        "skipped" in orchestration["dvc_repro_noop"] or orchestration["dvc_repro_noop"]["seconds"]["n"] == 2
    )
    assert orchestration["retrain_cached"] == {"skipped": "quick mode"}
    for target in result["targets"]:
        assert set(target) == {"target", "measured", "value", "met"}
        assert target["met"] in (True, False, None)
        assert (target["value"] is None) == (target["met"] is None)
