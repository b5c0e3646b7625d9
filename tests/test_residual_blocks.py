"""`model.decoder_blocks` and `model.discriminator_blocks`: residual blocks at both resolutions of
the decoder and of the discriminator's trunk, layouts that older checkpoints still load into when
they are 0, and a trained deeper model that round-trips through the checkpoint and the exported
generator graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from conftest import TinyConfig
from vaegan.artifacts import onnx_runtime
from vaegan.cli import main
from vaegan.nn.checkpoint_payload import load_model
from vaegan.nn.networks import PRESETS, ModelArgs, ResidualBlock, build_model, model_args_for
from vaegan.nn.onnx_graphs import export_model


def _layer(name: str) -> list[str]:
    return [f"{name}.weight", f"{name}.bias"]


def _batch_norm(name: str) -> list[str]:
    return [
        *_layer(name),
        *(f"{name}.{buffer}" for buffer in ("running_mean", "running_var", "num_batches_tracked")),
    ]


# The parameters and buffers before residual blocks existed (what older checkpoints hold).
SHALLOW_DECODER_KEYS = [
    *_layer("project.0"),
    *_batch_norm("project.1"),
    *_layer("body.0"),
    *_batch_norm("body.1"),
    *_layer("body.3"),
]
SHALLOW_DISCRIMINATOR_KEYS = [
    *_layer("trunk.0"), *_layer("trunk.2"), *_batch_norm("trunk.3"), *_layer("features"),
    *_batch_norm("head.0"), *_layer("head.3"), *_layer("head.5"),
]  # fmt: skip


def _blocks(module: torch.nn.Module) -> list[ResidualBlock]:
    return [m for m in module.modules() if isinstance(m, ResidualBlock)]


def test_blocks_sit_at_both_resolutions_and_keep_the_decoders_shapes() -> None:
    model = build_model(model_args_for("default", decoder_blocks=2))
    blocks = _blocks(model.decoder)
    assert [block.branch[0].in_channels for block in blocks] == [128, 128, 64, 64]
    assert all(block.branch[0].out_channels == block.branch[3].out_channels for block in blocks)
    assert _blocks(model.encoder) == [] and _blocks(model.discriminator) == []
    z = torch.randn(5, 32)
    hidden = model.decoder.project(z).view(5, 128, 7, 7)
    assert blocks[0](hidden).shape == (5, 128, 7, 7)
    assert model.decoder(z).shape == (5, 1, 28, 28)
    shallow = build_model(model_args_for("default"))
    extra = sum(p.numel() for p in model.decoder.parameters()) - sum(
        p.numel() for p in shallow.decoder.parameters()
    )
    per_block = {c: 2 * (9 * c * c + c) + 4 * c for c in (128, 64)}  # two convs, two BatchNorms
    assert extra == 2 * (per_block[128] + per_block[64])


def test_discriminator_blocks_sit_in_its_trunk_before_dis_l() -> None:
    model = build_model(model_args_for("default", discriminator_blocks=1))
    blocks = _blocks(model.discriminator)
    assert [block.branch[0].in_channels for block in blocks] == [64, 128]
    assert all(isinstance(block.out[1], torch.nn.LeakyReLU) for block in blocks)
    assert _blocks(model.decoder) == [] and _blocks(model.encoder) == []
    logit, features = model.discriminator(torch.rand(5, 1, 28, 28))
    assert logit.shape == (5,) and features.shape == (5, 128, 7, 7)

    normalised = build_model(model_args_for("default", dis_spectral_norm=True, discriminator_blocks=1))
    convs = [
        m
        for block in _blocks(normalised.discriminator)
        for m in block.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    assert len(convs) == 4 and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in normalised.discriminator.modules())


def test_without_blocks_the_networks_have_the_layout_of_older_checkpoints() -> None:
    model = build_model(model_args_for("default"))
    assert list(model.decoder.state_dict()) == SHALLOW_DECODER_KEYS
    assert list(model.discriminator.state_dict()) == SHALLOW_DISCRIMINATOR_KEYS
    stored = PRESETS["default"].to_dict()
    del stored["decoder_blocks"], stored["discriminator_blocks"]  # written before the fields existed
    assert ModelArgs.from_dict(stored) == PRESETS["default"]
    assert PRESETS["default"].decoder_blocks == PRESETS["default"].discriminator_blocks == 0


def test_a_trained_deeper_decoder_round_trips_through_checkpoint_and_onnx(
    tmp_path: Path, tiny_config: TinyConfig, mlflow_uri: str
) -> None:
    config = tiny_config(
        root=tmp_path, model={"preset": "default", "decoder_blocks": 1, "discriminator_blocks": 1}
    )
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(config.to_dict()))
    assert main(["train", "--params", str(params)]) == 0

    model = load_model(config.train.model_path).eval()
    assert model.args.decoder_blocks == model.args.discriminator_blocks == 1
    assert len(_blocks(model.decoder)) == len(_blocks(model.discriminator)) == 2
    for network in (model.decoder, model.discriminator):
        block_weight = _blocks(network)[1].branch[0].weight
        assert block_weight.abs().max() > 0.02 * 4  # trained away from the N(0, 0.02) start
    result = export_model(
        model=model, out_dir=tmp_path / "onnx", opset=18, tolerance=1e-4,
        batch_sizes=(1, 7), device="cpu", seed=0, latency_reps=1,
    )  # fmt: skip
    z = np.random.default_rng(3).standard_normal((16, 32), dtype=np.float32)
    images = onnx_runtime.run_decoder(onnx_runtime.create_session(result.path("decoder"), "cpu"), z)
    with torch.no_grad():
        expected = model.generate(torch.from_numpy(z)).numpy()
    assert np.abs(images - expected).max() < 1e-4
    assert images.std() > 1e-3  # one epoch on 256 images: near 0.5 everywhere, but not constant
