"""Sample quality of the quick profile, end to end (slow: about 8 minutes on a 2-core CPU).

The real stages run on the shipped MNIST sample with params.yaml's defaults (9 epochs, the fitted
400-component prior), and the VAE-GAN is compared with the `vae` baseline trained and scored the same
way. The bounds hold with a margin on every measured seed (docs/training.md; other CPUs train other
weights): a regression in training or in the prior fails here, in `make test-all`, not only in a
benchmark table.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
VAEGAN = str(Path(sys.executable).parent / "vaegan")


def _stage(workdir: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([VAEGAN, *args], cwd=workdir, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"vaegan {' '.join(args)} failed:\n{proc.stderr[-3000:]}"


@pytest.mark.slow
def test_quick_profile_prior_samples_beat_the_baseline_and_the_standard_prior(tmp_path: Path) -> None:
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    offline = ("--set", "data.source=sample")
    for command in ("fetch", "prepare", "evaluator"):
        _stage(tmp_path, command, *offline)
    baseline = (
        "--set", "train.objective=vae", "--set", "train.model_path=models/baseline/vae.pt",
        "--set", "train.checkpoint_dir=models/baseline/checkpoints",
        "--set", "train.metrics_path=metrics/baseline/train.json",
        "--set", "train.history_path=metrics/baseline/train_history.csv",
    )  # fmt: skip
    _stage(tmp_path, "train", *offline, *baseline)
    _stage(
        tmp_path, "evaluate", *offline, "--set", "evaluate.checkpoint=models/baseline/vae.pt",
        "--set", "evaluate.metrics_path=metrics/baseline/eval.json",
        "--set", "evaluate.report_dir=reports/baseline", "--set", "evaluate.baseline_metrics=null",
    )  # fmt: skip
    _stage(tmp_path, "train", *offline)
    _stage(tmp_path, "evaluate", *offline)

    m = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    base = json.loads((tmp_path / "metrics" / "baseline" / "eval.json").read_text())
    assert m["prior"] == base["prior"] == "mixture" and m["num_samples"] == base["num_samples"] == 10_000
    # measured with 400 components on a 2-core AMD EPYC with AVX512-BF16 (docs/training.md)
    assert m["fid"] <= 0.3 * base["fid"]  # 0.22 on seed 0 (0.19-0.28 over 5 seeds with 80 components)
    assert m["fid"] <= 0.1 * m["fid_standard_prior"]  # 0.037
    # 3.09 / 2.83 / 3.44x on seeds 0 / 1 / 2 in bf16, 2.86-2.91x in fp32 (5x before the 400 components)
    assert m["fid"] <= 4.5 * m["fid_floor"]
    # 0.82-0.83 and 0.75-0.78 in bf16 and fp32; a discriminator that trades recall for precision
    # (0.87 and 0.65 with `model.discriminator_blocks: 1`) fails the recall bound
    assert m["precision"] >= 0.78 and m["recall"] >= 0.7
    assert m["sample_class_entropy"] >= 0.95 * math.log(10)
    assert m["label_consistency"] >= 0.96  # measured 0.977-0.979
