"""DiffAugment of the discriminator's input (`train.augment`), the spectrally normalised
discriminator (`model.spectral_norm`) and bf16 autocast on CPU (`train.precision`)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import numpy as np
import pytest
import torch

from tests.conftest import TinyConfig
from vaegan.nn import augment as aug
from vaegan.nn import devices
from vaegan.nn.batches import Batches
from vaegan.nn.checkpoint_payload import model_from_checkpoint, model_payload
from vaegan.nn.distributed import Distributed
from vaegan.nn.loop import fit_vaegan
from vaegan.nn.networks import PRESETS, ModelArgs, build_model, model_args_for
from vaegan.nn.plan import Plan
from vaegan.nn.step import LossSettings, vaegan_objectives


def _dot(row: int, col: int) -> torch.Tensor:
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, row, col] = 1.0
    return x


def test_translate_moves_each_image_by_its_own_shift_and_fills_zeros() -> None:
    x = torch.cat([_dot(10, 10), _dot(0, 27)])
    out = aug.translate(x, torch.tensor([[2, -3], [-1, 1]]))
    assert out.shape == x.shape
    assert out[0, 0, 12, 7] == 1.0 and out[0].sum() == 1.0
    assert out[1].sum() == 0.0  # the dot at (0, 27) moved up and right, out of the image
    ramp = torch.arange(28.0).expand(1, 1, 28, 28).clone()  # value = column
    shifted = aug.translate(ramp, torch.tensor([[0, 3]]))
    assert torch.equal(shifted[0, 0, 5, :3], torch.zeros(3))  # zeros shifted in on the left
    assert torch.equal(shifted[0, 0, 5, 3:], torch.arange(25.0))


def test_cutout_zeroes_a_square_clipped_at_the_border() -> None:
    ones = torch.ones(2, 1, 28, 28)
    out = aug.cutout(ones, torch.tensor([[14, 14], [0, 0]]))
    assert (out[0] == 0).sum() == (aug.CUTOUT - 1) ** 2  # |offset| < CUTOUT / 2 on both axes
    assert (out[1] == 0).sum() == (aug.CUTOUT // 2) ** 2  # a quarter of it lies inside
    assert out[0, 0, 14, 14] == 0 and out[0, 0, 0, 0] == 1


def test_augmentation_is_differentiable() -> None:
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    params = aug.draw("translation_cutout", 4, 28, torch.Generator().manual_seed(0), torch.device("cpu"))
    aug.apply(x, params).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_real_images_and_their_reconstructions_share_a_transform() -> None:
    gen = torch.Generator().manual_seed(1)
    pairs = aug.draw("translation_cutout", 5, 28, gen, torch.device("cpu"))
    prior = aug.draw("translation_cutout", 5, 28, gen, torch.device("cpu"))
    both = pairs.repeat_pairs(prior)
    assert both.shifts.shape == (15, 2) and both.cutout_centres is not None
    assert torch.equal(both.shifts[:5], both.shifts[5:10])
    assert torch.equal(both.shifts[10:], prior.shifts)
    assert both.shifts.abs().max() <= aug.MAX_SHIFT
    with pytest.raises(ValueError, match="unknown augmentation policy 'none'"):
        aug.draw("none", 5, 28, gen, torch.device("cpu"))


def test_the_augmented_step_changes_only_the_discriminator_input(tiny_config: TinyConfig) -> None:
    """Same batch, same noise: `augment: none` draws what it drew before the option existed, and
    an augmented step gives other D outputs but the same KL and pixel terms."""
    images = np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    plain_config = tiny_config()
    augmented_config = tiny_config(train={"augment": "translation"})
    draws = []
    for config in (plain_config, augmented_config):
        plan = Plan.of(config, len(images), Distributed(), {})
        draws.append(Batches.on_device(images, plan, 2, torch.device("cpu")).batch(3))
    (x, eps, z_prior, none), (x2, eps2, z_prior2, params) = draws
    assert none is None and params is not None
    assert torch.equal(x, x2) and torch.equal(eps, eps2) and torch.equal(z_prior, z_prior2)
    model = build_model(PRESETS["seed"])
    networks = (model.encoder, model.decoder, model.discriminator)
    plain = vaegan_objectives(*networks, x, eps, z_prior, LossSettings())
    augmented = vaegan_objectives(*networks, x, eps, z_prior, LossSettings(), params)
    names = LossSettings().metric_names
    values = dict(zip(names, plain.metrics.tolist(), strict=True))
    augmented_values = dict(zip(names, augmented.metrics.tolist(), strict=True))
    assert values["loss_prior"] == augmented_values["loss_prior"]
    assert values["loss_pixel"] == augmented_values["loss_pixel"]
    assert values["loss_dis"] != augmented_values["loss_dis"]


def test_spectral_norm_discriminator_has_no_batch_norm_and_round_trips() -> None:
    args = model_args_for("default", dis_spectral_norm=True)
    model = build_model(args)
    discriminator = model.discriminator
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in discriminator.modules())
    layers = [m for m in discriminator.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert layers and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in layers)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.encoder.modules())  # only D changes
    rebuilt = model_from_checkpoint(model_payload(model, {}, {}))
    x = torch.rand(3, 1, 28, 28)
    model.eval(), rebuilt.eval()
    assert torch.equal(model.discriminator(x)[0], rebuilt.discriminator(x)[0])


def test_model_args_of_older_checkpoints_load_and_unknown_keys_do_not() -> None:
    stored = PRESETS["seed"].to_dict()
    del stored["dis_spectral_norm"]  # written before the field existed
    assert ModelArgs.from_dict(stored) == PRESETS["seed"]
    with pytest.raises(ValueError, match="do not match"):
        ModelArgs.from_dict({**stored, "extra": 1})
    missing = dict(stored)
    del missing["latent_dim"]
    with pytest.raises(ValueError, match="do not match"):
        ModelArgs.from_dict(missing)
    assert dataclasses.replace(PRESETS["seed"]).dis_spectral_norm is False


def test_precision_resolves_to_bf16_only_where_it_is_native(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert devices.resolve_precision(cpu, "auto") == "fp32"
    devices._warn_no_native_bf16.cache_clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # a training resolves it in three places: one warning
            assert devices.resolve_precision(cpu, "bf16") == "fp32"
    assert caplog.text.count("no native bf16") == 1
    assert devices.autocast_factory(cpu, "bf16") is contextlib.nullcontext
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert devices.resolve_precision(cpu, "auto") == "bf16"
    assert devices.resolve_precision(cpu, "fp32") == "fp32"
    with devices.autocast_factory(cpu, "auto")():
        product = torch.ones(4, 4) @ torch.ones(4, 4)
    assert product.dtype == torch.bfloat16


@pytest.mark.skipif(not devices.native_bf16(torch.device("cpu")), reason="this CPU has no native bf16")
def test_bf16_training_on_cpu_is_bitwise_repeatable(tiny_config: TinyConfig) -> None:
    config = tiny_config(train={"precision": "auto", "channels_last": True, "max_steps": 4})
    images = np.random.default_rng(0).integers(0, 256, (256, 28, 28), dtype=np.uint8)
    runs = [
        fit_vaegan(config=config, train_images=images, val_images=images[:64], device=torch.device("cpu"))
        for _ in range(2)
    ]
    assert runs[0].metrics["precision"] == "bf16"
    for name, value in runs[0].model.state_dict().items():
        assert torch.equal(value, runs[1].model.state_dict()[name]), name
    assert runs[0].model.decoder.project[0].weight.dtype == torch.float32  # weights stay fp32
