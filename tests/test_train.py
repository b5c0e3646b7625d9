"""The train stage end to end (in-process CLI): outputs, MLflow contents, the `vae` baseline,
non-finite losses, and what a re-run does with last.pt."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TinyConfig
from vaegan.artifacts.checkpoint import load_checkpoint, save_checkpoint
from vaegan.cli import main
from vaegan.nn.checkpoint_payload import load_model
from vaegan.nn.loop import HISTORY_COLUMNS
from vaegan.nn.networks import model_args_for
from vaegan.nn.step import VAEGAN_METRICS
from vaegan.nn.training_networks import initial_model


def write_params(tiny_config: TinyConfig, tmp_path: Path, **sections: dict) -> Path:
    config = tiny_config(root=tmp_path, **sections)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    return path


def train(params: Path, *overrides: str) -> int:
    argv = ["train", "--params", str(params)]
    for item in overrides:
        argv += ["--set", item]
    return main(argv)


def state_dicts(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    payload = load_checkpoint(path)
    return {name: payload[name] for name in ("encoder", "decoder", "discriminator")}


def assert_equal_weights(a: dict, b: dict) -> None:
    for net in a:
        assert a[net].keys() == b[net].keys()
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs"


def test_train_writes_outputs_and_logs_the_run_to_mlflow(
    tmp_path: Path, tiny_config: TinyConfig, mlflow_uri: str
) -> None:
    params = write_params(tiny_config, tmp_path)
    assert train(params) == 0

    model = load_model(tmp_path / "vaegan.pt")
    assert model.args == model_args_for("seed")
    with torch.no_grad():
        images = model.decoder.decode(torch.zeros(3, model.args.latent_dim))
    assert images.shape == (3, 1, 28, 28) and images.min() >= 0.0 and images.max() <= 1.0

    metrics = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert metrics["steps"] == 8 and metrics["epochs"] == 1.0 and metrics["objective"] == "vaegan"
    for key in ("loss_prior", "loss_llike", "loss_pixel", "loss_dis", "loss_gan", "d_real", "d_fake"):
        assert isinstance(metrics[key], float)
    assert metrics["images_per_s"] > 0 and metrics["wall_time_s"] > 0
    assert 0 < metrics["loss_pixel"] < 784 * 0.7  # a Bernoulli NLL below the uniform guess

    with open(tmp_path / "metrics" / "train_history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0].keys()) == HISTORY_COLUMNS and len(rows) == 1
    assert float(rows[0]["loss_pixel"]) == pytest.approx(metrics["loss_pixel"], rel=1e-5)

    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["state"]["completed"] is True and last["state"]["step"] == 8
    assert set(last["state"]["optimizers"]) == {"encoder", "decoder", "discriminator"}
    assert_equal_weights(
        state_dicts(tmp_path / "vaegan.pt"), state_dicts(tmp_path / "checkpoints" / "last.pt")
    )

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("vaegan")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_id == last["state"]["mlflow_run_id"]
    assert run.data.params["train.lr"] == "0.0003" and run.data.params["model.preset"] == "seed"
    assert run.data.tags["objective"] == "vaegan" and run.data.tags["preset"] == "seed"
    assert (
        run.data.tags["data_sha256"] == last["state"]["data_sha256"] and len(run.data.tags["git_commit"]) > 6
    )
    # what the bits depend on besides params, data and code: in the checkpoint and on the run
    environment = last["state"]["environment"]
    assert environment["torch"] == torch.__version__ and environment["device"] == "cpu"
    assert environment["precision"] == "fp32" and environment["deterministic"] == "true"
    assert environment["cpu"] and int(environment["torch_threads"]) >= 1
    assert {key: run.data.tags[f"env.{key}"] for key in environment} == environment
    for name in (*VAEGAN_METRICS, "images_per_s"):
        assert f"step/{name}" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "step/loss_gan")] == [2, 4, 6, 8]
    epoch_pixel = client.get_metric_history(run.info.run_id, "epoch/loss_pixel")
    assert [(m.step, m.value) for m in epoch_pixel] == [(1, pytest.approx(metrics["loss_pixel"], rel=1e-6))]
    assert "epoch/val_loss" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "grids/epoch_001")}
    assert artifacts == {"grids/epoch_001/samples.png", "grids/epoch_001/reconstructions.png"}


def test_vae_baseline_trains_encoder_and_decoder_only(
    tmp_path: Path, tiny_config: TinyConfig, mlflow_uri: str
) -> None:
    params = write_params(tiny_config, tmp_path)
    assert train(params, "train.objective=vae") == 0
    payload = load_checkpoint(tmp_path / "vaegan.pt")
    initial = initial_model(model_args_for("seed"), seed=0)
    for key, value in initial.discriminator.state_dict().items():
        assert torch.equal(payload["discriminator"][key], value)
    assert not torch.equal(payload["decoder"]["body.0.weight"], initial.decoder.state_dict()["body.0.weight"])
    with open(tmp_path / "metrics" / "train_history.csv") as handle:
        row = next(csv.DictReader(handle))
    assert row["loss_llike"] == "" and row["loss_dis"] == "" and float(row["loss_pixel"]) > 0
    metrics = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert metrics["objective"] == "vae" and "loss_gan" not in metrics


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, tiny_config: TinyConfig, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    params = write_params(tiny_config, tmp_path, train={"checkpoint_every": 1, "log_every": 1})
    code = train(params, "train.lr=1000000.0", "train.lr_discriminator=1000000.0")
    assert code == 1
    err = capsys.readouterr().err
    assert "non-finite loss at step 2: loss_prior=inf" in err and "last good checkpoint kept" in err
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["state"]["step"] == 1 and last["state"]["completed"] is False
    for net in ("encoder", "decoder", "discriminator"):
        assert all(torch.isfinite(t).all() for t in last[net].values() if t.is_floating_point())
    assert not (tmp_path / "vaegan.pt").exists()
    from mlflow.tracking import MlflowClient

    (run,) = MlflowClient(mlflow_uri).search_runs(
        [MlflowClient(mlflow_uri).get_experiment_by_name("vaegan").experiment_id]
    )
    assert run.info.status == "FAILED"


def test_rerun_of_a_finished_run_rewrites_outputs_without_training(
    tmp_path: Path, tiny_config: TinyConfig, mlflow_uri: str
) -> None:
    params = write_params(tiny_config, tmp_path)
    assert train(params) == 0
    last = tmp_path / "checkpoints" / "last.pt"
    before = last.read_bytes()
    model_before = state_dicts(tmp_path / "vaegan.pt")
    (tmp_path / "vaegan.pt").unlink()  # what `dvc repro` does to a stage's outs
    (tmp_path / "metrics" / "train.json").unlink()
    assert train(params, "train.log_every=3") == 0  # log_every is not part of the resume key
    assert last.read_bytes() == before
    assert_equal_weights(state_dicts(tmp_path / "vaegan.pt"), model_before)
    assert json.loads((tmp_path / "metrics" / "train.json").read_text())["steps"] == 8
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    assert len(client.search_runs([client.get_experiment_by_name("vaegan").experiment_id])) == 1


def test_longer_budget_continues_a_finished_run_exactly(
    tmp_path: Path, tiny_config: TinyConfig, mlflow_uri: str
) -> None:
    one = tmp_path / "one"
    params = write_params(tiny_config, one)
    assert train(params) == 0
    assert train(params, "train.epochs=2") == 0  # continues from last.pt (step 8) to step 16
    two = tmp_path / "two"
    assert train(write_params(tiny_config, two, train={"epochs": 2})) == 0
    assert_equal_weights(state_dicts(one / "vaegan.pt"), state_dicts(two / "vaegan.pt"))
    a, b = load_checkpoint(one / "checkpoints" / "last.pt"), load_checkpoint(two / "checkpoints" / "last.pt")
    assert a["state"]["step"] == b["state"]["step"] == 16
    losses = ("loss_prior", "loss_llike", "loss_pixel", "loss_dis", "loss_gan", "val_loss")
    assert [[r[k] for k in losses] for r in a["state"]["history"]] == [
        [r[k] for k in losses] for r in b["state"]["history"]
    ]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("vaegan").experiment_id])
    # one's two invocations share one MLflow run; two has its own
    assert len(runs) == 2
    assert a["state"]["mlflow_run_id"] != b["state"]["mlflow_run_id"]


def test_a_smaller_budget_than_the_checkpoints_is_a_new_run(
    tmp_path: Path, tiny_config: TinyConfig, mlflow_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The README's experiment after `make run`: fewer epochs than last.pt's run trains afresh."""
    params = write_params(tiny_config, tmp_path, train={"epochs": 2})
    assert train(params) == 0
    last = tmp_path / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["state"]["step"] == 16
    caplog.set_level(logging.INFO, logger="vaegan.train")
    assert train(params, "train.epochs=1") == 0
    assert f"{last} is at step 16, beyond this run's budget of 8 steps" in caplog.text
    assert "a smaller budget is a new run; starting fresh" in caplog.text
    state = load_checkpoint(last)["state"]
    assert state["completed"] is True and state["step"] == 8 and len(state["history"]) == 1
    assert json.loads((tmp_path / "metrics" / "train.json").read_text())["steps"] == 8

    # An unfinished longer run is kept aside, not overwritten.
    payload = load_checkpoint(last)
    payload["state"]["completed"] = False
    payload["state"]["step"] = 12
    save_checkpoint(last, payload)
    unfinished = last.read_bytes()
    caplog.clear()
    assert train(params, "train.epochs=1") == 0
    aside = last.parent / "last.step12.pt"
    assert f"the unfinished run is kept as {aside}" in caplog.text
    assert aside.read_bytes() == unfinished
    assert load_checkpoint(last)["state"]["step"] == 8


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=1", "train.batch_size: 1 is out of range (must be >= 2)"),
        (
            "train.prior_components=257",
            "train.prior_components: 257 mixture components need at least as many training images, "
            "this run has 256 (the prepared train split, train.limit_train_images=256)",
        ),
    ],
)
def test_a_run_that_would_fail_late_is_refused_before_any_work(
    tmp_path: Path,
    tiny_config: TinyConfig,
    mlflow_uri: str,
    capsys: pytest.CaptureFixture[str],
    override: str,
    message: str,
) -> None:
    params = write_params(tiny_config, tmp_path)
    assert train(params, override) == 2
    assert capsys.readouterr().err.splitlines() == [f"vaegan train: error: {message}"]
    from mlflow.tracking import MlflowClient

    assert MlflowClient(mlflow_uri).get_experiment_by_name("vaegan") is None
    assert {path.name for path in tmp_path.iterdir()} - {"mlflow.db"} == {"params.yaml"}  # nothing written


