"""What a model's bits depend on besides code, params and data, here against the registry's record.

Training records `env.*` (torch, numpy, python, the CPU and the instruction sets that select its
kernels, threads, device, precision, determinism) and registration adds the ONNX libraries that
exported and checked the graphs. Where a field differs on this machine the rebuild can at best be
`equivalent`, and `vaegan reproduce` says so before it trains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx
import onnxruntime as ort

from vaegan.config import Config
from vaegan.nn.devices import select_device, training_environment

ENV_PREFIX = "env."


@dataclass(frozen=True)
class Difference:
    """One `env.*` field whose recorded value differs from this machine's."""

    field: str
    recorded: str
    here: str


@dataclass(frozen=True)
class Prediction:
    """The verdict the environment allows before anything is rebuilt, and why."""

    verdict: str  # "identical" | "equivalent" | "unknown"
    reason: str
    differences: tuple[Difference, ...]


def recorded_environment(tags: Mapping[str, str]) -> dict[str, str]:
    """The `env.*` tags of a registered version, without the prefix."""
    return {key.removeprefix(ENV_PREFIX): value for key, value in tags.items() if key.startswith(ENV_PREFIX)}


def this_environment(config: Config) -> dict[str, str]:
    """This machine's values of the fields training and registration record, for `config`'s device
    and precision."""
    device = select_device(config.train.device)
    return {
        **training_environment(device, config.train.precision),
        "onnx": str(onnx.__version__),
        "onnxruntime": str(ort.__version__),
    }


def predict(recorded: Mapping[str, str], here: Mapping[str, str]) -> Prediction:
    """`identical` when every recorded field is this machine's and the recording run was
    deterministic, `equivalent` (naming the fields) otherwise, `unknown` without a record."""
    if not recorded:
        return Prediction(
            "unknown",
            "the registration records no environment (registered before `env.*` tags existed)",
            (),
        )
    differences = tuple(
        Difference(field, value, here.get(field, "(not here)"))
        for field, value in sorted(recorded.items())
        if here.get(field) != value
    )
    if differences:
        fields = ", ".join(f"{d.field} ({d.recorded} -> {d.here})" for d in differences)
        return Prediction(
            "equivalent",
            f"this machine differs in {fields}: expect `equivalent`, not `identical`",
            differences,
        )
    if recorded.get("deterministic") != "true":
        return Prediction(
            "equivalent",
            f"the model trained on {recorded.get('device', '?')} without deterministic algorithms: "
            "expect `equivalent`, not `identical`",
            (),
        )
    return Prediction("identical", "this machine matches every recorded field: expect `identical`", ())
