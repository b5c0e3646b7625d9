"""The MLflow model registry on real stores: register -> promote -> load verified, the refusals,
two promotions racing, and the same against a real `mlflow server` on 127.0.0.1.

The ONNX graphs are exported here from the small `seed` model (this file does not depend on the
export stage); metrics/export.json and metrics/eval.json are written by hand for each case.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import TinyConfig
from promotion_worker import promote_in_child
from vaegan.artifacts.checkpoint import load_checkpoint, save_checkpoint
from vaegan.artifacts.provenance import sha256_file
from vaegan.cli import main
from vaegan.config import Config
from vaegan.errors import RegistryError
from vaegan.nn.checkpoint_payload import model_payload
from vaegan.nn.networks import build_model, model_args_for
from vaegan.nn.onnx_graphs import export_decoder_onnx, export_encoder_onnx
from vaegan.registry.client import CHALLENGER, CHAMPION
from vaegan.registry.lock import lock_path_for, registry_lock
from vaegan.registry.promotion import promote_challenger
from vaegan.registry.registration import register_models, serving_requirements
from vaegan.registry.verified import champion_metric_tags, champion_pair, load_verified_onnx

DECODER, ENCODER = "vaegan-decoder", "vaegan-encoder"
TRAIN_MD5 = "0123456789abcdef0123456789abcdef"
DVC_LOCK = f"""schema: '2.0'
stages:
  train:
    cmd: vaegan train
    outs:
    - path: models/vaegan.pt
      md5: {TRAIN_MD5}
      size: 1
