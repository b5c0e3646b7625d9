"""The step's fast paths: the whole step as one CUDA graph (`train.cuda_graph`) and `train.compile`.

The CUDA-graph comparison needs a GPU (it runs where one is lent; CI has none); what it refuses,
and the compiled step, are checked on CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.data import real_images
from vaegan.config import Config, build_config
from vaegan.errors import ConfigError
from vaegan.nn.loop import TrainResult, fit_vaegan
from vaegan.nn.networks import model_args_for
from vaegan.nn.training_networks import adam_optimizers, graph_ready_groups, initial_model


def _images(count: int) -> np.ndarray:
    images, _ = real_images("train", count, prepared_dir=Path("no-prepared-data-here"))
    return images


def _config(tmp_path: Path, **train: Any) -> Config:
    settings = {
        "batch_size": 32, "epochs": 2, "log_every": 5, "checkpoint_every": 1000, "resume": "never",
        "checkpoint_dir": str(tmp_path / "checkpoints"), **train,
    }  # fmt: skip
    return build_config({"model": {"preset": "seed"}, "train": settings})


def _train(config: Config, device: str) -> TrainResult:
    images = _images(320)
    return fit_vaegan(config=config, train_images=images, val_images=images[:64], device=torch.device(device))


@pytest.mark.parametrize(
    ("other", "named"),
    [
        ({"compile": True}, "train.compile"),
        ({"equilibrium": True}, "train.equilibrium"),
        ({"augment": "translation"}, "train.augment"),
        ({"compile": True, "augment": "translation_cutout"}, "train.compile, train.augment"),
    ],
)
def test_cuda_graph_refuses_what_a_captured_step_cannot_hold(other: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=f"cannot be combined with {named} "):
        build_config({"train": {"cuda_graph": True, **other}})


def test_cuda_graph_on_a_cpu_run_stops_before_any_step(tmp_path: Path) -> None:
    config = _config(tmp_path, cuda_graph=True, device="cpu")
    with pytest.raises(ConfigError, match="train.cuda_graph: needs a CUDA device; this run trains on cpu"):
        _train(config, "cpu")


def test_adam_is_capturable_with_a_tensor_lr_only_under_cuda_graph_and_resumes_either_way(
    tmp_path: Path,
) -> None:
    """A checkpoint's param groups replace the optimizer's own on load: a run resumed with
    train.cuda_graph switched either way gets the groups this run needs (lr 3e-4 after decay)."""
    device = torch.device("cpu")
    model = initial_model(model_args_for("seed"), 0)
    plain = adam_optimizers(model, _config(tmp_path), device)["encoder"]
    graphed = adam_optimizers(model, _config(tmp_path, cuda_graph=True), device)["discriminator"]
    assert plain.param_groups[0]["lr"] == 3e-4 and plain.param_groups[0]["capturable"] is False
    lr = graphed.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and float(lr) == pytest.approx(3e-4)
    assert graphed.param_groups[0]["capturable"] is True

    plain.load_state_dict(graphed.state_dict())  # a graphed run's checkpoint, resumed without the graph
    graph_ready_groups(plain, False, device)
    assert plain.param_groups[0]["lr"] == pytest.approx(3e-4) and plain.param_groups[0]["capturable"] is False
    assert not isinstance(plain.param_groups[0]["lr"], torch.Tensor)
    graph_ready_groups(plain, True, device)  # and the other way round
    assert isinstance(plain.param_groups[0]["lr"], torch.Tensor) and plain.param_groups[0]["capturable"]


def _weights(result: TrainResult) -> dict[str, torch.Tensor]:
    model = result.model
    return {
        f"{part}.{name}": tensor.detach().float().cpu()
        for part in ("encoder", "decoder", "discriminator")
        for name, tensor in getattr(model, part).state_dict().items()
    }


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[key] - b[key]).abs().max()) for key in a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphed_training_follows_the_eager_training_on_cuda(tmp_path: Path) -> None:
    """fp32, 20 steps over two epochs with an lr decay: the replayed graph trains the model the eager
    step trains, and the decayed lr reached the captured Adam. Neither is bitwise on a GPU: on an
    H100 the two runs ended 3.3e-4 and 7.8e-4 apart (max over weights) after travelling 7.2e-3; a
    graph replaying a stale batch or a frozen lr would end about as far apart as it travelled."""
    settings = {"precision": "fp32", "device": "cuda", "lr_decay": 0.5}
    eager = _train(_config(tmp_path / "eager", **settings), "cuda")
    graphed = _train(_config(tmp_path / "graphed", cuda_graph=True, **settings), "cuda")
    start = _weights(TrainResult(initial_model(model_args_for("seed"), 0), {}, [], {}))
    travelled = _max_difference(start, _weights(eager))
    apart = _max_difference(_weights(eager), _weights(graphed))
    assert apart < 0.25 * travelled
    assert eager.history[-1]["loss_dis"] == pytest.approx(graphed.history[-1]["loss_dis"], rel=2e-2)
    lr = graphed.state["optimizers"]["encoder"]["param_groups"][0]["lr"]
    assert float(lr) == pytest.approx(3e-4 * 0.5**2)


@pytest.mark.slow
def test_compiled_step_trains_like_the_eager_step_on_cpu(tmp_path: Path) -> None:
    """`train.compile` on CPU: the step's retained backward graphs run under AOTAutograd (its
    donated buffers are off) and three steps land next to the eager ones."""
    settings = {"precision": "fp32", "device": "cpu", "max_steps": 3, "epochs": 1}
    eager = _train(_config(tmp_path / "eager", **settings), "cpu")
    compiled = _train(_config(tmp_path / "compiled", compile=True, **settings), "cpu")
    assert _max_difference(_weights(eager), _weights(compiled)) < 1e-3
