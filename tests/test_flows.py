"""The Prefect flows for real: `retrain` end to end on a tiny config (real DVC, MLflow and ONNX Runtime
in a temporary git + DVC repo), a second run that DVC skips, `evaluate-champion` passing on the
champion and failing on a degraded one, and a failing stage that surfaces its own message."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from vaegan.check_champion import ChampionDrift
from vaegan.config import load_config
from vaegan.flows import dvc_stages
from vaegan.flows.dvc_stages import StageFailed

REPO_ROOT = Path(__file__).resolve().parents[1]

# Small enough for a 2-core CI machine; real data (the shipped MNIST sample), real stages.
TINY_PARAMS: dict[str, Any] = {
    "data.source": "sample",
    "model.preset": "seed",
    "evaluator.epochs": 1,
    "train.epochs": 1,
    "train.limit_train_images": 512,
    "train.batch_size": 64,
    "train.checkpoint_every": 4,
    "train.log_every": 4,
    "train.device": "cpu",
    "evaluate.num_samples": 500,
    "evaluate.device": "cpu",
    "registry.max_fid": 1.0e9,  # a 512-image model is far from the production guard
}


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def make_pipeline_repo(root: Path) -> Path:
    """A git + DVC checkout of the pipeline (dvc.yaml, params.yaml, src/, profiles/) with a local remote."""
    repo = root / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        if (REPO_ROOT / name).exists():
            shutil.copy(REPO_ROOT / name, repo / name)
    for name in ("src", "profiles"):
        shutil.copytree(
            REPO_ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    _git(repo, "init", "-q")
    _git(
        repo,
        "-c",
        "user.email=t@example.com",
        "-c",
        "user.name=t",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "init",
    )
    dvc_stages.run_dvc(["init", "-q"], repo)
    code, output = dvc_stages.run_dvc(["remote", "add", "-d", "local", str(root / "remote")], repo)
    assert code == 0, output
    return repo


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One Prefect test server for the module, its home in a temporary directory."""
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        temporary_settings({PREFECT_HOME: tmp_path_factory.mktemp("prefect-home")}),
        prefect_test_harness(server_startup_timeout=None),
    ):
        yield


