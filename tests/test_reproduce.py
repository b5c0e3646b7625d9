"""`vaegan reproduce`: the verdict logic on its own, then for real: a tiny model trained and registered
in a temporary git + DVC repository, rebuilt in a worktree (`identical`, through the Prefect flow),
and the ways it must refuse or say `different`: a changed param, uncommitted training code, changed
data, a missing commit, a recorded environment that is not this machine's."""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.test_flow_interrupts import alive_after, kill_processes_in
from tests.test_flows import TINY_PARAMS, harness, make_pipeline_repo  # noqa: F401  (harness: a fixture)
from tests.tmpfs import mounted_tmpfs
from vaegan import dvc_commands
from vaegan.artifacts.weights_digest import weights_sha256
from vaegan.cli import main as vaegan_main
from vaegan.config import ConfigError, build_config, load_config
from vaegan.nn.networks import build_model, model_args_for
from vaegan.registry.registration import register_models
from vaegan.reproduce import rebuild_params, reproduce_model
from vaegan.reproduction import verdict as verdicts
from vaegan.reproduction.environment import predict
from vaegan.reproduction.worktree import ReproduceError, resolve_commit, share_dvc_storage, temporary_worktree
from vaegan.tracking.store import absolute_uri

SAME_MACHINE = {"cpu": "AMD EPYC", "torch": "2.14.1", "device": "cpu", "deterministic": "true"}


# --- the verdict logic ---------------------------------------------------------------------------


def test_prediction_names_every_recorded_field_this_machine_differs_in() -> None:
    assert predict(SAME_MACHINE, SAME_MACHINE).verdict == "identical"
    other = predict({**SAME_MACHINE, "cpu": "Intel Xeon"}, SAME_MACHINE)
    assert other.verdict == "equivalent"
    assert [(d.field, d.recorded, d.here) for d in other.differences] == [("cpu", "Intel Xeon", "AMD EPYC")]
    assert "differs in cpu (Intel Xeon -> AMD EPYC)" in other.reason
    gpu = predict({**SAME_MACHINE, "deterministic": "false"}, {**SAME_MACHINE, "deterministic": "false"})
    assert gpu.verdict == "equivalent" and "without deterministic algorithms" in gpu.reason
    assert predict({}, SAME_MACHINE).verdict == "unknown"


def test_params_that_only_say_where_things_run_are_not_a_different_recipe() -> None:
    recorded = {"train": {"lr": 0.0002, "device": "cuda"}, "tracking": {"uri": "http://a"}}
    rebuild = {"train": {"lr": 0.0002, "device": "cpu"}, "tracking": {"uri": "sqlite:///b"}}
    assert verdicts.param_comparisons(recorded, rebuild) == []
    changed = verdicts.param_comparisons(recorded, {**rebuild, "train": {"lr": 0.001, "device": "cpu"}})
    assert [(c.what, c.recorded, c.rebuilt) for c in changed] == [("param train.lr", "0.0002", "0.001")]


def _rows(*same: bool) -> list[verdicts.Comparison]:
    return [verdicts.Comparison(f"item{i}", "a", "a" if s else "b", s) for i, s in enumerate(same)]


def test_verdicts_from_inputs_bytes_and_metrics() -> None:
    here = predict(SAME_MACHINE, SAME_MACHINE)
    tags = {"metric.fid": "20.0", "metric.precision": "0.80", "metric.recall": "0.70"}
    close = verdicts.metric_comparisons(
        tags, {"fid": 22.9, "precision": 0.83, "recall": 0.67}, verdicts.Tolerance()
    )
    far = verdicts.metric_comparisons(
        tags, {"fid": 23.2, "precision": 0.80, "recall": 0.70}, verdicts.Tolerance()
    )
    assert [row.same for row in close] == [True, True, True]
    assert [row.same for row in far] == [False, True, True] and far[0].note.startswith("16.0%")

    assert verdicts.decide(here, _rows(True), _rows(True, True), far).verdict == "identical"
    equivalent = verdicts.decide(here, _rows(True), _rows(False, True), close)
    assert equivalent.verdict == "equivalent" and "nondeterminism" in equivalent.reason
    different = verdicts.decide(here, _rows(True), _rows(False, True), far)
    assert (different.verdict, different.exit_code) == ("different", 1)
    assert different.reason.startswith("fid 23.2 is outside the tolerance of the registered 20")
    first_input = verdicts.decide(here, _rows(True, False, False))
    assert first_input.verdict == "different" and first_input.reason.startswith("item1 differs")
    assert verdicts.decide(here, _rows(True)).verdict == "not rebuilt"


