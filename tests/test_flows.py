"""The Prefect flows for real: `retrain` end to end on a tiny config (real DVC, MLflow and ONNX Runtime
in a temporary git + DVC repo), a second run that DVC skips, `check-champion` passing on the
champion, scoring with the configured feature extractor and failing on a degraded champion, and a
failing stage that surfaces its own message.

Prefect and the flows are imported inside the tests: prefect reads its settings once, when it is
first imported, and the harness fixture sets them first."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from vaegan import dvc_commands
from vaegan.artifacts.checkpoint import load_checkpoint, save_checkpoint
from vaegan.artifacts.provenance import sha256_file
from vaegan.check_champion import ChampionDrift, check_champion
from vaegan.cli import main as vaegan_main
from vaegan.config import load_config
from vaegan.data.splits import SPLITS, split_files
from vaegan.dvc_commands import StageFailed
from vaegan.registry.promotion import promote_challenger
from vaegan.registry.registration import register_models
from vaegan.scoring.inception import FEATURE_DIM, FIDInception

pytestmark = pytest.mark.slow  # a Prefect server, real DVC stages and training: minutes

REPO_ROOT = Path(__file__).resolve().parents[1]
# A model that learns in seconds (the baseline objective; FID ~580 where the flow's model has ~1330),
# and the noise that degrades it (std of the noise on each decoder weight, in units of its std).
GOOD_MODEL = [
    "train.objective=vae",
    "train.limit_train_images=0",
    "train.epochs=5",
    "train.lr=0.003",
    "train.model_path=drift/good.pt",
    "train.checkpoint_dir=drift/checkpoints",
    "train.metrics_path=drift/train.json",
    "train.history_path=drift/history.csv",
]
NOISE = 1.0

# Small enough for a 2-core CI machine; real data (the shipped MNIST sample), real stages: the
# smoke profile's overrides, applied to params.yaml as the flow applies a profile.
TINY_PARAMS: dict[str, Any] = yaml.safe_load((REPO_ROOT / "profiles" / "smoke.yaml").read_text())


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
    dvc_commands.run_dvc(["init", "-q"], repo)
    code, output = dvc_commands.run_dvc(["remote", "add", "-d", "local", str(root / "remote")], repo)
    assert code == 0, output
    return repo


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One Prefect test server for the module, its home in a temporary directory."""
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        temporary_settings({PREFECT_HOME: tmp_path_factory.mktemp("prefect-home")}),
        prefect_test_harness(server_startup_timeout=300),  # a busy 2-core machine needs more than 20 s
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
    assert list(digest["stages"]) == list(dvc_commands.PIPELINE_STAGES)
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
    code, output = dvc_commands.run_dvc(["status", "--cloud"], repo)
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


