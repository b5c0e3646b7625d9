import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vaegan.config import load_config
from vaegan.dvc_commands import PIPELINE_STAGES, apply_params, run_dvc, stage_lock_md5
from vaegan.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def params_copy(tmp_path: Path) -> Path:
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_pipeline_stages_cover_dvc_yaml_in_dependency_order() -> None:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert set(PIPELINE_STAGES) == set(stages)
    outs_of = {}
    for name, stage in stages.items():
        for out in stage.get("outs", []):
            outs_of[next(iter(out)) if isinstance(out, dict) else out] = name
    position = {name: i for i, name in enumerate(PIPELINE_STAGES)}
    for name, stage in stages.items():
        for dep in stage.get("deps", []):
            producer = outs_of.get(dep)
            if producer is not None:
                assert position[producer] < position[name], f"{name} runs before {producer}"


def test_apply_params_keeps_comments_and_validates(params_copy: Path) -> None:
    before = (params_copy / "params.yaml").read_text()
    changes = apply_params({"train.epochs": 7, "data.mirrors": ["http://127.0.0.1:1/"]}, params_copy)
    assert set(changes) == {"train.epochs", "data.mirrors"}
    after = (params_copy / "params.yaml").read_text()
    assert "# vaegan params: one section per stage." in after
    assert "# mnist | fashion-mnist" in after
    config = load_config(params_copy / "params.yaml")
    assert config.train.epochs == 7
    assert config.data.mirrors == ("http://127.0.0.1:1/",)
    assert len(after.splitlines()) == len(before.splitlines())


def test_apply_params_noop_and_rejects_bad_values(params_copy: Path) -> None:
    path = params_copy / "params.yaml"
    before = path.read_bytes()
    assert apply_params({"train.epochs": load_config(path).train.epochs}, params_copy) == {}
    with pytest.raises(ConfigError, match="train.lr"):
        apply_params({"train.lr": -1}, params_copy)
    assert path.read_bytes() == before


def test_stage_lock_md5(tmp_path: Path) -> None:
    assert stage_lock_md5("train", tmp_path) == "none"
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  train:\n    cmd: vaegan train\n    outs:\n"
        "    - path: models/vaegan.pt\n      md5: abc123\n      size: 1\n"
    )
    assert stage_lock_md5("train", tmp_path) == "abc123"


HOLD_REPO_LOCK = """
import sys, time
from dvc.repo import Repo
with Repo(sys.argv[1]) as repo, repo.lock:
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_dvc_commands_wait_for_the_repository_lock_instead_of_failing(tmp_path: Path) -> None:
    """Another DVC command holding the workspace's lock longer than DVC's own 3 s retry: ours waits."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert run_dvc(["init", "-q"], tmp_path)[0] == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_REPO_LOCK, str(tmp_path), "8"], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    code, output = run_dvc(["status"], tmp_path)
    waited = time.monotonic() - started
    holder.wait(timeout=60)
    assert code == 0, output
    assert "Unable to acquire lock" not in output
    assert waited > 3  # it waited past DVC's own retries for the holder to finish
