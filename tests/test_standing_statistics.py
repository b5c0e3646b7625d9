"""The decoder's moving average gets BatchNorm statistics of its own weights: known answers on a
tiny encoder/decoder, and a trained default-preset model whose final decoder carries them."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import yaml
from torch import nn

from conftest import TinyConfig
from vaegan.cli import main
from vaegan.data.splits import load_split
from vaegan.nn.batches import images_to_device
from vaegan.nn.checkpoint_payload import load_model
from vaegan.nn.standing_statistics import batchnorm_layers, recompute_decoder_statistics

LATENT = 3


class TinyEncoder(nn.Module):
    """(N, 1, 2, 2) -> (mu, logvar), with a BatchNorm whose statistics must stay untouched."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(4, 2 * LATENT), nn.BatchNorm1d(2 * LATENT))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.body(x).chunk(2, dim=1)
        return mu, logvar


def tiny_networks() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    encoder, decoder = TinyEncoder(), nn.Sequential(nn.Linear(LATENT, 5), nn.BatchNorm1d(5))
    encoder.body[2].running_mean.fill_(0.3)
    encoder.body[2].running_var.fill_(2.0)
    images = torch.rand(10, 1, 2, 2)
    return encoder, decoder, images


def expected_statistics(encoder: nn.Module, decoder: nn.Module, images: torch.Tensor, batch: int, seed: int):
    """Mean of the per-call batch means and of the per-call unbiased variances of the BatchNorm's
    input, for the calls the recomputation makes (full batches in order; codes, then prior noise)."""
    linear = decoder[0]
    generator = torch.Generator().manual_seed(seed)
    means, variances = [], []
    with torch.no_grad():
        for start in range(0, len(images) - batch + 1, batch):
            mu, logvar = encoder.eval()(images[start : start + batch])
            noise = torch.randn(2, batch, LATENT, generator=generator)
            for z in (mu + noise[0] * torch.exp(0.5 * logvar), noise[1]):
                h = linear(z)
                means.append(h.mean(0))
                variances.append(h.var(0, unbiased=True))
    return torch.stack(means).mean(0), torch.stack(variances).mean(0), len(means)


def test_statistics_are_the_average_over_every_call_whatever_they_were() -> None:
    encoder, decoder, images = tiny_networks()
    mean, var, calls = expected_statistics(copy.deepcopy(encoder), decoder, images, batch=4, seed=7)
    assert calls == 4  # 10 images, batch 4: two full batches, two calls each; the last 2 images left out
    norm = decoder[1]
    norm.running_mean.fill_(50.0)  # stale statistics (what the average of the weights' history gives)
    norm.running_var.fill_(1e-4)
    decoder.eval()
    encoder.train()

    assert recompute_decoder_statistics(decoder, encoder, images, batch_size=4, seed=7) == 4

    torch.testing.assert_close(norm.running_mean, mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(norm.running_var, var, rtol=1e-6, atol=1e-6)
    assert int(norm.num_batches_tracked) == 4
    assert norm.momentum == 0.1  # restored after the cumulative average
    assert not decoder.training and encoder.training  # modes as they were
    assert torch.equal(encoder.body[2].running_mean, torch.full((2 * LATENT,), 0.3))  # encoder untouched
    assert torch.equal(encoder.body[2].running_var, torch.full((2 * LATENT,), 2.0))


def test_the_statistics_depend_on_the_seed_and_the_batch_alone() -> None:
    encoder, decoder, images = tiny_networks()
    recompute_decoder_statistics(decoder, encoder, images, batch_size=5, seed=1)
    first = copy.deepcopy(decoder[1].state_dict())
    decoder[1].running_mean.fill_(-3.0)
    recompute_decoder_statistics(decoder, encoder, images, batch_size=5, seed=1)
    assert all(torch.equal(first[k], v) for k, v in decoder[1].state_dict().items())
    recompute_decoder_statistics(decoder, encoder, images, batch_size=5, seed=2)
    assert not torch.equal(first["running_mean"], decoder[1].running_mean)


def test_a_batch_larger_than_the_images_is_one_call_each() -> None:
    encoder, decoder, images = tiny_networks()
    mean, var, calls = expected_statistics(copy.deepcopy(encoder), decoder, images, batch=10, seed=3)
    assert recompute_decoder_statistics(decoder, encoder, images, batch_size=64, seed=3) == calls == 2
    torch.testing.assert_close(decoder[1].running_mean, mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(decoder[1].running_var, var, rtol=1e-6, atol=1e-6)


def test_a_decoder_without_batchnorm_is_left_as_it_is() -> None:
    encoder, _, images = tiny_networks()
    decoder = nn.Linear(LATENT, 5)
    before = copy.deepcopy(decoder.state_dict())
    assert recompute_decoder_statistics(decoder, encoder, images, batch_size=4, seed=0) == 0
    assert all(torch.equal(before[k], v) for k, v in decoder.state_dict().items())


def test_the_trained_moving_average_carries_statistics_of_its_own_weights(
    tmp_path: Path, tiny_config: TinyConfig, mlflow_uri: str
) -> None:
    config = tiny_config(root=tmp_path, model={"preset": "default"}, train={"ema_decay": 0.9})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(config.to_dict()))
    assert main(["train", "--params", str(params)]) == 0

    model = load_model(config.train.model_path)
    layers = batchnorm_layers(model.decoder)
    assert len(layers) == 2  # the default preset's decoder: BatchNorm1d and BatchNorm2d
    images = load_split(config.data.prepared_dir, "train").images[: config.train.limit_train_images]
    x = images_to_device(images, torch.device("cpu"), channels_last=False)
    again = copy.deepcopy(model.decoder)
    calls = recompute_decoder_statistics(again, model.encoder, x, config.train.batch_size, config.train.seed)
    assert calls == 2 * (256 // 32) and all(int(layer.num_batches_tracked) == calls for layer in layers)
    for saved, recomputed in zip(layers, batchnorm_layers(again), strict=True):
        torch.testing.assert_close(saved.running_mean, recomputed.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(saved.running_var, recomputed.running_var, rtol=1e-5, atol=1e-6)
