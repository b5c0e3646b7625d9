"""The export stage: ONNX graphs, parity with PyTorch, dynamic batch, atomic replacement, errors."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from conftest import TinyConfigAt
from tests.tmpfs import fill, mounted_tmpfs
from vaegan import cli
from vaegan.artifacts import onnx_runtime
from vaegan.artifacts.checkpoint import save_checkpoint
from vaegan.artifacts.provenance import sha256_file
from vaegan.errors import VaeganError
from vaegan.nn.checkpoint_payload import final_model_payload, load_model, model_payload
from vaegan.nn.latent_prior import LatentPrior, fit_mixture
from vaegan.nn.networks import VAEGAN, build_model, model_args_for
from vaegan.nn.onnx_graphs import ParityError, export_decoder_onnx, export_model

TOLERANCE = 1e-4


def _spread_weights(model: VAEGAN, seed: int) -> VAEGAN:
    """Weights large enough that outputs vary (the N(0, 0.02) init decodes everything to ~0.5)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.15)
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model


def _with_mixture_prior(model: VAEGAN, components: int = 3) -> VAEGAN:
    """`model` with a mixture prior fitted to skewed 2-d codes (far from N(0, I))."""
    codes = np.random.default_rng(0).standard_normal((600, 2)) * [2.0, 0.3] + [1.0, -1.0]
    model.prior = LatentPrior.from_fit(fit_mixture(codes, components, seed=0))
    return model


def _payload(model: VAEGAN) -> dict:
    """The `train.model_path` layout train.py writes (state trimmed to what export ignores)."""
    state = {"step": 1, "completed": True}
    checkpoint = model_payload(model, {"train": {"objective": "vaegan"}}, state, prior=model.prior)
    return final_model_payload(checkpoint)


def _params_file(tiny_config_at: TinyConfigAt, tmp_path: Path, checkpoint: Path, **export: object) -> Path:
    train = {"model_path": str(checkpoint)}
    config = tiny_config_at(tmp_path, train=train, export=export)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, tiny_config_at: TinyConfigAt) -> dict:
    """`vaegan export` run once on a seed-preset checkpoint (the real CLI entry, in-process)."""
    root = tmp_path_factory.mktemp("export")
    model = _with_mixture_prior(_spread_weights(build_model(model_args_for("seed")), seed=1)).eval()
    checkpoint = root / "vaegan.pt"
    save_checkpoint(checkpoint, _payload(model))
    params = _params_file(tiny_config_at, root, checkpoint)
    assert cli.main(["export", "--params", str(params)]) == 0
    return {
        "root": root,
        "params": params,
        "checkpoint": checkpoint,
        "onnx_dir": root / "onnx",
        "metrics_path": root / "metrics" / "export.json",
        "metrics": json.loads((root / "metrics" / "export.json").read_text()),
    }