@pytest.fixture(scope="module")
def first_run(
    harness: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The retrain flow run once on the tiny config: (repo, the flow's digest)."""
    from pipelines.retrain import retrain

    repo = make_pipeline_repo(tmp_path_factory.mktemp("flows"))
    cwd = os.getcwd()
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        digest = retrain(params=TINY_PARAMS, profile=None, repo_dir=str(repo))
        yield repo, digest
    finally:
        os.chdir(cwd)
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture
def in_repo(first_run: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Path:
    repo, _ = first_run
    monkeypatch.chdir(repo)
    return repo


def _artifact_markdown(key: str) -> str:
    from prefect.artifacts import Artifact

    artifact = Artifact.get(key)
    assert artifact is not None, f"no Prefect artifact {key!r}"
    return str(artifact.data)


def test_retrain_runs_every_stage_registers_and_promotes(first_run: tuple[Path, dict[str, Any]]) -> None:
    repo, digest = first_run
    assert all(stage["ran"] for stage in digest["stages"].values()), digest["stages"]
    assert list(digest["stages"]) == list(dvc_stages.PIPELINE_STAGES)
    assert digest["promoted"] is True  # the first model passing the guards becomes champion
    assert digest["registered"] == {
        "decoder": "models:/vaegan-decoder/1",
        "encoder": "models:/vaegan-encoder/1",
    }
    assert digest["pushed_to"] == "default"
    # params.yaml and dvc.lock agree: the overrides were written before the stages ran
    params = yaml.safe_load((repo / "params.yaml").read_text())
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert params["train"]["limit_train_images"] == 512
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["limit_train_images"] == 512
    eval_metrics = json.loads((repo / "metrics" / "eval.json").read_text())
    assert digest["fid"] == pytest.approx(eval_metrics["fid"])
    assert eval_metrics["num_samples"] == 500
    # the artifacts are in the DVC remote
    code, output = dvc_stages.run_dvc(["status", "--cloud"], repo)
    assert code == 0 and "in sync" in output, output
    summary = _artifact_markdown("retrain-summary")
    assert "# Retrain: new champion" in summary
    assert f"| fid | {eval_metrics['fid']:.4g} |" in summary
    assert "models:/vaegan-decoder/1" in summary


def test_second_run_with_nothing_changed_is_cached(first_run: tuple[Path, dict[str, Any]]) -> None:
    from pipelines.retrain import retrain

    repo, _ = first_run
    lock_before = (repo / "dvc.lock").read_text()
    cwd = os.getcwd()
    try:
        digest = retrain(params=TINY_PARAMS, profile=None, repo_dir=str(repo), push_remote=False)
    finally:
        os.chdir(cwd)
    assert not any(stage["ran"] for stage in digest["stages"].values()), digest["stages"]
    assert (repo / "dvc.lock").read_text() == lock_before
    assert digest["params_changed"] == {}
    # the same export is not registered twice, and the champion stays
    assert digest["registered"] == {
        "decoder": "models:/vaegan-decoder/1",
        "encoder": "models:/vaegan-encoder/1",
    }
    assert digest["promoted"] is False
    assert any("is already the champion" in reason for reason in digest["reasons"]), digest["reasons"]


def test_evaluate_champion_passes_and_logs_to_mlflow(in_repo: Path) -> None:
    from mlflow.tracking import MlflowClient

    from pipelines.evaluate_champion import evaluate_champion

    result = evaluate_champion(seed=123, repo_dir=str(in_repo))
    assert result["passed"] is True
    # a fresh seed on the same ONNX models: the FID moves a little, not beyond the allowed drift
    assert abs(float(result["fid_drift"])) < 0.25
    client = MlflowClient(tracking_uri=f"sqlite:///{in_repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("scheduled-evaluation")
    assert experiment is not None
    run = client.get_run(str(result["run_id"]))
    assert run.data.tags["model.decoder"] == "vaegan-decoder v1"
    assert run.data.tags["seed"] == "123"
    assert run.data.tags["verdict"] == "pass"
    assert run.data.metrics["fid"] == pytest.approx(float(result["fid"]))
    assert "# Champion evaluation: pass" in _artifact_markdown("champion-evaluation")


def test_sample_from_the_champion_uri_writes_a_png_grid(in_repo: Path) -> None:
    """`vaegan sample --model models:/vaegan-decoder@champion`: the registry's artifact alone generates."""
    import struct

    from vaegan.cli import main as vaegan_main

    code = vaegan_main(
        ["sample", "--model", "models:/vaegan-decoder@champion", "--n", "16", "--out", "grid.png"]
    )
    assert code == 0
    png = (in_repo / "grid.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width == height and width >= 4 * 28  # a 4 x 4 grid of 28 x 28 digits


def test_evaluate_champion_fails_on_a_degraded_champion(in_repo: Path) -> None:
    """A champion that no longer scores the FID recorded at promotion fails the flow."""
    import torch
    from mlflow.tracking import MlflowClient

    from pipelines.evaluate_champion import evaluate_champion
    from vaegan.artifacts.checkpoint import load_checkpoint, save_checkpoint
    from vaegan.artifacts.provenance import sha256_file
    from vaegan.cli import main as vaegan_main
    from vaegan.registry import register_models

    payload = load_checkpoint("models/vaegan.pt")
    # a broken decoder: every weight zeroed, the output bias at +5 -> white squares for any z
    decoder = {key: torch.zeros_like(value) for key, value in payload["decoder"].items()}
    output_bias = [key for key in decoder if key.endswith("bias")][-1]
    decoder[output_bias] += 5.0
    payload["decoder"] = decoder
    save_checkpoint("degraded/vaegan.pt", payload)
    overrides = [
        "train.model_path=degraded/vaegan.pt",
        "export.dir=degraded/onnx",
        "export.metrics_path=degraded/export.json",
        "evaluate.metrics_path=degraded/eval.json",
    ]
    assert vaegan_main(["export", *[arg for o in overrides for arg in ("--set", o)]]) == 0
    # registered with the good model's metrics (the registry checks that an eval.json describes the
    # checkpoint, so the record is forged here): the recorded FID is one the damaged model lacks
    # (the tiny test model is too weak to lose much FID, so the record also claims a 4x better FID)
    record = json.loads(Path("metrics/eval.json").read_text())
    record["provenance"]["checkpoint_sha256"] = sha256_file("degraded/vaegan.pt")
    record["fid"] = record["fid"] / 4
    Path("degraded/eval.json").write_text(json.dumps(record))
    registration = register_models(config=load_config("params.yaml", overrides))
    client = MlflowClient(tracking_uri=f"sqlite:///{in_repo / 'mlflow.db'}")
    client.set_registered_model_alias("vaegan-decoder", "champion", registration.decoder_version)
    client.set_registered_model_alias("vaegan-encoder", "champion", registration.encoder_version)

    with pytest.raises(ChampionDrift, match=r"drift \+\d+.*BEYOND the allowed \+25%"):
        evaluate_champion(seed=5, repo_dir=str(in_repo))
    drift = _artifact_markdown("champion-drift")
    assert "# Champion evaluation: DRIFT" in drift
    assert f"vaegan-decoder v{registration.decoder_version}" in drift


def test_failing_stage_fails_the_flow_with_its_own_message(harness: None, tmp_path: Path) -> None:
    from pipelines.retrain import retrain

    repo = make_pipeline_repo(tmp_path)
    missing = tmp_path / "no-such-idx-dir"
    cwd = os.getcwd()
    try:
        with pytest.raises(StageFailed) as failure:
            retrain(params={"data.source": str(missing)}, profile=None, repo_dir=str(repo), push_remote=False)
    finally:
        os.chdir(cwd)
    message = str(failure.value)
    assert "DVC stage 'fetch' failed" in message
    assert str(missing) in message
    assert not (repo / "data" / "prepared").exists()
