"""The evaluate stage and its scoring core: metrics, determinism, checkpoint errors, report, MLflow,
the Inception option."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torchvision.models import inception as tv

from conftest import REPO_ROOT, TinyConfig
from vaegan import evaluate
from vaegan.artifacts.checkpoint import save_checkpoint
from vaegan.data.splits import Split, load_split
from vaegan.errors import CheckpointError, RegistryError
from vaegan.nn.checkpoint_payload import model_payload
from vaegan.nn.latent_prior import LatentPrior, fit_mixture
from vaegan.nn.networks import build_model, model_args_for
from vaegan.scoring import core, lenet
from vaegan.scoring.inception import (
    FEATURE_DIM,
    FIDInception,
    TFInceptionA,
    TFInceptionE,
    load_fid_inception,
)


def _vaegan_payload(preset: str, state: dict | None = None, seed: int = 0) -> dict:
    args = model_args_for(preset)
    torch.manual_seed(seed)
    model = build_model(args)
    return model_payload(model, {"train": {"objective": "vaegan"}}, state or {})


def _core(
    prepared: Path, evaluator_path: Path, num_samples: int = 300, seed: int = 0, preset: str = "seed",
    prior: LatentPrior | None = None,
):  # fmt: skip
    payload = _vaegan_payload(preset)
    model = build_model(model_args_for(preset))
    model.encoder.load_state_dict(payload["encoder"])
    model.decoder.load_state_dict(payload["decoder"])
    if prior is not None:
        model.prior = prior
    test = load_split(prepared, "test")
    return core.evaluate_model(
        model=model, evaluator=lenet.load_evaluator(str(evaluator_path)),
        test=Split(test.images[:400], test.labels[:400]), floor=load_split(prepared, "val"),
        num_samples=num_samples, seed=seed, batch_size=128,
    )  # fmt: skip


def test_quantise_rounds_to_the_8_bit_grid() -> None:
    x = torch.tensor([0.0, 0.5 / 255, 0.51 / 255, 1.49 / 255, 0.999, 1.2, -0.1])
    expected = torch.tensor([0.0, 0.0, 1.0, 1.0, 255.0, 255.0, 0.0]) / 255  # 0.5 rounds half to even
    assert torch.equal(core.quantise(x), expected)
    assert np.array_equal(core.to_uint8_tensor(core.quantise(x)), [0, 0, 1, 1, 255, 255, 0])


def test_metrics_are_complete_sane_and_deterministic(
    small_prepared_dir: Path, trained_evaluator: Path
) -> None:
    first = _core(small_prepared_dir, trained_evaluator)
    again = _core(small_prepared_dir, trained_evaluator)
    other_seed = _core(small_prepared_dir, trained_evaluator, seed=1)
    m = first.metrics
    assert m == again.metrics
    assert np.array_equal(first.samples, again.samples)
    assert m["fid"] != other_seed.metrics["fid"]
    for key in core.METRIC_KEYS:
        assert isinstance(m[key], float) and math.isfinite(m[key]), key
    assert (m["num_samples"], m["num_test"], m["num_floor"], m["seed"]) == (300, 400, 200, 0)
    assert m["feature_dim"] == 128 and m["feature_extractor"] == "lenet"
    # An untrained decoder draws near-constant grey: far from the data, much farther than real vs real.
    assert m["fid_floor"] > 0 and m["fid"] > 10 * m["fid_floor"] and m["fid_recon"] > 10 * m["fid_floor"]
    assert m["recall"] < 0.05
    assert 0 <= m["sample_class_entropy"] < 0.5  # one grey blob, one class
    # The evaluator's accuracy is measured on exactly the test images used.
    test = load_split(small_prepared_dir, "test")
    clf = lenet.load_evaluator(str(trained_evaluator))
    assert m["evaluator_test_accuracy"] == lenet.accuracy(clf, Split(test.images[:400], test.labels[:400]))
    assert m["evaluator_test_accuracy"] > 0.8
    # Reconstruction terms: DCGAN-init weights give ~0.5 everywhere, so MSE ~ E[(x - 0.5)^2].
    x = test.images[:400].astype(np.float64) / 255
    assert m["recon_mse"] == pytest.approx(((x - 0.5) ** 2).mean(), rel=0.02)
    assert m["recon_bce"] == pytest.approx(784 * math.log(2), rel=0.02)
    assert m["kl"] < 0.01  # mu ~ 0, logvar ~ 0
    assert first.samples.shape == (100, 28, 28) and first.samples.dtype == np.uint8
    assert first.test_mu.shape == (400, 2)


def test_fid_under_the_fitted_prior_and_under_n01(small_prepared_dir: Path, trained_evaluator: Path) -> None:
    standard = _core(small_prepared_dir, trained_evaluator).metrics
    assert standard["prior"] == "standard" and standard["fid_standard_prior"] == standard["fid"]
    codes = np.random.default_rng(0).standard_normal((500, 2)) * 0.5 + [60.0, -60.0]  # far from N(0, I)
    fitted = _core(
        small_prepared_dir, trained_evaluator, prior=LatentPrior.from_fit(fit_mixture(codes, 2))
    ).metrics
    assert fitted["prior"] == "mixture"
    assert fitted["fid_standard_prior"] == standard["fid"]  # the same networks, the same noise
    assert fitted["fid"] != standard["fid"]
    for key in ("fid_recon", "recon_mse", "psnr", "kl", "label_consistency"):  # the prior changes no recon
        assert fitted[key] == standard[key], key


def test_class_counts(small_prepared_dir: Path, trained_evaluator: Path) -> None:
    ev = _core(small_prepared_dir, trained_evaluator, num_samples=50)
    assert ev.sample_class_counts.sum() == 50 and ev.test_class_counts.sum() == 400


def _write_checkpoints(tmp_path: Path) -> dict[str, Path]:
    paths = {
        name: tmp_path / f"{name}.pt" for name in ("good", "evaluator", "mismatch", "foreign", "garbage")
    }
    save_checkpoint(paths["good"], _vaegan_payload("seed"))
    save_checkpoint(paths["evaluator"], lenet.evaluator_payload(lenet.LeNet(lenet.EvaluatorArgs()), {}, {}))
    mismatch = _vaegan_payload("seed")
    mismatch["model_args"] = model_args_for("default").to_dict()  # says default, holds seed weights
    save_checkpoint(paths["mismatch"], mismatch)
    torch.save({"state_dict": torch.zeros(3)}, paths["foreign"])
    paths["garbage"].write_bytes(b"not a checkpoint at all")
    return paths


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("evaluator", "holds a 'evaluator' model, expected 'vaegan'"),
        ("mismatch", "does not match the model it describes"),
        ("foreign", "is not a vaegan-checkpoint/1 file"),
        ("garbage", "cannot be read"),
        ("missing", "does not exist"),
    ],
)
def test_incompatible_checkpoint_is_a_clear_error(
    tmp_path: Path, tiny_config: TinyConfig, trained_evaluator: Path, name: str, message: str
) -> None:
    paths = _write_checkpoints(tmp_path)
    config = tiny_config(
        evaluator={"path": str(trained_evaluator)},
        evaluate={"checkpoint": str(paths.get(name, tmp_path / "missing.pt"))},
    )  # fmt: skip
    with pytest.raises(CheckpointError, match=message):
        evaluate.run(config, None)  # type: ignore[arg-type]
    assert not Path(config.evaluate.metrics_path).exists()


def test_cli_reports_incompatible_checkpoint_in_one_line(tmp_path: Path, small_prepared_dir: Path) -> None:
    paths = _write_checkpoints(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "vaegan", "evaluate", "--set", f"evaluate.checkpoint={paths['mismatch']}",
         "--set", f"data.prepared_dir={small_prepared_dir}", "--set", f"evaluator.path={paths['evaluator']}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert (
        lines[-1].startswith("vaegan evaluate: error: ")
        and "does not match the model it describes" in lines[-1]
    )
    assert "Traceback" not in result.stderr


def test_stage_writes_metrics_report_and_logs_to_mlflow(
    tmp_path: Path, tiny_config: TinyConfig, trained_evaluator: Path, mlflow_uri: str
) -> None:
    client = MlflowClient(tracking_uri=mlflow_uri)
    # where `vaegan train` would have created it: the config's artifact folder (tracking.store refuses a
    # store whose experiment keeps its artifacts elsewhere, as a copied workspace's does)
    artifacts = (tmp_path / "mlartifacts").resolve().as_uri()
    experiment_id = client.create_experiment("vaegan-test", artifact_location=artifacts)
    training_run = client.create_run(experiment_id, run_name="train").info.run_id
    client.set_terminated(training_run)
    model_path = tmp_path / "vaegan.pt"
    save_checkpoint(
        model_path, _vaegan_payload("seed", state={"mlflow_run_id": training_run, "objective": "vaegan"})
    )
    baseline_path = tmp_path / "baseline.json"
    baseline_path.write_text(json.dumps({"fid": 123.456, "num_samples": 200, "psnr": 9.87}))
    config = tiny_config(
        evaluator={"path": str(trained_evaluator)},
        evaluate={"checkpoint": str(model_path), "baseline_metrics": str(baseline_path), "device": "cpu"},
        tracking={"experiment": "vaegan-test"},
    )  # fmt: skip
    assert evaluate.run(config, None) == 0  # type: ignore[arg-type]

    values = json.loads(Path(config.evaluate.metrics_path).read_text())
    assert set(core.METRIC_KEYS) <= set(values)
    assert values["num_samples"] == 200 and values["num_test"] == 1000 and values["seed"] == 0
    assert values["provenance"]["objective"] == "vaegan"
    report = Path(config.evaluate.report_dir)
    names = sorted(p.name for p in report.iterdir())
    assert names == sorted([
        "interpolation.png", "latent_scatter.png", "manifold.png", "reconstructions.png", "report.md",
        "sample_classes.csv", "samples.png",
    ])  # fmt: skip
    for png in report.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (report / "report.md").read_text()
    assert f"| {values['fid']:.4g} | 123.5 | {values['fid_floor']:.4g} |" in md
    assert "![Samples from the prior](samples.png)" in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 13  # a row per report.ROWS entry
    assert all(line.count("|") - line.count("\\|") == 7 for line in table)  # 6 columns, escaped pipes
    csv = (report / "sample_classes.csv").read_text().splitlines()
    assert csv[0] == "class,samples,test" and len(csv) == 11
    assert sum(float(line.split(",")[2]) for line in csv[1:]) == pytest.approx(1.0, abs=1e-5)

    # Logged to the training's own run, not a new one.
    run = client.get_run(training_run)
    assert run.data.metrics["eval/fid"] == pytest.approx(values["fid"])
    assert run.data.metrics["eval/evaluator_test_accuracy"] == pytest.approx(
        values["evaluator_test_accuracy"]
    )
    assert len(client.search_runs([experiment_id])) == 1
    artifacts = {a.path for a in client.list_artifacts(training_run, "evaluation")}
    assert artifacts == {"evaluation/eval.json", "evaluation/report"}
    report_artifacts = {a.path for a in client.list_artifacts(training_run, "evaluation/report")}
    assert "evaluation/report/report.md" in report_artifacts


def test_a_test_image_limit_scores_the_first_images_of_the_test_and_floor_splits(
    tiny_config: TinyConfig, trained_evaluator: Path, small_prepared_dir: Path
) -> None:
    config = tiny_config(evaluator={"path": str(trained_evaluator)}, evaluate={"limit_test_images": 300})
    scoring = core.load_scoring(config)
    test, floor = load_split(small_prepared_dir, "test"), load_split(small_prepared_dir, core.FLOOR_SPLIT)
    assert (len(scoring.test), len(scoring.floor)) == (300, 300)
    assert np.array_equal(scoring.test.images, test.images[:300])
    assert np.array_equal(scoring.test.labels, test.labels[:300])
    assert np.array_equal(scoring.floor.images, floor.images[:300])
    everything = core.load_scoring(tiny_config(evaluator={"path": str(trained_evaluator)}))
    assert (len(everything.test), len(everything.floor)) == (len(test), len(floor)) == (1000, 1000)


def test_stage_without_run_id_creates_an_evaluate_run(
    tmp_path: Path, tiny_config: TinyConfig, trained_evaluator: Path, mlflow_uri: str
) -> None:
    model_path = tmp_path / "vaegan.pt"
    save_checkpoint(model_path, _vaegan_payload("default"))
    config = tiny_config(
        evaluator={"path": str(trained_evaluator)},
        evaluate={"checkpoint": str(model_path), "num_samples": 100},
    )  # fmt: skip
    assert evaluate.run(config, None) == 0  # type: ignore[arg-type]
    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("vaegan")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "evaluate" and run.info.status == "FINISHED"
    values = json.loads(Path(config.evaluate.metrics_path).read_text())
    assert run.data.metrics["eval/fid"] == pytest.approx(values["fid"])
    # latent_dim 32: no 2-D manifold or scatter.
    assert not (Path(config.evaluate.report_dir) / "manifold.png").exists()
    assert "No baseline configured" in (Path(config.evaluate.report_dir) / "report.md").read_text()


def test_unreachable_tracking_server_fails_before_scoring_and_keeps_outputs(
    tmp_path: Path, tiny_config: TinyConfig, trained_evaluator: Path
) -> None:
    """The store is checked first: the old stage scored for minutes, replaced the metrics and the
    report, and only then failed on MLflow."""
    model_path = tmp_path / "vaegan.pt"
    save_checkpoint(model_path, _vaegan_payload("seed"))
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tiny_config(
        evaluator={"path": str(trained_evaluator)},
        evaluate={"checkpoint": str(model_path)},
        tracking={"uri": f"http://127.0.0.1:{port}"},
    )  # fmt: skip
    metrics = Path(config.evaluate.metrics_path)
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text('{"fid": 1.0}')
    with pytest.raises(RegistryError, match="is not reachable"):
        evaluate.run(config, None)  # type: ignore[arg-type]
    assert metrics.read_text() == '{"fid": 1.0}'
    assert not Path(config.evaluate.report_dir).exists()


# --- the Inception option ---------------------------------------------------------------------


def test_inception_weights_round_trip_and_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = FIDInception().eval()
    weights = tmp_path / "pt_inception-test.pth"
    torch.save(source.net.state_dict(), weights)  # the layout of pytorch-fid's weights file
    loaded = load_fid_inception(weights)
    grey = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        feats = loaded(grey)
        assert feats.shape == (2, FEATURE_DIM)
        assert torch.equal(feats, source(grey))
        # Grey input is three equal channels, resized to 299x299 bilinearly like pytorch-fid.
        rgb = torch.nn.functional.interpolate(grey.repeat(1, 3, 1, 1), size=(299, 299), mode="bilinear")
        torch.testing.assert_close(loaded(rgb), feats, rtol=1e-5, atol=1e-6)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_fid_inception(tmp_path / "missing.pth")
    wrong = tmp_path / "lenet.pth"
    torch.save(lenet.LeNet(lenet.EvaluatorArgs()).state_dict(), wrong)
    with pytest.raises(CheckpointError, match="does not fit the FID Inception-v3"):
        load_fid_inception(wrong)


def test_inception_key_layout_matches_torchvision_inception3() -> None:
    """pytorch-fid's weights file is a torchvision Inception3 (1008 classes, no aux head) state dict."""
    ours = {k: tuple(v.shape) for k, v in FIDInception().net.state_dict().items()}
    reference = tv.Inception3(num_classes=1008, aux_logits=False, init_weights=False).state_dict()
    assert ours == {k: tuple(v.shape) for k, v in reference.items()}