"""


@dataclass(frozen=True)
class Artifacts:
    """A trained-looking checkpoint and its two ONNX graphs, made once per module."""

    checkpoint: Path
    decoder: Path
    encoder: Path


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    out = tmp_path_factory.mktemp("onnx-pair")
    torch.manual_seed(0)
    args = model_args_for("seed")
    model = build_model(args).eval()
    export_decoder_onnx(model, out / "decoder.onnx")  # the project's exporter: z -> x, x -> mu, logvar
    export_encoder_onnx(model, out / "encoder.onnx")
    checkpoint = out / "vaegan.pt"
    save_checkpoint(
        checkpoint,
        model_payload(
            model,
            {},
            {
                "data_sha256": "d" * 64,
                "git_commit": "c0ffee",
                "mlflow_run_id": "training-run-1",
                "objective": "vaegan",
                "environment": {"torch": "2.14.1", "cpu": "AMD EPYC", "precision": "bf16"},
            },
        ),
    )
    return Artifacts(checkpoint, out / "decoder.onnx", out / "encoder.onnx")


def eval_metrics(fid: float, accuracy: float = 0.99, checkpoint_sha256: str | None = None) -> dict[str, Any]:
    return {
        "fid": fid, "fid_recon": fid / 2, "fid_floor": 0.5, "recon_mse": 0.02, "recon_bce": 80.0,
        "psnr": 17.5, "ssim": 0.7, "kl": 9.0, "precision": 0.8, "recall": 0.7,
        "evaluator_test_accuracy": accuracy, "label_consistency": 0.9, "sample_class_entropy": 2.2,
        "num_samples": 200, "seed": 0, "feature_extractor": "lenet",
        "provenance": {"checkpoint_sha256": checkpoint_sha256, "evaluator_sha256": "e" * 64},
    }  # fmt: skip


def stage_inputs(config: Config, artifacts: Artifacts, fid: float, accuracy: float = 0.99) -> None:
    """Put what `vaegan register` reads where `config` says: graphs, checkpoint, both metrics files."""
    export_dir = Path(config.export.dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(artifacts.decoder, export_dir / "decoder.onnx")
    shutil.copy(artifacts.encoder, export_dir / "encoder.onnx")
    Path(config.train.model_path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(artifacts.checkpoint, config.train.model_path)
    checkpoint_sha = sha256_file(config.train.model_path)
    export = {
        "parity_passed": True,
        "latent_dim": 2,
        "checkpoint_sha256": checkpoint_sha,
        "decoder": {"file": "decoder.onnx", "sha256": sha256_file(export_dir / "decoder.onnx")},
        "encoder": {"file": "encoder.onnx", "sha256": sha256_file(export_dir / "encoder.onnx")},
    }
    Path(config.export.metrics_path).parent.mkdir(parents=True, exist_ok=True)
    Path(config.export.metrics_path).write_text(json.dumps(export))
    Path(config.evaluate.metrics_path).write_text(json.dumps(eval_metrics(fid, accuracy, checkpoint_sha)))


@pytest.fixture
def config(tmp_path: Path, mlflow_uri: str, tiny_config: TinyConfig) -> Config:
    (tmp_path / "dvc.lock").write_text(DVC_LOCK)
    return tiny_config(tracking={"uri": mlflow_uri})


def register(config: Config, artifacts: Artifacts, fid: float, **kwargs: Any) -> Any:
    stage_inputs(config, artifacts, fid, **kwargs)
    return register_models(config=config, repo_dir=Path(config.train.model_path).parent)


def alias_versions(client: MlflowClient, alias: str) -> tuple[str, str]:
    return (
        str(client.get_model_version_by_alias(DECODER, alias).version),
        str(client.get_model_version_by_alias(ENCODER, alias).version),
    )


def decode(path: Path, z: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["x"], {"z": z})[0]


def test_register_promote_and_load_back(config: Config, artifacts: Artifacts, mlflow_uri: str) -> None:
    registration = register(config, artifacts, fid=30.0)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    assert (registration.decoder_version, registration.encoder_version) == ("1", "1")
    assert registration.model_uris == {"decoder": f"models:/{DECODER}/1", "encoder": f"models:/{ENCODER}/1"}
    assert alias_versions(client, CHALLENGER) == ("1", "1")
    checkpoint_sha = sha256_file(config.train.model_path)
    for name, role in ((DECODER, "decoder"), (ENCODER, "encoder")):
        version = client.get_model_version(name, "1")
        tags = version.tags
        assert tags["metric.fid"] == "30.0"
        assert tags["metric.evaluator_test_accuracy"] == "0.99"
        assert tags["metric.feature_extractor"] == "lenet"
        assert tags["data_sha256"] == "d" * 64
        assert tags["git_commit"] == "c0ffee"
        assert tags["training_run_id"] == registration.training_run_id == "training-run-1"
        assert tags["dvc_train_md5"] == TRAIN_MD5
        assert (tags["env.torch"], tags["env.cpu"], tags["env.precision"]) == ("2.14.1", "AMD EPYC", "bf16")
        assert tags["checkpoint_sha256"] == checkpoint_sha
        assert tags["evaluator_sha256"] == "e" * 64
        assert tags["parity_passed"] == "true"
        assert tags["pair_id"] == registration.pair_id == registration.run_id
        assert tags["role"] == role
        assert tags["export_sha256"] == sha256_file(Path(config.export.dir) / f"{role}.onnx")
        assert version.run_id == registration.run_id
        assert "| FID (prior samples) / recon / floor | 30 / 15 / 0.5 |" in version.description
        assert registration.run_id in version.description
        # onnx_sha256 is the hash of the bytes MLflow stored, read straight from the artifact store.
        stored = Path(client.get_model_version_download_uri(name, "1").removeprefix("file://")) / "model.onnx"
        assert tags["onnx_sha256"] == sha256_file(stored)
        # what serving it needs, pinned to this environment, one ONNX Runtime build
        requirements = (stored.parent / "requirements.txt").read_text().split()
        assert requirements == serving_requirements() and len(requirements) == 4
        assert [r.split("==")[0] for r in requirements[:3]] == ["mlflow", "numpy", "onnx"]
        assert requirements[3].split("==")[0] in ("onnxruntime", "onnxruntime-gpu")

    # the same export and evaluation again (a pipeline re-run that DVC skipped): no new versions
    again = register(config, artifacts, fid=30.0)
    assert again.model_uris == registration.model_uris and again.run_id == registration.run_id
    assert len(client.search_model_versions(f"name = '{DECODER}'")) == 1

    decision = promote_challenger(config=config)
    assert decision.promoted
    assert decision.previous_champion is None
    assert decision.challenger == {"decoder": "1", "encoder": "1"}
    assert "pass first_champion: no champion yet: the absolute checks decide" in decision.reasons
    assert alias_versions(client, CHAMPION) == ("1", "1")
    version_tags = client.get_model_version(ENCODER, "1").tags
    assert version_tags["promotion.decision"] == "promoted"
    assert "pass max_fid: fid 30 < registry.max_fid 800" in version_tags["promotion.reasons"]
    assert version_tags["promotion.run_id"] == decision.record_run_id
    record = client.get_run(str(decision.record_run_id))
    assert client.get_experiment(record.info.experiment_id).name == "vaegan-promotions"
    assert record.data.tags["promotion.decision"] == "promoted"
    assert record.data.metrics["challenger_fid"] == 30.0

    download = Path(config.export.dir).parent / "download"
    decoder = load_verified_onnx(f"models:/{DECODER}@{CHAMPION}", config.tracking, dst_dir=download)
    assert decoder.path == download / "model.onnx"
    assert (decoder.name, decoder.version, decoder.run_id) == (DECODER, "1", registration.run_id)
    assert decoder.sha256 == decoder.tags["onnx_sha256"] == sha256_file(decoder.path)
    z = np.random.default_rng(1).standard_normal((5, 2), dtype=np.float32)
    images = decode(decoder.path, z)
    assert images.shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(images, decode(artifacts.decoder, z))
    by_version = load_verified_onnx(f"models:/{ENCODER}/1", config.tracking, dst_dir=download / "version")
    by_run = load_verified_onnx(
        f"runs:/{registration.run_id}/encoder", config.tracking, dst_dir=download / "run"
    )
    assert by_version.sha256 == by_run.sha256 == client.get_model_version(ENCODER, "1").tags["onnx_sha256"]
    pair = champion_pair(config=config, dst_dir=download / "pair")
    assert [(m.name, m.version) for m in pair] == [(DECODER, "1"), (ENCODER, "1")]

    again = promote_challenger(config=config)  # the challenger is already champion
    assert not again.promoted
    assert any(reason.startswith("FAIL new:") for reason in again.reasons)
    assert client.get_model_version(DECODER, "1").tags["promotion.decision"] == "promoted"


def test_worse_challenger_is_not_promoted_and_better_one_is(
    config: Config, artifacts: Artifacts, mlflow_uri: str
) -> None:
    client = MlflowClient(mlflow_uri, mlflow_uri)
    assert champion_metric_tags(config=config) == {}
    register(config, artifacts, fid=30.0)
    assert promote_challenger(config=config).promoted
    champion_metrics = champion_metric_tags(config=config)
    assert champion_metrics["fid"] == "30.0"
    assert champion_metrics["num_samples"] == "200"
    register(config, artifacts, fid=29.7)  # 1 % better: within registry.min_improvement
    dry = promote_challenger(config=config, dry_run=True)
    assert not dry.promoted and dry.dry_run and dry.record_run_id is None
    assert "promotion.decision" not in client.get_model_version(DECODER, "2").tags
    decision = promote_challenger(config=config)
    assert not decision.promoted
    assert decision.previous_champion == {"decoder": "1", "encoder": "1"}
    assert decision.metrics["relative_improvement"] == pytest.approx(0.01)
    assert any(r.startswith("FAIL improvement: fid 29.7 vs champion 30") for r in decision.reasons)
    assert alias_versions(client, CHAMPION) == ("1", "1")
    assert alias_versions(client, CHALLENGER) == ("2", "2")
    tags = client.get_model_version(DECODER, "2").tags
    assert tags["promotion.decision"] == "rejected"
    assert "FAIL improvement" in tags["promotion.reasons"]
    assert tags["promotion.champion_before"] == "decoder v1 + encoder v1"

    register(config, artifacts, fid=25.0)
    decision = promote_challenger(config=config)
    assert decision.promoted
    assert decision.metrics["relative_improvement"] == pytest.approx(1 / 6)
    assert alias_versions(client, CHAMPION) == ("3", "3")


def test_register_refuses_failed_parity_and_changed_files(config: Config, artifacts: Artifacts) -> None:
    stage_inputs(config, artifacts, fid=30.0)
    export_path = Path(config.export.metrics_path)
    export = json.loads(export_path.read_text())
    export_path.write_text(json.dumps({**export, "parity_passed": False}))
    with pytest.raises(RegistryError, match="parity_passed"):
        register_models(config=config)
    export_path.write_text(json.dumps(export))
    decoder = Path(config.export.dir) / "decoder.onnx"
    decoder.write_bytes(decoder.read_bytes() + b"\0")
    changed = r"decoder.onnx has sha256 [0-9a-f]{64} but export metrics recorded"
    with pytest.raises(RegistryError, match=changed):
        register_models(config=config)
    shutil.copy(artifacts.decoder, decoder)
    export_path.write_text(json.dumps({**export, "checkpoint_sha256": "f" * 64}))
    with pytest.raises(RegistryError, match="export was made from checkpoint sha256 f{64}"):
        register_models(config=config)
    client = MlflowClient(config.tracking.uri, config.tracking.uri)
    assert client.search_registered_models() == []


def test_tampered_or_unverifiable_artifact_is_refused(
    config: Config, artifacts: Artifacts, mlflow_uri: str
) -> None:
    register(config, artifacts, fid=30.0)
    assert promote_challenger(config=config).promoted
    client = MlflowClient(mlflow_uri, mlflow_uri)
    stored = Path(client.get_model_version_download_uri(DECODER, "1").removeprefix("file://")) / "model.onnx"
    registered = client.get_model_version(DECODER, "1").tags["onnx_sha256"]
    tampered = bytearray(stored.read_bytes())
    tampered[-1] ^= 0xFF
    stored.write_bytes(bytes(tampered))
    dst = Path(config.export.dir).parent / "download"
    with pytest.raises(RegistryError) as refused:
        load_verified_onnx(f"models:/{DECODER}@{CHAMPION}", config.tracking, dst_dir=dst)
    assert registered in str(refused.value)
    assert sha256_file(stored) in str(refused.value)
    assert "changed after registration" in str(refused.value)
    assert not (dst / "model.onnx").exists()  # the untrusted download is removed
    with pytest.raises(RegistryError, match="changed after registration"):
        champion_pair(config=config, dst_dir=dst)

    client.delete_model_version_tag(ENCODER, "1", "onnx_sha256")
    with pytest.raises(RegistryError, match="has no onnx_sha256 tag"):
        load_verified_onnx(f"models:/{ENCODER}/1", config.tracking, dst_dir=dst)
    with pytest.raises(RegistryError, match="has no version 7"):
        load_verified_onnx(f"models:/{ENCODER}/7", config.tracking, dst_dir=dst)
    with pytest.raises(RegistryError, match="has alias 'staging'"):
        load_verified_onnx(f"models:/{ENCODER}@staging", config.tracking, dst_dir=dst)
    with pytest.raises(RegistryError, match="expected models:/<name>@<alias>"):
        load_verified_onnx("s3://bucket/model.onnx", config.tracking, dst_dir=dst)


def test_missing_or_wrong_tracking_uri_is_a_clear_error(
    config: Config, artifacts: Artifacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage_inputs(config, artifacts, fid=30.0)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'no-such-dir' / 'mlflow.db'}")
    with pytest.raises(RegistryError, match="no-such-dir does not exist"):
        register_models(config=config)
    # MLflow's client would retry a refused connection with backoff for minutes: the probe fails fast
    with pytest.raises(RegistryError, match=r"'http://127.0.0.1:\d+' is not reachable: .*refused"):
        load_verified_onnx(
            f"models:/{DECODER}@{CHAMPION}",
            config.tracking,
            f"http://127.0.0.1:{free_port()}",
            dst_dir=tmp_path / "download",
        )


def test_concurrent_promotions_leave_the_better_consistent_pair(
    config: Config, artifacts: Artifacts, mlflow_uri: str
) -> None:
    worse = register(config, artifacts, fid=40.0)
    better = register(config, artifacts, fid=30.0)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(
            target=promote_in_child,
            args=(config, (reg.decoder_version, reg.encoder_version), barrier, results),
        )
        for reg in (worse, better)
    ]
    for worker in workers:
        worker.start()
    outcomes = {tuple(versions): (promoted, error) for versions, promoted, error in
                (results.get(timeout=300) for _ in workers)}  # fmt: skip
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert all(error is None for _, error in outcomes.values()), outcomes
    assert outcomes[("2", "2")] == (True, None)  # the better one is promoted whichever ran first
    client = MlflowClient(mlflow_uri, mlflow_uri)
    assert alias_versions(client, CHAMPION) == ("2", "2")
    champions = [client.get_model_version_by_alias(name, CHAMPION) for name in (DECODER, ENCODER)]
    assert {version.tags["pair_id"] for version in champions} == {better.pair_id}
    # Whichever order the lock gave them, the worse one never ended as champion.
    worse_tags = client.get_model_version(DECODER, "1").tags
    if outcomes[("1", "1")][0]:
        assert worse_tags["promotion.champion_before"] == "none"
    else:
        assert worse_tags["promotion.champion_before"] == "decoder v2 + encoder v2"


def test_a_repeat_with_the_same_weights_finds_the_first_registration(
    config: Config, artifacts: Artifacts, tmp_path: Path
) -> None:
    """The same params, data and code trained again elsewhere (a repeat on another worker): the
    weights are the same, the checkpoint differs only in its training run, no new version."""
    first = register(config, artifacts, fid=30.0)
    payload = load_checkpoint(artifacts.checkpoint)
    payload["state"]["mlflow_run_id"] = "training-run-2"
    repeat = tmp_path / "repeat.pt"
    save_checkpoint(repeat, payload)
    assert sha256_file(repeat) != sha256_file(artifacts.checkpoint)
    again = register(config, Artifacts(repeat, artifacts.decoder, artifacts.encoder), fid=30.0)
    assert again.model_uris == first.model_uris and again.run_id == first.run_id
    client = MlflowClient(config.tracking.uri, config.tracking.uri)
    assert len(client.search_model_versions(f"name = '{DECODER}'")) == 1


def test_promotion_waits_for_the_registry_lock(config: Config, artifacts: Artifacts, mlflow_uri: str) -> None:
    register(config, artifacts, fid=30.0)
    client = MlflowClient(mlflow_uri, mlflow_uri)
    assert lock_path_for(mlflow_uri) == Path(mlflow_uri.removeprefix("sqlite:///") + ".registry.lock")
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(1), context.Queue()
    worker = context.Process(target=promote_in_child, args=(config, ("1", "1"), barrier, results))
    with registry_lock(mlflow_uri):
        worker.start()
        worker.join(timeout=5)
        assert worker.is_alive()  # blocked on the lock, not finished
        assert client.get_registered_model(DECODER).aliases.get(CHAMPION) is None
    assert results.get(timeout=300) == (("1", "1"), True, None)
    worker.join(timeout=60)
    assert alias_versions(client, CHAMPION) == ("1", "1")


# ---------------------------------------------------------------------------------------------
# A team's setup: a real `mlflow server` on 127.0.0.1 with a SQLite backend and proxied artifacts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def mlflow_server(tmp_path: Path, _migrated_mlflow_db: Path) -> Any:
    db = tmp_path / "server.db"
    shutil.copy(_migrated_mlflow_db, db)
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as server_log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{db}",
             "--artifacts-destination", str(tmp_path / "server-artifacts")],
            stdout=server_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.read().strip() == b"OK":
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, tmp_path / "server-artifacts"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.slow
def test_against_a_real_mlflow_server(
    tmp_path: Path,
    artifacts: Artifacts,
    mlflow_server: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    tiny_config: TinyConfig,
) -> None:
    url, artifact_root = mlflow_server
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "dvc.lock").write_text(DVC_LOCK)
    config = tiny_config(tracking={"uri": url})
    stage_inputs(config, artifacts, fid=30.0)
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps(config.to_dict()))  # JSON is YAML
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}

    def vaegan(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vaegan", *args, "--params", str(params)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    registered = vaegan("register")
    assert registered.returncode == 0, registered.stderr
    assert f"registered {DECODER} v1 and {ENCODER} v1 as challenger" in registered.stdout
    promoted = vaegan("promote")
    assert promoted.returncode == 0, promoted.stderr
    assert "promoted decoder v1, encoder v1 to champion (previous champion: none)" in promoted.stdout
    assert "pass max_fid: fid 30 < registry.max_fid 800" in promoted.stdout
    assert lock_path_for(url).parent == tmp_path / "cache" / "vaegan" / "locks"

    client = MlflowClient(url, url)
    assert alias_versions(client, CHAMPION) == ("1", "1")
    download = tmp_path / "download"
    decoder, encoder = champion_pair(config=config, dst_dir=download)
    assert decoder.tags["pair_id"] == encoder.tags["pair_id"]
    z = np.zeros((3, 2), dtype=np.float32)
    np.testing.assert_array_equal(decode(decoder.path, z), decode(artifacts.decoder, z))

    # The server stores the bytes under its artifact root: change them there and the load refuses.
    stored = [p for p in artifact_root.rglob("model.onnx") if sha256_file(p) == decoder.sha256]
    assert len(stored) == 1
    stored[0].write_bytes(stored[0].read_bytes()[:-1] + b"\0")
    with pytest.raises(RegistryError, match="changed after registration"):
        load_verified_onnx(f"models:/{DECODER}@{CHAMPION}", config.tracking, dst_dir=download / "again")
    worse = vaegan("promote", "--dry-run")
    assert worse.returncode == 0 and "FAIL new" in worse.stdout


@pytest.mark.parametrize("damage", ["random bytes", "truncated"])
@pytest.mark.parametrize(
    "command",
    [
        ["promote", "--dry-run"],
        ["sample", "--model", f"models:/{DECODER}@{CHAMPION}", "--out", "grid.png"],
        ["reproduce", "--check-only"],
    ],
)
def test_a_corrupt_store_is_one_line_naming_it(
    tmp_path: Path,
    _migrated_mlflow_db: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    damage: str,
    command: list[str],
) -> None:
    db = tmp_path / "mlflow.db"
    if damage == "random bytes":
        db.write_bytes(np.random.default_rng(0).bytes(5000))
    else:
        db.write_bytes(_migrated_mlflow_db.read_bytes()[:4096])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.chdir(tmp_path)
    assert main(command) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"vaegan {command[0]}: error: MLflow store 'sqlite:///{db}' cannot be opened: ")
    assert "(sqlite3.DatabaseError)" in err[0]
