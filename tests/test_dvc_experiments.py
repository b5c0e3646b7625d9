"""`dvc exp run --temp` and `--queue` record their MLflow runs in the user's store.

DVC runs such experiments in a temporary copy of the repository and deletes it afterwards; with a
relative `sqlite:///mlflow.db` the runs used to land in that copy and vanish with it. The real
`train` stage of dvc.yaml runs here under real DVC (a tiny budget on the MNIST sample), and the
test reads the workspace's store with MLflow's own client.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.test_dvc_pipeline import dvc, git
from vaegan.artifacts.checkpoint import load_checkpoint
from vaegan.config import TrackingConfig
from vaegan.tracking.store import tracking_uri, uri_in_effect

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = {
    "train.epochs": 1, "train.batch_size": 32, "train.limit_train_images": 128, "train.device": "cpu",
    "train.log_every": 2, "train.checkpoint_every": 100, "model.preset": "seed", "train.prior_components": 20,
}  # fmt: skip


@pytest.fixture
def exp_repo(tmp_path: Path, small_prepared_dir: Path, _migrated_mlflow_db: Path) -> Path:
    """A git + DVC repo holding the real `train` stage, a tiny budget in params.yaml, the prepared
    sample in git and an MLflow store at the default relative URI (sqlite:///mlflow.db)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["train"]
    stage["deps"] = ["${data.prepared_dir}"]  # the code is the installed package here
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}, sort_keys=False))
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert params["tracking"]["uri"] == "sqlite:///mlflow.db"
    for dotted, value in TINY_TRAIN.items():
        section, key = dotted.split(".")
        params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(small_prepared_dir, repo / params["data"]["prepared_dir"])
    shutil.copy(_migrated_mlflow_db, repo / "mlflow.db")
    (repo / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n")
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipeline")
    return repo


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///mlflow.db", "sqlite:////work/repo/mlflow.db"),
        ("sqlite:///stores/m.db", "sqlite:////work/repo/stores/m.db"),
        ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
        ("mlruns", "/work/repo/mlruns"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ],
)
def test_relative_local_stores_are_anchored_at_dvc_root(
    uri: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/")  # outside DVC: against the working directory
    assert tracking_uri(TrackingConfig(uri=uri)) == expected.replace("/work/repo", "")
    monkeypatch.setenv("DVC_ROOT", "/work/repo")
    assert tracking_uri(TrackingConfig(uri=uri)) == expected


def test_an_explicit_uri_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--tracking-uri is what the user typed in their shell: even inside a DVC stage a relative store
    is theirs, not DVC_ROOT's; without one, the params' URI goes through tracking_uri."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", "/work/repo")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = TrackingConfig(uri="sqlite:///mlflow.db")
    assert uri_in_effect(tracking, "sqlite:///mine.db") == f"sqlite:///{Path.cwd() / 'mine.db'}"
    assert uri_in_effect(tracking, "http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert uri_in_effect(tracking) == "sqlite:////work/repo/mlflow.db"


def _runs_by_exp_name(repo: Path) -> dict[str, str]:
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {run.data.tags.get("dvc.exp_name", ""): run.info.run_id for run in runs}


def _shown_run_ids(repo: Path) -> dict[str, str]:
    """Experiment name -> the mlflow_run_id metric that `dvc exp show` reports for it."""
    shown = json.loads(dvc(repo, "exp", "show", "--json"))
    ids = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for revision in experiment["revs"]:
                metrics = revision["data"]["metrics"]["metrics/train.json"]["data"]
                ids[revision["name"]] = metrics["mlflow_run_id"]
    return ids


@pytest.mark.slow
def test_temp_and_queued_experiments_log_into_the_workspace_store(exp_repo: Path) -> None:
    repo = exp_repo
    assert _runs_by_exp_name(repo) == {}

    dvc(repo, "exp", "run", "--temp", "-n", "temp-seed1", "-S", "train.seed=1")
    runs = _runs_by_exp_name(repo)
    assert set(runs) == {"temp-seed1"}

    dvc(repo, "exp", "run", "--queue", "-n", "queued-seed2", "-S", "train.seed=2")
    try:
        dvc(repo, "queue", "start", "-j", "1")
        dvc(repo, "queue", "logs", "--follow", "queued-seed2")
    finally:
        dvc(repo, "queue", "stop")
    runs = _runs_by_exp_name(repo)
    assert set(runs) == {"temp-seed1", "queued-seed2"}
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    for name, run_id in runs.items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["train.seed"] == {"temp-seed1": "1", "queued-seed2": "2"}[name]
        assert run.data.metrics["final/steps"] == 4.0  # 128 images / batch 32
        assert len(run.data.tags["dvc.exp_baseline_rev"]) == 40
    # The runs' artifacts (epoch grids) are in the workspace's artifact folder too.
    assert len(list((repo / "mlartifacts").rglob("samples.png"))) == 2
    assert _shown_run_ids(repo) == runs
    assert not (repo / "models").exists(), "a temp/queued experiment must not touch the workspace"


def test_a_dvc_experiment_runs_the_code_of_its_own_copy(tmp_path: Path) -> None:
    """Under `dvc exp run --queue`/`--temp` (DVC_EXP_NAME set, the copy as working directory) the
    `vaegan` on PATH re-executes itself on the copy's src/, not the editable install's."""
    copy = tmp_path / "copy"
    shutil.copytree(
        REPO_ROOT / "src" / "vaegan", copy / "src" / "vaegan", ignore=shutil.ignore_patterns("__pycache__")
    )
    with (copy / "src" / "vaegan" / "__init__.py").open("a") as init:
        init.write('print("vaegan imported from", __file__)\n')
    vaegan = [str(Path(sys.executable).parent / "vaegan"), "params", "--set", "train.epochs=3"]
    env = {k: v for k, v in os.environ.items() if k not in ("DVC_EXP_NAME", "VAEGAN_FROM_CHECKOUT")}
    outside = subprocess.run(vaegan, cwd=copy, env=env, capture_output=True, text=True, check=True)
    assert "vaegan imported from" not in outside.stdout  # not an experiment: the installed package
    queued = subprocess.run(
        vaegan, cwd=copy, env={**env, "DVC_EXP_NAME": "queued-1"}, capture_output=True, text=True, check=True
    )
    assert f"vaegan imported from {copy / 'src' / 'vaegan' / '__init__.py'}" in queued.stdout
    assert "epochs: 3" in queued.stdout  # the arguments went along


@pytest.mark.slow
def test_an_experiment_with_fewer_epochs_than_the_kept_checkpoint_trains_afresh(exp_repo: Path) -> None:
    """`dvc exp run -S train.epochs=N` below the persisted last.pt's budget is a new run, not an error."""
    repo = exp_repo
    dvc(repo, "exp", "run", "-S", "train.epochs=2")
    last = repo / "models" / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["state"]["step"] == 8  # 128 images / batch 32, two epochs
    output = dvc(repo, "exp", "run", "-S", "train.epochs=1")
    assert "beyond this run's budget of 4 steps" in output and "starting fresh" in output
    state = load_checkpoint(last)["state"]
    assert state["completed"] is True and state["step"] == 4
    assert json.loads((repo / "metrics" / "train.json").read_text())["steps"] == 4
