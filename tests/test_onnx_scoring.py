"""The exported graphs score like the PyTorch model: reconstructions from the encoder graph and
samples through the prior in the generator graph; exports from before the fitted prior (a decoder
that takes codes, a two-output encoder) are still scored correctly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from test_export import _spread_weights, _with_mixture_prior
from vaegan.nn.latent_prior import LatentPrior, fit_mixture
from vaegan.nn.networks import VAEGAN, build_model, model_args_for
from vaegan.nn.onnx_graphs import export_decoder_onnx, export_encoder_onnx
from vaegan.scoring.core import TorchAutoencoder
from vaegan.scoring.onnx_model import OnnxAutoencoder

TOLERANCE = 1e-4


def _model() -> VAEGAN:
    return _with_mixture_prior(_spread_weights(build_model(model_args_for("seed")), seed=5)).eval()


class _CodesToImages(nn.Module):
    """The decoder graph as it was exported before the fitted prior: codes in, images out."""

    def __init__(self, model: VAEGAN) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decoder.decode(z)


def _export_old(
    module: nn.Module, example: torch.Tensor, path: Path, inputs: list[str], outputs: list[str]
) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        input_names=inputs,
        output_names=outputs,
        dynamic_shapes=({0: batch},),
    )
    assert program is not None
    program.save(str(path), external_data=False)


def _assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and float((a - b).abs().max()) < TOLERANCE


def test_onnx_pair_scores_like_the_torch_model(tmp_path: Path) -> None:
    model = _model()
    onnx = OnnxAutoencoder(
        export_encoder_onnx(model, tmp_path / "encoder.onnx"),
        export_decoder_onnx(model, tmp_path / "decoder.onnx"),
    )
    reference = TorchAutoencoder(model, torch.device("cpu"))
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(7, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for got, want in zip(onnx.reconstruct(x), reference.reconstruct(x), strict=True):
            _assert_close(got, want)
        _assert_close(onnx.generate(noise), reference.generate(noise))
        assert float((reference.generate(noise) - reference.generate_standard(noise)).abs().max()) > 0.05


def test_exports_from_before_the_fitted_prior_still_score(tmp_path: Path) -> None:
    model = _model()
    _export_old(model.encoder, torch.rand(2, 1, 28, 28), tmp_path / "encoder.onnx", ["x"], ["mu", "logvar"])
    _export_old(_CodesToImages(model), torch.randn(2, 2), tmp_path / "decoder.onnx", ["z"], ["x"])
    onnx = OnnxAutoencoder(tmp_path / "encoder.onnx", tmp_path / "decoder.onnx")
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mu, logvar = model.encoder(x)
        for got, want in zip(onnx.reconstruct(x), (mu, logvar, model.decoder.decode(mu)), strict=True):
            _assert_close(got, want)
        _assert_close(onnx.generate(noise), model.decoder.decode(noise))  # N(0, I), as they were scored


def test_generator_graph_maps_noise_like_torch_on_many_draws(tmp_path: Path) -> None:
    """Many narrow components make the map steep: ONNX Runtime must agree to float32 rounding on
    every draw (float32 constants in the float64 map once cost 4e-4 on ~7% of draws)."""
    model = _model()
    codes = np.random.default_rng(2).standard_normal((3000, 2)) * [3.0, 0.5]
    model.prior = LatentPrior.from_fit(fit_mixture(codes, 40))
    onnx = OnnxAutoencoder(
        export_encoder_onnx(model, tmp_path / "encoder.onnx"),
        export_decoder_onnx(model, tmp_path / "decoder.onnx"),
    )
    noise = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert float((onnx.generate(noise) - model.generate(noise)).abs().max()) < 1e-5
