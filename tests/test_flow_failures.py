"""The flows' commands fail like `vaegan` does: bad arguments are one line and exit 2 before Prefect
starts (params.yaml untouched), and a refusal is not retried (issue 13 item 9)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prefect.states import Completed, Failed

from pipelines import check_champion, retrain
from vaegan.errors import CheckpointError, RegistryError, ServiceUnavailable, WorkspaceError
from vaegan.flows.failures import check_dvc_lock, parse_overrides, worth_retrying

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "bogus.key=1"], "retrain: error: bogus: unknown section (known: data,"),
        (["--set", "train.bogus=1"], "retrain: error: train.bogus: unknown key"),
        (["--set", "train.epochs"], "retrain: error: --set 'train.epochs': expected section.key=value"),
        (["--set", "train.epochs=-1"], "retrain: error: train.epochs: -1 is out of range"),
        (["--set", "evaluate.precision_recall_k=20000"], "retrain: error: evaluate.precision_recall_k"),
        (
            ["--profile", "nope"],
            "retrain: error: --profile: unknown profile 'nope' (known: full, long, quick, smoke, none)",
        ),
    ],
)
def test_retrain_refuses_bad_arguments_in_one_line_before_any_stage(
    workspace: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    before = (workspace / "params.yaml").read_bytes()
    assert retrain.main([*args, "--no-push"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert (workspace / "params.yaml").read_bytes() == before
    assert sorted(p.name for p in workspace.iterdir()) == ["params.yaml"]  # no stage, no store


def test_check_champion_refuses_a_bad_params_file_in_one_line(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workspace / "bad.yaml").write_text("train:\n  epochs: 1\n  epochs: 2\n")
    assert check_champion.main(["--params", "bad.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("check-champion: error: params file bad.yaml"), err


def test_check_champion_refuses_a_negative_seed_in_one_line(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check_champion.main(["--seed", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["check-champion: error: --seed: -1 is negative; a seed is an integer >= 0"]


def test_overrides_parse_like_the_cli() -> None:
    assert parse_overrides(["train.lr=0.001", "data.mirrors=[]", "model.latent_dim=null"]) == {
        "train.lr": 0.001,
        "data.mirrors": [],
        "model.latent_dim": None,
    }


def test_refusals_are_not_retried_but_unreachable_servers_and_surprises_are() -> None:
    def retried(exc: Exception) -> bool:
        return worth_retrying(None, None, Failed(data=exc))

    assert not retried(RegistryError("the stored model.onnx has sha256 a, registered with b"))
    assert not retried(CheckpointError("no usable metric.fid tag"))
    assert retried(ServiceUnavailable("MLflow tracking URI 'http://x' is not reachable"))
    assert retried(ConnectionResetError("reset by peer"))
    assert worth_retrying(None, None, Completed())
    for task in (check_champion.score_champion, retrain.register, retrain.promote, retrain.champion_metrics):
        assert task.retries == 2 and task.retry_condition_fn is worth_retrying, task.name


GOOD_LOCK = """schema: '2.0'
stages:
  train:
    cmd: vaegan train
    outs:
    - path: models/vaegan.pt
      hash: md5
      md5: 0123456789abcdef0123456789abcdef
      size: 1
"""


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (bytes(range(128, 256)) * 20, "is not valid utf-8"),
        (b"", "required key not provided"),
        (b"- a\n- b\n", "expected a dictionary"),
        (b"schema: '2.0'\nstages: [\n", "unable to read"),
        (GOOD_LOCK.replace("md5: 0123", "md5: [0123").encode(), "unable to read"),
        (b"schema: '2.0'\nstages:\n  train:\n    cmd: echo\n    bogus: 1\n", "extra keys not allowed"),
    ],
)
def test_a_dvc_lock_dvc_cannot_read_is_refused_in_one_line(
    tmp_path: Path, content: bytes, named: str
) -> None:
    lock = tmp_path / "dvc.lock"
    lock.write_bytes(content)
    with pytest.raises(WorkspaceError) as refused:
        check_dvc_lock(lock)
    message = str(refused.value)
    assert message.startswith(f"{lock} is not a DVC lock file DVC can read (")
    assert named in message and "\n" not in message
    assert message.endswith("restore it (`git checkout -- dvc.lock`) or delete it to run every stage again")
    assert refused.value.exit_code == 2


def test_a_readable_or_missing_dvc_lock_passes(tmp_path: Path) -> None:
    check_dvc_lock(tmp_path / "dvc.lock")  # a first run: no lock file yet
    (tmp_path / "dvc.lock").write_text(GOOD_LOCK)
    check_dvc_lock(tmp_path / "dvc.lock")
    (tmp_path / "dvc.lock").write_text(GOOD_LOCK.replace("  train:", "  train:\n    deps: []"))
    check_dvc_lock(tmp_path / "dvc.lock")


def test_retrain_refuses_a_garbage_dvc_lock_in_one_line_before_prefect_starts(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workspace / "dvc.lock").write_bytes(b"\x00\xff garbage \x00" * 50)
    assert retrain.main(["--no-push"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("retrain: error: dvc.lock is not a DVC lock file"), err
    assert sorted(p.name for p in workspace.iterdir()) == ["dvc.lock", "params.yaml"]  # nothing started