def test_weights_digest_covers_the_weights_and_nothing_else() -> None:
    torch.manual_seed(0)
    model = build_model(model_args_for("seed"))
    payload: dict[str, Any] = {
        "encoder": model.encoder.state_dict(),
        "decoder": model.decoder.state_dict(),
        "discriminator": model.discriminator.state_dict(),
        "state": {"mlflow_run_id": "a"},
    }
    digest = weights_sha256(payload)
    assert weights_sha256({**payload, "state": {"mlflow_run_id": "b"}}) == digest
    first = next(iter(payload["decoder"]))
    nudged = {**payload["decoder"], first: payload["decoder"][first].clone()}
    nudged[first].view(-1)[0] += 1e-7
    assert weights_sha256({**payload, "decoder": nudged}) != digest


def test_rebuild_params_refuse_output_paths_outside_the_worktree() -> None:
    recorded = build_config({}).to_dict()
    tracking = {"uri": "sqlite:////x/mlflow.db", "experiment": "vaegan-reproduce"}
    params, config = rebuild_params(recorded, ["train.lr=0.001"], tracking)
    assert params["train"]["lr"] == 0.001 and config.train.lr == 0.001
    assert params["tracking"] == {**recorded["tracking"], **tracking}
    with pytest.raises(ConfigError, match="train.model_path=/tmp/m.pt is an absolute path"):
        rebuild_params(recorded, ["train.model_path=/tmp/m.pt"], tracking)


def test_a_record_from_before_a_new_param_rebuilds_with_the_records_keys() -> None:
    """A model trained before `train.d_pass` existed: the rebuild must not add it (the recorded
    commit's code would refuse the key, and the comparison would call the model `different`)."""
    recorded = build_config({}).to_dict()
    del recorded["train"]["d_pass"]
    tracking = {"uri": "sqlite:////x/mlflow.db", "experiment": "vaegan-reproduce"}
    params, config = rebuild_params(recorded, [], tracking)
    assert "d_pass" not in params["train"]
    assert config.train.d_pass == "split"  # this code's reading, for its own paths and checks
    assert verdicts.param_comparisons(recorded, params) == []


def test_the_rebuild_logs_into_the_users_store_not_beside_its_worktree(tmp_path: Path) -> None:
    assert absolute_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert absolute_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    assert absolute_uri("mlruns", tmp_path) == str(tmp_path / "mlruns")
    assert absolute_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"


def test_serve_schedules_reproduce_weekly() -> None:
    from pipelines.serve import WEEKLY_CRON, build_deployments

    deployments = {d.name: d for d in build_deployments()}
    weekly = deployments["weekly"]
    assert weekly.flow_name == "reproduce"
    assert [s.schedule.cron for s in weekly.schedules] == [WEEKLY_CRON]


# --- for real -----------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)
    return done.stdout


def _commit_all(repo: Path, message: str) -> None:
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "-m", message)


def _run_pipeline(repo: Path) -> None:
    for stage in dvc_commands.PIPELINE_STAGES:
        dvc_commands.repro_stage(stage, repo)


