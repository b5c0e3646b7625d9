"""Orchestration overhead, each next to the floor it cannot beat:

- `vaegan --help` (the CLI keeps heavy imports lazy) against `python -c pass`;
- `dvc repro` with nothing to do, in a temporary git + DVC workspace set up like
  tests/test_dvc_pipeline.py (data.source=sample; the data stages fetch and prepare run once,
  untimed), against `dvc --version` (DVC's own start-up). The whole pipeline is not reproduced
  there (training takes minutes); the shared checkout is never touched (a `dvc repro` there could
  run stages under other people's feet and holds DVC's lock);
- a fully cached `retrain` flow (`python -m pipelines.retrain --no-push --no-promote`), only in a
  workspace given with `--pipeline-dir` whose `dvc status` is clean (it registers models in that
  workspace's MLflow store); skipped otherwise, with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.figures import skipped

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_STAGES = ("fetch", "prepare")


def _tool(name: str) -> str | None:
    """The venv's executable `name` (next to this Python), else one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    pythonpath = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PATH": path, "PYTHONPATH": pythonpath, "DVC_NO_ANALYTICS": "1", **(extra or {})}


def timed_run(cmd: Sequence[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """(wall seconds, output) of one command; RuntimeError with its output when it fails."""
    started = time.perf_counter()
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return seconds, proc.stdout + proc.stderr


def _repeat(cmd: Sequence[str], cwd: Path, env: dict[str, str], repeats: int) -> list[float]:
    timed_run(cmd, cwd, env)  # warm the page cache
    return [timed_run(cmd, cwd, env)[0] for _ in range(repeats)]


def measure_cli_help(repeats: int) -> dict[str, Any]:
    """Seconds of `vaegan --help` and of `python -c pass`."""
    vaegan = _tool("vaegan")
    cmd = [vaegan, "--help"] if vaegan else [sys.executable, "-m", "vaegan", "--help"]
    env = _env()
    return {
        "command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)),
        "seconds": _repeat(cmd, REPO_ROOT, env, repeats),
        "reference_seconds": _repeat([sys.executable, "-c", "pass"], REPO_ROOT, env, repeats),
    }


def _data_stage_workspace(root: Path, dvc: str, env: dict[str, str]) -> Path:
    """A git + DVC workspace with the pipeline files and the data stages' code (data.source=sample)."""
    repo = root / "repo"
    repo.mkdir()
    shutil.copy(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = (REPO_ROOT / "params.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(params)
    raw["data"]["source"] = "sample"
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    for dep in sorted({d for name in DATA_STAGES for d in stages[name]["deps"] if d.startswith("src/")}):
        source, target = REPO_ROOT / dep, repo / dep
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy(source, target)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, capture_output=True)
    timed_run([dvc, "init", "-q"], repo, env)
    return repo


def measure_dvc_noop(repeats: int) -> dict[str, Any]:
    """Seconds of a no-op `dvc repro prepare` in a fresh workspace, and of `dvc --version`."""
    dvc = _tool("dvc")
    if dvc is None:
        return skipped("dvc is not installed in this environment")
    env = _env()
    with tempfile.TemporaryDirectory(prefix="vaegan-bench-dvc-") as tmp:
        try:
            repo = _data_stage_workspace(Path(tmp), dvc, env)
            _, first = timed_run([dvc, "repro", "prepare"], repo, env)
            if "Running stage 'prepare'" not in first:
                return skipped(f"the setup `dvc repro prepare` did not run the stages:\n{first[-500:]}")
            seconds = [timed_run([dvc, "repro", "prepare"], repo, env) for _ in range(repeats)]
        except (RuntimeError, OSError, KeyError) as exc:
            return skipped(f"could not set up the DVC workspace: {str(exc)[-500:]}")
        if any("Running stage" in out for _, out in seconds):
            return skipped("`dvc repro prepare` ran a stage again: not a no-op")
        return {
            "command": "dvc repro prepare (stages fetch + prepare up to date)",
            "seconds": [s for s, _ in seconds],
            "reference_seconds": _repeat([dvc, "--version"], repo, env, repeats),
        }


def measure_cached_retrain(pipeline_dir: Path | None, repeats: int) -> dict[str, Any]:
    """Seconds of `python -m pipelines.retrain --no-push --no-promote` in an up-to-date workspace."""
    if pipeline_dir is None:
        return skipped(
            "no --pipeline-dir given: a cached retrain needs a workspace where every stage has run, "
            "and it registers model versions there, so the bench never runs it in the shared checkout"
        )
    dvc = _tool("dvc")
    if dvc is None:
        return skipped("dvc is not installed in this environment")
    env = _env()
    probe = subprocess.run(
        [sys.executable, "-c", "import prefect, pipelines.retrain, vaegan.registry"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["unknown error"])[-1]
        return skipped(f"the retrain flow is not importable: {last}")
    _, status = timed_run([dvc, "status"], pipeline_dir, env)
    if "up to date" not in status:
        return skipped(f"{pipeline_dir}: `dvc status` is not clean, the flow would run stages")
    with tempfile.TemporaryDirectory(prefix="vaegan-bench-prefect-") as prefect_home:
        flow_env = _env(
            {"PREFECT_HOME": prefect_home, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}
        )
        cmd = [sys.executable, "-m", "pipelines.retrain", "--no-push", "--no-promote"]
        seconds = [timed_run(cmd, pipeline_dir, flow_env)[0] for _ in range(repeats)]
    return {"command": " ".join(cmd[1:]), "seconds": seconds}