def test_check_champion_passes_and_logs_to_mlflow(
    in_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.check_champion import check_champion as check_champion_flow

    temp = tmp_path / "system-temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    result = check_champion_flow(seed=123, repo_dir=str(in_repo))
    assert result["passed"] is True
    # each run used to leave the champion's two downloads behind in the system temp folder
    assert [p.name for p in temp.iterdir() if p.name.startswith("vaegan-")] == []
    # a fresh seed on the same ONNX models: the FID moves a little, not beyond the allowed drift
    assert abs(float(result["fid_drift"])) < 0.25
    client = MlflowClient(tracking_uri=f"sqlite:///{in_repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("check-champion")
    assert experiment is not None
    run = client.get_run(str(result["run_id"]))
    assert run.data.tags["model.decoder"] == "vaegan-decoder v1"
    assert run.data.tags["seed"] == "123"
    assert run.data.tags["verdict"] == "pass"
    assert run.data.metrics["fid"] == pytest.approx(float(result["fid"]))
    assert "# Champion evaluation: pass" in _artifact_markdown("champion-evaluation")


def test_check_champion_scores_with_the_configured_feature_extractor(in_repo: Path, tmp_path: Path) -> None:
    """With `evaluate.feature_extractor: inception` the champion check computes an Inception FID, as
    the `evaluate` stage does (it used to score LeNet features whatever the params said, and compare
    them with an Inception FID recorded at promotion). Randomly initialised Inception weights and a
    few images keep it to seconds on CPU; the check notes that the promotion FID used other features."""
    torch.manual_seed(0)
    weights = tmp_path / "inception.pth"
    torch.save(FIDInception().net.state_dict(), weights)  # the layout of pytorch-fid's weights file
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    for split in SPLITS:  # the first 16 images of each split of the repo's prepared data
        for source, target in zip(
            split_files("data/prepared", split), split_files(prepared, split), strict=True
        ):
            np.save(target, np.load(source)[:16])
    config = load_config(
        "params.yaml",
        [
            "evaluate.feature_extractor=inception",
            f"evaluate.inception_weights={weights}",
            f"data.prepared_dir={prepared}",
            "evaluate.num_samples=16",
            "evaluate.limit_test_images=12",
            "evaluate.batch_size=8",
        ],
    )
    report = check_champion(config=config, seed=0, device="cpu")
    assert report.metrics["feature_extractor"] == "inception"
    assert report.metrics["feature_dim"] == FEATURE_DIM == 2048
    assert [report.metrics[key] for key in ("num_test", "num_floor", "num_samples")] == [12, 12, 16]
    assert math.isfinite(report.fid)
    assert "promotion FID used lenet features, this one inception: FIDs differ in scale" in report.notes
    assert (
        "promotion FID used 1000 test images, this one 12 (evaluate.limit_test_images): FID depends on N"
        in report.notes
    )


def test_sample_from_the_champion_uri_writes_a_png_grid(in_repo: Path) -> None:
    """`vaegan sample --model models:/vaegan-decoder@champion`: the registry's artifact alone generates."""
    code = vaegan_main(
        ["sample", "--model", "models:/vaegan-decoder@champion", "--n", "16", "--out", "grid.png"]
    )
    assert code == 0
    png = (in_repo / "grid.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width == height and width >= 4 * 28  # a 4 x 4 grid of 28 x 28 digits


def test_check_champion_fails_on_a_degraded_champion(in_repo: Path) -> None:
    """A champion that scores worse now than at its promotion fails the flow.

    A model worth promoting is trained and evaluated by the real stages (the flow's 8-step model
    draws grey squares, FID ~1330: as bad as LeNet FIDs get, so nothing scores worse than it). Its
    decoder then gets Gaussian noise on every weight, and that degraded model is exported, registered
    with the evaluation the trained model really scored, and promoted by the real gate (its record
    beats the champion's). The FID on record is measured, not edited; the artifact no longer earns it.
    """
    from pipelines.check_champion import check_champion as check_champion_flow

    def vaegan(command: str, *overrides: str) -> None:
        assert vaegan_main([command, *[arg for o in overrides for arg in ("--set", o)]]) == 0

    vaegan("train", *GOOD_MODEL)
    vaegan(
        "evaluate",
        "evaluate.checkpoint=drift/good.pt",
        "evaluate.metrics_path=drift/good-eval.json",
        "evaluate.report_dir=drift/good-report",
        "evaluate.baseline_metrics=null",
    )
    payload = load_checkpoint("drift/good.pt")
    generator = torch.Generator().manual_seed(0)
    payload["decoder"] = {
        key: value + NOISE * value.std() * torch.randn(value.shape, generator=generator)
        if key.endswith("weight") and value.dim() > 1  # the linear and transposed-conv weights
        else value
        for key, value in payload["decoder"].items()
    }
    save_checkpoint("drift/vaegan.pt", payload)
    overrides = [
        "train.model_path=drift/vaegan.pt",
        "export.dir=drift/onnx",
        "export.metrics_path=drift/export.json",
        "evaluate.metrics_path=drift/eval.json",
    ]
    vaegan("export", *overrides)
    # the registry takes an evaluation only for the checkpoint it describes: the trained model's is
    # addressed to the degraded checkpoint, as when an artifact changes after its evaluation
    record = json.loads(Path("drift/good-eval.json").read_text())
    record["provenance"]["checkpoint_sha256"] = sha256_file("drift/vaegan.pt")
    Path("drift/eval.json").write_text(json.dumps(record))
    config = load_config("params.yaml", overrides)
    registration = register_models(config=config)
    decision = promote_challenger(
        config=config, versions=(registration.decoder_version, registration.encoder_version)
    )
    assert decision.promoted, decision.reasons
    champion = MlflowClient(tracking_uri=f"sqlite:///{in_repo / 'mlflow.db'}").get_model_version_by_alias(
        "vaegan-decoder", "champion"
    )
    assert str(champion.version) == registration.decoder_version
    assert float(champion.tags["metric.fid"]) == record["fid"]  # the trained model's own FID

    with pytest.raises(ChampionDrift, match=r"drift \+\d+.*BEYOND the allowed \+25%"):
        check_champion_flow(seed=5, repo_dir=str(in_repo))
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


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".dvc" not in p.parts and ".git" not in p.parts and "__pycache__" not in p.parts
        and p.name != "mlflow.db" and "mlartifacts" not in p.parts and "checkpoints" not in p.parts
    }  # fmt: skip


def test_failed_run_leaves_the_workspace_as_before(in_repo: Path) -> None:
    """A stage that fails used to leave its outputs deleted (DVC removes them before running it)
    and params.yaml holding the failed override: now params.yaml, dvc.lock and every output are put
    back, and the error says so. (Last in this module: it reruns stages in the shared repo.)"""
    from pipelines.retrain import RESTORED, retrain

    before = _tree_digest(in_repo)
    assert "data/prepared/train-images.npy" in before and "metrics/eval.json" in before
    with pytest.raises(StageFailed) as failure:
        # every training record to validation: `prepare` fails after DVC removed data/prepared
        retrain(params={**TINY_PARAMS, "data.val_fraction": 0.99999}, profile=None, repo_dir=str(in_repo))
    message = str(failure.value)
    assert "DVC stage 'prepare' failed" in message and "leaves none to train on" in message
    assert message.endswith(RESTORED)
    assert _tree_digest(in_repo) == before