@pytest.fixture(scope="module")
def registered_repo(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Iterator[Path]:
    """A committed pipeline repository whose tiny model is trained and registered (version 1); the
    data comes from a folder of IDX files, the stages run the repository's own src/."""
    root = tmp_path_factory.mktemp("reproduce")
    data = root / "mnist"
    shutil.copytree(sample_dir, data)
    repo = make_pipeline_repo(root)
    (repo / ".gitignore").write_text("mlflow.db\nmlartifacts/\n*.registry.lock\n__pycache__/\n")
    dvc_commands.apply_params({**TINY_PARAMS, "data.source": str(data)}, repo)
    _commit_all(repo, "pipeline")
    cwd, saved = os.getcwd(), {name: os.environ.get(name) for name in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    # An absolute store: MLflow caches a store per URI string in the process, so a relative
    # `sqlite:///mlflow.db` would reach the store of whichever folder first used that string.
    os.environ["MLFLOW_TRACKING_URI"] = _store(repo)
    os.environ["PYTHONPATH"] = str(repo / "src")  # the stages run this repository's code
    os.chdir(repo)
    try:
        _run_pipeline(repo)
        register_models(config=load_config("params.yaml"), repo_dir=repo)
        yield repo
    finally:
        os.chdir(cwd)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _store(repo: Path) -> str:
    return f"sqlite:///{repo / 'mlflow.db'}"


@pytest.fixture
def registered(registered_repo: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The registered repository as working directory, its store as MLFLOW_TRACKING_URI."""
    monkeypatch.chdir(registered_repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _store(registered_repo))
    return registered_repo


def _client() -> MlflowClient:
    return MlflowClient(tracking_uri=_store(Path.cwd()))


def _vaegan(*args: str) -> int:
    return vaegan_main(["reproduce", *args])


@pytest.mark.slow
def test_the_flow_rebuilds_the_registered_model_identical(registered: Path, harness: None) -> None:  # noqa: F811
    from prefect.artifacts import Artifact

    from pipelines.reproduce import ARTIFACT_KEY, reproduce

    status_before = _git(registered, "status", "--porcelain")
    lock_before = (registered / "dvc.lock").read_bytes()
    digest = reproduce(model_uri="models:/vaegan-decoder/1", repo_dir=str(registered))
    assert digest["verdict"] == "identical", digest
    assert digest["commit"] == _git(registered, "rev-parse", "HEAD").strip()
    markdown = str(Artifact.get(ARTIFACT_KEY).data)  # type: ignore[union-attr]
    assert "**identical**" in markdown and "| weights |" in markdown and "| data |" in markdown
    version = _client().get_model_version("vaegan-decoder", "1")
    assert version.tags["reproduce.verdict"] == "identical"
    # the user's workspace is as before and the temporary worktree is gone
    assert _git(registered, "status", "--porcelain") == status_before
    assert (registered / "dvc.lock").read_bytes() == lock_before
    assert _git(registered, "worktree", "list").count("\n") == 1
    # the rebuild's training is in the user's store, in its own experiment
    experiment = _client().get_experiment_by_name("vaegan-reproduce")
    assert experiment is not None and _client().search_runs([experiment.experiment_id])


@pytest.mark.slow
def test_a_changed_param_is_different_before_any_training(
    registered: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _vaegan("models:/vaegan-decoder/1", "--set", "train.lr=0.0021") == 1
    out = capsys.readouterr().out
    assert "**different**" in out and "param train.lr differs from what trained the model" in out
    assert "| weights |" not in out  # nothing was rebuilt


@pytest.mark.slow
def test_check_only_predicts_equivalent_when_the_recorded_cpu_differs(
    registered: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = _client()
    recorded_cpu = client.get_model_version("vaegan-decoder", "1").tags["env.cpu"]
    client.set_model_version_tag("vaegan-decoder", "1", "env.cpu", "Another CPU 9000")
    try:
        assert _vaegan("models:/vaegan-decoder@challenger", "--check-only") == 0
    finally:
        client.set_model_version_tag("vaegan-decoder", "1", "env.cpu", recorded_cpu)
    out = capsys.readouterr().out
    assert "**not rebuilt**" in out
    assert f"this machine differs in cpu (Another CPU 9000 -> {recorded_cpu}): expect `equivalent`" in out
    assert _vaegan("models:/vaegan-decoder/1", "--check-only") == 0
    assert "expect `identical`" in capsys.readouterr().out
    # a training run names its registration too
    training_run = client.get_model_version("vaegan-decoder", "1").tags["training_run_id"]
    assert _vaegan(f"runs:/{training_run}", "--check-only") == 0
    assert "vaegan-decoder v1 + vaegan-encoder v1" in capsys.readouterr().out


@pytest.mark.slow
def test_a_missing_commit_is_exit_2_naming_it(registered: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client = _client()
    recorded = client.get_model_version("vaegan-decoder", "1").tags["git_commit"]
    client.set_model_version_tag("vaegan-decoder", "1", "git_commit", "0" * 40)
    try:
        assert _vaegan("models:/vaegan-decoder/1") == 2
    finally:
        client.set_model_version_tag("vaegan-decoder", "1", "git_commit", recorded)
    assert f"commit {'0' * 40} is not in the repository" in capsys.readouterr().err


@pytest.mark.slow
def test_changed_or_missing_data_is_exit_2_naming_both_hashes(registered: Path, tmp_path: Path) -> None:
    data = Path(load_config("params.yaml").data.source)
    images = data / "train-images-idx3-ubyte.gz"
    original = images.read_bytes()
    raw = bytearray(gzip.decompress(original))
    raw[-1] ^= 0xFF  # one pixel of the last training image
    images.write_bytes(gzip.compress(bytes(raw)))
    recorded = _client().get_model_version("vaegan-decoder", "1").tags["data_sha256"]
    try:
        with pytest.raises(
            ReproduceError, match=f"trained on data sha256 {recorded}, DVC gives [0-9a-f]{{64}}"
        ):
            reproduce_model(config=load_config("params.yaml"), model_uri="models:/vaegan-decoder/1")
        shutil.move(data, tmp_path / "away")
        with pytest.raises(ReproduceError, match="could not get the data through DVC"):
            reproduce_model(config=load_config("params.yaml"), model_uri="models:/vaegan-decoder/1")
    finally:
        if not data.exists():
            shutil.move(tmp_path / "away", data)
        images.write_bytes(original)


@pytest.mark.slow
def test_a_model_trained_from_uncommitted_code_is_different_naming_the_code(
    registered: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    losses = registered / "src" / "vaegan" / "nn" / "losses.py"
    original = losses.read_bytes()
    losses.write_bytes(original + b"# one more line\n")
    try:
        _run_pipeline(registered)
        registration = register_models(config=load_config("params.yaml"), repo_dir=registered)
        assert registration.tags["git_commit"].endswith("-dirty")
        assert _vaegan(registration.model_uris["decoder"]) == 1
    finally:
        losses.write_bytes(original)
    out = capsys.readouterr().out
    assert "**different**" in out and "training code differs from what trained the model" in out


def test_the_worktree_shares_the_cache_remotes_and_credentials(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    for args in (
        ["init", "-q"],
        ["remote", "add", "-d", "local", "../store"],
        ["remote", "add", "team", "s3://bucket/vaegan"],
        ["remote", "modify", "--local", "team", "access_key_id", "AKIA-TEST"],
    ):
        assert dvc_commands.run_dvc(args, repo)[0] == 0
    _commit_all(repo, "dvc")
    with temporary_worktree(repo, _git(repo, "rev-parse", "HEAD").strip()) as worktree:
        share_dvc_storage(repo, worktree)
        config = (worktree / ".dvc" / "config.local").read_text()
    assert f"dir = {repo / '.dvc' / 'cache'}" in config
    assert (
        f"url = {tmp_path / 'store'}" in config
    )  # where the repository's remote is, not beside the worktree
    assert "access_key_id = AKIA-TEST" in config
    assert not worktree.exists() and _git(repo, "worktree", "list").count("\n") == 1


@pytest.mark.parametrize("preset", [None, "true"])
def test_the_flows_switch_telemetry_off_unless_the_user_set_it(preset: str | None) -> None:
    """Importing `pipelines` sets PREFECT_SERVER_ANALYTICS_ENABLED=false and MLFLOW_DISABLE_TELEMETRY=true
    for the flow and the servers and stages it starts; a value the user exported stays."""
    telemetry = ("PREFECT_SERVER_ANALYTICS_ENABLED", "MLFLOW_DISABLE_TELEMETRY")
    env = {k: v for k, v in os.environ.items() if k not in telemetry}
    if preset is not None:
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = preset
    code = "import os, pipelines; print(*(os.environ[name] for name in pipelines.TELEMETRY_OFF))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[1], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [preset or "false", "true"]


@pytest.mark.slow
def test_a_killed_rebuild_takes_its_stages_along_and_the_next_one_removes_its_worktree(
    registered: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL of `vaegan reproduce` used to leave its stages running and its worktree (tens of MB,
    in `git worktree list`) behind for good."""
    rebuild = subprocess.Popen(
        [sys.executable, "-m", "vaegan", "reproduce", "models:/vaegan-decoder/1"],
        cwd=registered,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        family = _wait_for_a_rebuilt_stage(rebuild.pid, timeout_s=300)
        stale = _linked_worktrees(registered)[0]
    finally:
        rebuild.kill()
        rebuild.wait()
    try:
        assert alive_after(family, timeout_s=10) == []
    finally:
        kill_processes_in(stale)
    assert stale.is_dir() and _linked_worktrees(registered) == [stale]  # what the kill left

    with caplog.at_level(logging.INFO, logger="vaegan.reproduce"):
        assert _vaegan("models:/vaegan-decoder/1", "--check-only") == 0
    assert f"removed the worktree {stale} that a killed `vaegan reproduce` left behind" in caplog.text
    assert not stale.parent.exists() and _linked_worktrees(registered) == []


def _linked_worktrees(repo: Path) -> list[Path]:
    listed = _git(repo, "worktree", "list", "--porcelain").splitlines()
    return [Path(line.removeprefix("worktree ")) for line in listed if line.startswith("worktree ")][1:]


def _wait_for_a_rebuilt_stage(pid: int, timeout_s: float) -> list[psutil.Process]:
    """Wait until a stage after the data (`vaegan evaluator`, `vaegan train`...) runs under `pid`;
    every process under it then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.NoSuchProcess):
            family = psutil.Process(pid).children(recursive=True)
            commands = [" ".join(p.cmdline()) for p in family]
            if any(re.search(r"vaegan (evaluator|train)\b", command) for command in commands):
                return family
        time.sleep(0.1)
    raise AssertionError(f"no rebuilt stage under pid {pid} within {timeout_s} s")


def test_a_recorded_commit_missing_from_a_shallow_clone_is_fetched(tmp_path: Path) -> None:
    """A worker's clone of the team's remote is shallow (`git clone --depth 1`): the champion's older
    commit is fetched, not refused."""
    origin = tmp_path / "origin"

    def git(cwd: Path, *args: str) -> str:
        identity = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
        done = subprocess.run(["git", *identity, *args], cwd=cwd, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    origin.mkdir()
    git(origin, "init", "-q", "--initial-branch=main")
    git(origin, "commit", "-q", "--allow-empty", "-m", "trained here")
    trained = git(origin, "rev-parse", "HEAD")
    git(origin, "commit", "-q", "--allow-empty", "-m", "later")
    git(tmp_path, "clone", "-q", "--depth", "1", origin.as_uri(), "clone")
    clone = tmp_path / "clone"
    assert git(clone, "rev-parse", "--is-shallow-repository") == "true"
    assert resolve_commit(clone, trained + "-dirty") == trained


# --- arguments checked before the registry is read ----------------------------------------------


def test_a_missing_repo_or_an_unwritable_report_is_one_line_before_any_work(
    tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    store = Path(mlflow_uri.removeprefix("sqlite:///"))
    store_before = store.read_bytes()
    cases = [
        (
            ["--repo", "/nonexistent"],
            "--repo: /nonexistent is not a directory (the model's git + DVC repository)",
        ),
        (["--report", "missing/verdict.md"], "--report: directory missing does not exist"),
        (["--report", "."], "--report: . is a directory; name a file in it"),
    ]
    for args, message in cases:
        assert vaegan_main(["reproduce", *args]) == 2
        assert capsys.readouterr().err.splitlines() == [f"vaegan reproduce: error: {message}"]
    with mounted_tmpfs(tmp_path / "read-only", read_only=True) as read_only:
        assert vaegan_main(["reproduce", "--report", str(read_only / "verdict.md")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"vaegan reproduce: error: --report: directory {read_only} is not writable"
    ]
    assert store.read_bytes() == store_before  # the registry was not even opened