def test_changed_params_refuse_an_unfinished_checkpoint_and_supersede_a_finished_one(
    tmp_path: Path, tiny_config: TinyConfig, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    params = write_params(tiny_config, tmp_path)
    assert train(params) == 0
    last = tmp_path / "checkpoints" / "last.pt"
    payload = load_checkpoint(last)
    payload["state"]["completed"] = False
    payload["state"]["step"] = 4
    save_checkpoint(last, payload)
    assert train(params, "train.lr=0.001") == 2
    err = capsys.readouterr().err
    assert "unfinished run (step 4)" in err and "train.lr: 0.0003 -> 0.001" in err
    assert load_checkpoint(last)["state"]["step"] == 4  # untouched

    payload["state"]["completed"] = True
    payload["state"]["step"] = 8
    save_checkpoint(last, payload)
    assert train(params, "train.lr=0.001") == 0  # a finished run of other params: start fresh
    fresh = load_checkpoint(last)
    assert fresh["config"]["train"]["lr"] == 0.001 and fresh["state"]["step"] == 8


def test_a_corrupt_last_checkpoint_says_how_to_start_fresh_and_never_ignores_it(
    tmp_path: Path, tiny_config: TinyConfig, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    params = write_params(tiny_config, tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"truncated by a full disk")
    assert train(params) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {last} cannot be read" in err and "pass --set train.resume=never" in err
    assert last.read_bytes() == b"truncated by a full disk"  # refused: nothing touched
    assert train(params, "train.resume=never") == 0  # never does not read it: a fresh run
    assert load_checkpoint(last)["state"]["completed"] is True
    assert (tmp_path / "vaegan.pt").is_file()


def test_the_latent_prior_is_fitted_after_training_and_refitted_without_retraining(
    tmp_path: Path, tiny_config: TinyConfig, mlflow_uri: str
) -> None:
    params = write_params(tiny_config, tmp_path, model={"preset": "default"})
    assert train(params, "train.prior=mixture", "train.prior_components=3") == 0
    last = tmp_path / "checkpoints" / "last.pt"
    trained = last.read_bytes()
    model = load_model(tmp_path / "vaegan.pt")
    assert model.prior.kind == "mixture" and model.prior.components == 3
    assert torch.isclose(model.prior.weights.sum(), torch.tensor(1.0, dtype=model.prior.weights.dtype))
    metrics = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert metrics["prior"] == "mixture" and metrics["prior_log_likelihood"] > -1e3

    # Another prior re-fits on the same weights: no training step (last.pt untouched).
    assert train(params, "train.prior=gaussian") == 0
    assert last.read_bytes() == trained
    refitted = load_model(tmp_path / "vaegan.pt")
    assert refitted.prior.kind == "gaussian" and refitted.prior.components == 1
    assert_equal_weights(state_dicts(tmp_path / "vaegan.pt"), {
        name: getattr(model, name).state_dict() for name in ("encoder", "decoder", "discriminator")
    })  # fmt: skip
    assert train(params, "train.prior=standard") == 0
    assert load_model(tmp_path / "vaegan.pt").prior.components == 0


def test_decoder_ema_is_the_final_decoder_and_resumes_exactly(
    tmp_path: Path, tiny_config: TinyConfig, mlflow_uri: str
) -> None:
    one = tmp_path / "one"
    params = write_params(tiny_config, one, train={"ema_decay": 0.9})
    assert train(params) == 0
    last = load_checkpoint(one / "checkpoints" / "last.pt")
    final = load_checkpoint(one / "vaegan.pt")
    assert "decoder_ema" not in final and int(last["decoder_ema"]["n_averaged"]) == 8
    for key, value in final["decoder"].items():
        assert torch.equal(value, last["decoder_ema"][f"module.{key}"]), key
    assert any(not torch.equal(v, last["decoder"][k]) for k, v in final["decoder"].items())

    assert train(params, "train.epochs=2") == 0  # continues, the average with it
    two = tmp_path / "two"
    assert train(write_params(tiny_config, two, train={"ema_decay": 0.9, "epochs": 2})) == 0
    assert_equal_weights(state_dicts(one / "vaegan.pt"), state_dicts(two / "vaegan.pt"))


def test_cuda_graph_on_a_cpu_is_refused_before_any_run_is_opened(
    tmp_path: Path, tiny_config: TinyConfig, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    params = write_params(tiny_config, tmp_path)
    code = train(params, "train.cuda_graph=true", "train.device=cpu")
    assert code == 2
    assert "train.cuda_graph: needs a CUDA device; this run trains on cpu" in capsys.readouterr().err
    from mlflow.tracking import MlflowClient

    assert MlflowClient(mlflow_uri).get_experiment_by_name("vaegan") is None
    assert {path.name for path in tmp_path.iterdir()} - {"mlflow.db"} == {"params.yaml"}  # nothing written