def test_stage_writes_both_graphs_with_parity_within_tolerance(stage: dict) -> None:
    metrics, onnx_dir = stage["metrics"], stage["onnx_dir"]
    assert sorted(p.name for p in onnx_dir.iterdir()) == ["decoder.onnx", "encoder.onnx"]  # no .data
    assert metrics["parity_passed"] is True
    assert metrics["parity_tolerance"] == TOLERANCE
    assert metrics["opset"] == 18 and metrics["latent_dim"] == 2
    assert metrics["checkpoint_sha256"] == sha256_file(stage["checkpoint"])
    assert metrics["input_names"] == {"decoder": ["z"], "encoder": ["x"]}
    assert metrics["output_names"] == {"decoder": ["x"], "encoder": ["mu", "logvar", "reconstruction"]}
    assert metrics["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    for graph in ("decoder", "encoder"):
        entry = metrics[graph]
        path = onnx_dir / entry["file"]
        assert entry["file"] == f"{graph}.onnx" and entry["files"] == [entry["file"]]
        assert entry["sha256"] == sha256_file(path)
        assert entry["bytes"] == path.stat().st_size
        assert set(entry["errors_by_batch"]) == {"1", "7", "256"}
        assert all(0 <= error < TOLERANCE for error in entry["errors_by_batch"].values())
        assert entry["max_abs_error"] == max(entry["errors_by_batch"].values())
        for batch in ("batch_1", "batch_256"):
            assert entry["latency_ms"][batch]["onnxruntime"] > 0
            assert entry["latency_ms"][batch]["torch"] > 0


def test_graphs_have_stable_names_a_dynamic_batch_and_match_the_checkpoint(stage: dict) -> None:
    onnx_dir = stage["onnx_dir"]
    encoder_outputs = ["mu", "logvar", "reconstruction"]
    for name, inputs, outputs in (("decoder", ["z"], ["x"]), ("encoder", ["x"], encoder_outputs)):
        graph = onnx.load(str(onnx_dir / f"{name}.onnx"))
        assert [i.name for i in graph.graph.input] == inputs
        assert [o.name for o in graph.graph.output] == outputs
        for value in (*graph.graph.input, *graph.graph.output):
            assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
        assert {op.domain: op.version for op in graph.opset_import}[""] == 18

    model = load_model(stage["checkpoint"])
    assert model.prior.kind == "mixture" and model.prior.components == 3
    decoder = onnx_runtime.create_session(onnx_dir / "decoder.onnx", "cpu")
    encoder = onnx_runtime.create_session(onnx_dir / "encoder.onnx", "cpu")
    rng = np.random.default_rng(123)
    for batch in (3, 300):  # neither was traced nor checked by the stage
        z = rng.standard_normal((batch, 2), dtype=np.float32)
        images = onnx_runtime.run_decoder(decoder, z)
        with torch.no_grad():
            expected = model.generate(torch.from_numpy(z)).numpy()  # through the fitted prior
            unmapped = model.decoder.decode(torch.from_numpy(z)).numpy()
        assert images.shape == (batch, 1, 28, 28)
        assert np.abs(images - expected).max() < TOLERANCE
        assert np.abs(images - unmapped).max() > 0.1  # the prior is inside the graph
        assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.01

        x = rng.random((batch, 1, 28, 28), dtype=np.float32)
        mu, logvar, reconstruction = onnx_runtime.run_autoencoder(encoder, x)
        with torch.no_grad():
            mu_ref, logvar_ref = (t.numpy() for t in model.encoder(torch.from_numpy(x)))
            reconstruction_ref = model.decoder.decode(torch.from_numpy(mu_ref)).numpy()
        assert mu.shape == logvar.shape == (batch, 2)
        assert np.abs(mu - mu_ref).max() < TOLERANCE and np.abs(logvar - logvar_ref).max() < TOLERANCE
        assert np.abs(reconstruction - reconstruction_ref).max() < TOLERANCE


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_failed_parity_exits_nonzero_and_keeps_the_previous_export(
    stage: dict, tiny_config_at: TinyConfigAt, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(stage["onnx_dir"])
    metrics_before = stage["metrics_path"].read_bytes()
    strict = _params_file(tiny_config_at, stage["root"], stage["checkpoint"], parity_tolerance=1e-30)
    try:
        code = cli.main(["export", "--params", str(strict)])
    finally:
        _params_file(tiny_config_at, stage["root"], stage["checkpoint"])  # restore the module's params file
    assert code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("vaegan export: error: decoder parity failed at batch 1: max abs error ")
    assert "exceeds the tolerance 1e-30" in message
    assert _snapshot(stage["onnx_dir"]) == before
    assert stage["metrics_path"].read_bytes() == metrics_before
    assert not [p.name for p in stage["root"].iterdir() if p.name.startswith(".onnx")]  # no staging left
    assert issubclass(ParityError, VaeganError)


def test_missing_or_corrupt_checkpoint_is_a_clear_error(
    tmp_path: Path, tiny_config_at: TinyConfigAt, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "vaegan.pt"
    params = _params_file(tiny_config_at, tmp_path, checkpoint)
    assert cli.main(["export", "--params", str(params)]) == 2
    assert f"checkpoint {checkpoint} does not exist" in capsys.readouterr().err

    checkpoint.write_bytes(b"PK\x03\x04 not a torch checkpoint")
    assert cli.main(["export", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert f"vaegan export: error: checkpoint {checkpoint} cannot be read" in err
    assert "Traceback" not in err
    assert not (tmp_path / "onnx").exists() and not (tmp_path / "metrics" / "export.json").exists()


def test_default_preset_exports_batchnorm_in_eval_mode(tmp_path: Path) -> None:
    model = _spread_weights(build_model(model_args_for("default")), seed=2)
    model.train()  # export must not depend on the caller's mode
    result = export_model(
        model=model, out_dir=tmp_path / "onnx", opset=18, tolerance=TOLERANCE,
        batch_sizes=(1, 7, 256), device="cpu", seed=0, latency_reps=1,
    )  # fmt: skip
    assert model.training  # the caller's module is left as it was
    assert result.latent_dim == 32 and result.provider == "CPUExecutionProvider"
    for graph in result.graphs:
        assert sorted(graph.errors) == [1, 7, 256]
        assert graph.max_abs_error < TOLERANCE

    z = np.random.default_rng(5).standard_normal((16, 32), dtype=np.float32)
    images = onnx_runtime.run_decoder(onnx_runtime.create_session(result.path("decoder"), "cpu"), z)
    with torch.no_grad():
        eval_images = model.eval().decoder.decode(torch.from_numpy(z)).numpy()
        # (a copy: a train-mode forward pass updates the BatchNorm running statistics)
        train_images = copy.deepcopy(model).train().decoder.decode(torch.from_numpy(z)).numpy()
    assert np.abs(images - eval_images).max() < TOLERANCE
    assert np.abs(images - train_images).max() > 1e-2  # batch statistics would be visible

    # The single-graph function bench/ calls: same graph, eval mode, caller's mode restored.
    path = export_decoder_onnx(model.train(), tmp_path / "alone" / "decoder.onnx")
    assert model.training
    again = onnx_runtime.run_decoder(onnx_runtime.create_session(path, "cpu"), z)
    assert np.abs(again - eval_images).max() < TOLERANCE


def test_export_onto_a_full_disk_is_one_line_and_keeps_the_previous_export(
    stage: dict, tiny_config_at: TinyConfigAt, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It used to end in a 72-line ENOSPC traceback."""
    with mounted_tmpfs(tmp_path / "disk", size="2m") as disk:
        onnx_dir = disk / "onnx"
        shutil.copytree(stage["onnx_dir"], onnx_dir)  # the previous export
        before = _snapshot(onnx_dir)
        fill(disk)
        params = _params_file(tiny_config_at, tmp_path, stage["checkpoint"], dir=str(onnx_dir))
        assert cli.main(["export", "--params", str(params)]) == 2
        assert _snapshot(onnx_dir) == before
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "onnx"]  # no staging left
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"vaegan export: error: cannot write {onnx_dir}: No space left on device (")
    assert err[-1].endswith(f"MB free in {disk}); the previous output is kept")
    assert not (tmp_path / "metrics" / "export.json").exists()