def test_inception_pool_branch_ignores_padding() -> None:
    """TF's pool branch averages valid pixels only: on a constant map it stays constant at the border."""
    torch.manual_seed(0)
    ours, plain = TFInceptionA(192, pool_features=32).eval(), tv.InceptionA(192, pool_features=32).eval()
    plain.load_state_dict(ours.state_dict())
    x = torch.ones(1, 192, 5, 5)
    with torch.no_grad():
        a, b = ours(x), plain(x)
    torch.testing.assert_close(a[:, :-32], b[:, :-32])  # other branches identical
    pool = a[:, -32:]
    assert torch.allclose(pool, pool[:, :, 2:3, 2:3].expand_as(pool))  # border == centre
    assert not torch.allclose(b[:, -32:, 0, 0], b[:, -32:, 2, 2])  # torchvision's counts the zeros
    e_max = TFInceptionE(64, max_pool=True).eval()
    y = torch.randn(1, 64, 4, 4)
    with torch.no_grad():
        expected = e_max.branch_pool(torch.nn.functional.max_pool2d(y, 3, stride=1, padding=1))
        torch.testing.assert_close(e_max(y)[:, -192:], expected)


@pytest.mark.slow
def test_evaluate_with_inception_features(
    tmp_path: Path, small_prepared_dir: Path, trained_evaluator: Path
) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "inception.pth"
    torch.save(FIDInception().net.state_dict(), weights)
    test, val = load_split(small_prepared_dir, "test"), load_split(small_prepared_dir, "val")
    model = build_model(model_args_for("seed")).eval()
    ev = core.evaluate_model(
        model=model, evaluator=lenet.load_evaluator(str(trained_evaluator)),
        test=Split(test.images[:24], test.labels[:24]), floor=Split(val.images[:16], val.labels[:16]),
        num_samples=24, seed=0, batch_size=8, feature_extractor=load_fid_inception(weights).eval(),
        feature_name="inception",
    )  # fmt: skip
    assert ev.metrics["feature_dim"] == 2048 and ev.metrics["feature_extractor"] == "inception"
    assert math.isfinite(ev.metrics["fid"]) and ev.metrics["fid"] > 0


def test_inception_option_needs_weights_file(tmp_path: Path, small_prepared_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vaegan", "evaluate", "--set", "evaluate.feature_extractor=inception",
         "--set", f"evaluate.inception_weights={tmp_path / 'nope.pth'}",
         "--set", f"evaluate.checkpoint={tmp_path / 'm.pt'}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "vaegan evaluate: error: Inception weights file" in result.stderr
    assert "nope.pth (evaluate.inception_weights) does not exist" in result.stderr
