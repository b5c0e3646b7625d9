"""One typed config object, built from params.yaml plus `--set key.sub=value` overrides.

Every section is a frozen dataclass. Types come from the annotations, allowed values from
`Literal[...]` and ranges from field metadata (`ge`, `gt`, `le`, `lt`). Any unknown key, wrong type
or out-of-range value raises `ConfigError` naming the key, before any work is done.

The field metadata also says what a param is to the code that must follow the config: `resume=False`
marks a key left out of a training checkpoint's resume key (`resume_ignored`, `vaegan.nn.resume`),
`output=True` a path the pipeline writes (`output_params`, which `vaegan reproduce` keeps inside
its worktree). A new param is in the resume key and not an output unless its field says otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from vaegan.errors import ConfigError

Dataset = Literal["mnist", "fashion-mnist"]


def param(default: Any, *, resume: bool = True, output: bool = False, **bounds: float) -> Any:
    """A dataclass field with a default and, in its metadata, numeric bounds (ge, gt, le, lt),
    whether it is part of the resume key (`resume`) and whether it names a path the pipeline writes
    (`output`)."""
    return field(default=default, metadata={"bounds": bounds, "resume": resume, "output": output})


@dataclass(frozen=True)
class DataConfig:
    dataset: Dataset = "mnist"
    # auto | download | sample | a directory holding the four IDX files
    source: str = "auto"
    # Mirror base URLs tried in order; empty means torchvision's list for the dataset.
    mirrors: tuple[str, ...] = ()
    download_timeout_s: float = param(120.0, gt=0)
    raw_dir: str = param("data/raw", output=True)
    prepared_dir: str = param("data/prepared", output=True)
    # > 0: training validates on the held-out split at the end of every epoch.
    val_fraction: float = param(0.1, gt=0.0, lt=1.0)
    seed: int = param(0, ge=0)


@dataclass(frozen=True)
class ModelConfig:
    preset: Literal["default", "seed"] = "default"
    # None keeps the preset's latent size.
    latent_dim: int | None = param(None, ge=1, le=1024)
    # Spectral normalisation of the discriminator's layers (and no BatchNorm in it).
    spectral_norm: bool = False
    # Residual blocks at each of the decoder's resolutions (7x7 and 14x14); 0 = the preset's decoder.
    decoder_blocks: int = param(0, ge=0, le=8)
    # The same in the discriminator's trunk (14x14 and 7x7, before Dis_l); 0 = the preset's.
    discriminator_blocks: int = param(0, ge=0, le=8)


@dataclass(frozen=True)
class EvaluatorConfig:
    epochs: int = param(5, ge=1)
    batch_size: int = param(128, ge=1)
    # Peak learning rate (Adam; linear warm-up then cosine decay).
    lr: float = param(5e-3, gt=0)
    # Random translation of training images by up to this many pixels (augmentation).
    max_shift: int = param(2, ge=0, le=8)
    seed: int = param(0, ge=0)
    path: str = param("models/evaluator.pt", output=True)
    metrics_path: str = param("metrics/evaluator.json", output=True)


@dataclass(frozen=True)
class TrainConfig:
    objective: Literal["vaegan", "vae"] = "vaegan"
    recon_loss: Literal["feature", "pixel", "both"] = "both"
    pixel_loss: Literal["bce", "mse"] = "bce"
    # Weight of the feature-space reconstruction term in the decoder loss (Larsen et al.'s gamma).
    gamma: float = param(1e-2, ge=0)
    # Weight of L_llike in the encoder loss (the paper's is 1; 0.03 keeps the posterior near the prior).
    encoder_llike_weight: float = param(0.03, ge=0)
    # Weight of the generator's L_GAN in the decoder loss (the paper's is 1; see docs/training.md).
    gan_weight: float = param(10.0, ge=0)
    # Weight of the KL term (1.0 is the ELBO).
    beta: float = param(1.0, ge=0)
    # Also use reconstructions as fakes for the discriminator, as in the paper.
    gan_on_recon: bool = True
    # Equilibrium gating of D and G updates from the authors' code.
    equilibrium: bool = False
    equilibrium_target: float = param(0.68, gt=0)
    equilibrium_margin: float = param(0.35, ge=0)
    # Differentiable augmentation of every image the discriminator sees (vaegan.nn.augment).
    augment: Literal["none", "translation", "translation_cutout"] = "none"
    # How D sees a step's images: `split`, the real images in a call of their own without input
    # gradients (the encoder's and decoder's backward passes skip them; real and fake images are
    # separate BatchNorm batches); `fused`, one call on real, reconstructed and generated images
    # together (one BatchNorm batch, fewer and larger kernels).
    d_pass: Literal["split", "fused"] = "split"
    # Not in the resume key: a longer budget continues the same trajectory (the lr schedule is per epoch).
    epochs: int = param(9, ge=1, resume=False)
    # 0 means run all epochs; otherwise stop after this many optimizer steps.
    max_steps: int = param(0, ge=0, resume=False)
    # Per process; at least 2: BatchNorm cannot normalise a batch of one image.
    batch_size: int = param(64, ge=2)
    lr: float = param(3e-4, gt=0)
    lr_discriminator: float = param(3e-4, gt=0)
    beta1: float = param(0.5, ge=0, lt=1)
    beta2: float = param(0.999, ge=0, lt=1)
    # Exponential decay of all learning rates per epoch.
    lr_decay: float = param(1.0, gt=0, le=1)
    # Exponential moving average of the decoder's weights, per step; the final model's decoder is the
    # average, its BatchNorm statistics recomputed for its weights at the end. 0 = off.
    ema_decay: float = param(0.0, ge=0, lt=1)
    seed: int = param(0, ge=0)
    # Not in the resume key: resuming on another device continues training, but not bit for bit.
    device: Literal["auto", "cpu", "cuda", "mps"] = param("auto", resume=False)
    # bf16 autocast where the device has native bf16 (CUDA, AVX512-BF16/AMX CPUs); auto = bf16 there.
    precision: Literal["fp32", "bf16", "auto"] = "auto"
    compile: bool = param(False, resume=False)
    # CUDA only: capture the whole training step (forward, backward passes, Adam) as one CUDA graph
    # and replay it every step (vaegan.nn.cuda_graph); one process, without compile/augment/equilibrium.
    # Not in the resume key: the same step, launched as one replayed graph.
    cuda_graph: bool = param(False, resume=False)
    channels_last: bool = param(True, resume=False)
    checkpoint_every: int = param(200, ge=1, resume=False)
    # auto: resume checkpoint_dir/last.pt when its params match; never: always start fresh.
    resume: Literal["auto", "never"] = param("auto", resume=False)
    log_every: int = param(50, ge=1, resume=False)
    # 0 means the whole training split.
    limit_train_images: int = param(0, ge=0)
    checkpoint_dir: str = param("models/checkpoints", resume=False, output=True)
    model_path: str = param("models/vaegan.pt", resume=False, output=True)
    metrics_path: str = param("metrics/train.json", resume=False, output=True)
    # The latent prior generation draws from, fitted to the encoder means after training:
    # standard = N(0, I); gaussian = one full-covariance Gaussian; mixture = prior_components of them.
    # Not in the resume key: fitted after training, from the final weights.
    prior: Literal["standard", "gaussian", "mixture"] = param("mixture", resume=False)
    prior_components: int = param(400, ge=1, resume=False)
    # Added to each component's covariance diagonal: a floor that keeps a component fitted to few
    # codes from collapsing onto them (1e-4 to 1e-2 measured in docs/training.md).
    prior_covariance_floor: float = param(0.01, gt=0, le=1.0, resume=False)
    # Per-epoch loss curves (a DVC plot).
    history_path: str = param("metrics/train_history.csv", resume=False, output=True)


@dataclass(frozen=True)
class EvaluateConfig:
    num_samples: int = param(10000, ge=2)
    # > 0: score on the first N test images (and the floor on the first N training images) instead
    # of the whole splits: a smoke run's setting; FIDs of different N are not comparable.
    limit_test_images: int = param(0, ge=0)
    seed: int = param(0, ge=0)
    batch_size: int = param(100, ge=1)
    feature_extractor: Literal["lenet", "inception"] = "lenet"
    # pytorch-fid's FID Inception weights (pt_inception-2015-12-05-*.pth), a local file.
    inception_weights: str | None = None
    precision_recall_k: int = param(3, ge=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # The model to evaluate; None means train.model_path.
    checkpoint: str | None = None
    metrics_path: str = param("metrics/eval.json", output=True)
    report_dir: str = param("reports/eval", output=True)
    # Metrics of the `vae` baseline to show beside this model in the report (a metrics JSON).
    baseline_metrics: str | None = param("metrics/baseline/eval.json", output=True)


@dataclass(frozen=True)
class ExportConfig:
    opset: int = param(18, ge=18)
    dir: str = param("models/onnx", output=True)
    parity_tolerance: float = param(1e-4, gt=0)
    parity_batch_sizes: tuple[int, ...] = (1, 7, 256)
    metrics_path: str = param("metrics/export.json", output=True)


@dataclass(frozen=True)
class RegistryConfig:
    decoder_name: str = "vaegan-decoder"
    encoder_name: str = "vaegan-encoder"
    # Relative FID improvement a challenger needs over the champion.
    min_improvement: float = param(0.02, ge=0, lt=1)
    max_fid: float = param(800.0, gt=0)
    min_evaluator_accuracy: float = param(0.95, ge=0, le=1)
    # Relative FID degradation that fails the champion check (`vaegan check-champion`).
    max_fid_drift: float = param(0.25, ge=0)


@dataclass(frozen=True)
class TrackingConfig:
    # MLflow tracking URI; the MLFLOW_TRACKING_URI environment variable wins when set.
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "vaegan"
    # Where a new experiment stores its artifacts (local stores only).
    artifact_location: str = "mlartifacts"


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), as it would appear in params.yaml."""
        return _plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """`section.key -> value`, for logging params to MLflow."""
        return {
            f"{section}.{key}": value
            for section, values in self.to_dict().items()
            for key, value in values.items()
        }


def resume_ignored(section: type = TrainConfig) -> frozenset[str]:
    """The keys of a config section whose field says `resume=False`: a checkpoint and the run
    resuming it may differ in them."""
    return frozenset(f.name for f in dataclasses.fields(section) if not f.metadata.get("resume", True))


def output_params(config: type = Config) -> tuple[str, ...]:
    """`section.key` of every param whose field says `output=True` (a path the pipeline writes), in
    the config's order."""
    sections = typing.get_type_hints(config)
    return tuple(
        f"{section.name}.{key.name}"
        for section in dataclasses.fields(config)
        for key in dataclasses.fields(sections[section.name])
        if key.metadata.get("output", False)
    )


def check_seed(seed: int) -> None:
    """ConfigError unless `seed` (a `--seed` of sampling) can seed numpy's generator: an integer >= 0."""
    if seed < 0:
        raise ConfigError(f"--seed: {seed} is negative; a seed is an integer >= 0")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {key: _plain(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(value) for value in obj]
    return obj


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(arg) for arg in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against type `tp`; return it (ints widened to float where a float is wanted)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {_type_name(tp)}")
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type, _ellipsis) = typing.get_args(tp)
        return tuple(_coerce(f"{key}[{i}]", item, item_type) for i, item in enumerate(value))
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            number = float(value)  # YAML 1.1 reads `1e-4` (no dot) as a string
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str) and value:
            return value
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug in this module


_BOUNDS = {
    "ge": (lambda v, b: v >= b, ">="),
    "gt": (lambda v, b: v > b, ">"),
    "le": (lambda v, b: v <= b, "<="),
    "lt": (lambda v, b: v < b, "<"),
}


def _check_bounds(key: str, value: Any, bounds: typing.Mapping[str, float]) -> None:
    if value is None:
        return
    for name, bound in bounds.items():
        test, symbol = _BOUNDS[name]
        if not test(value, bound):
            raise ConfigError(f"{key}: {value!r} is out of range (must be {symbol} {bound})")


def _build_section(name: str, cls: type, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{name}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        full = f"{name}.{key}"
        if key not in known:
            raise ConfigError(f"{full}: unknown key (known: {', '.join(sorted(known))})")
        kwargs[key] = _coerce(full, value, hints[key])
        _check_bounds(full, kwargs[key], known[key].metadata.get("bounds", {}))
    return cls(**kwargs)


def build_config(raw: Any) -> Config:
    """Validate a nested dict (as parsed from params.yaml) and build the typed `Config`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params: expected a mapping of sections, got {type(raw).__name__}")
    hints = typing.get_type_hints(Config)
    sections = {f.name for f in dataclasses.fields(Config)}
    kwargs = {}
    for name, values in raw.items():
        if name not in sections:
            raise ConfigError(f"{name}: unknown section (known: {', '.join(sorted(sections))})")
        kwargs[name] = _build_section(name, hints[name], values if values is not None else {})
    config = Config(**kwargs)
    _check_cross_field(config)
    return config


def _check_cross_field(config: Config) -> None:
    train, evaluate = config.train, config.evaluate
    if train.cuda_graph:
        clashes = {"train.compile": train.compile, "train.equilibrium": train.equilibrium}
        clashes["train.augment"] = train.augment != "none"
        named = [key for key, on in clashes.items() if on]
        if named:
            raise ConfigError(
                f"train.cuda_graph: cannot be combined with {', '.join(named)} (the captured step "
                "has no host syncs, no compiled modules and no augmentation); turn one of them off"
            )
    if evaluate.precision_recall_k >= evaluate.num_samples:
        raise ConfigError(
            f"evaluate.precision_recall_k: {evaluate.precision_recall_k} must be smaller than "
            f"evaluate.num_samples ({evaluate.num_samples}): each sample needs k other samples as neighbours"
        )
    if 0 < evaluate.limit_test_images <= evaluate.precision_recall_k:
        raise ConfigError(
            f"evaluate.limit_test_images: {evaluate.limit_test_images} must be 0 (every test image) or "
            f"larger than evaluate.precision_recall_k ({evaluate.precision_recall_k}): each test image "
            "needs k neighbours"
        )
    if config.evaluate.feature_extractor == "inception" and not config.evaluate.inception_weights:
        raise ConfigError(
            "evaluate.inception_weights: required when evaluate.feature_extractor is 'inception'"
        )


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping names the same key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKeyError(f"duplicate key {key!r} on line {key_node.start_mark.line + 1}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `key.sub=value` into its key path and YAML-parsed value."""
    key, sep, value = text.partition("=")
    path = key.strip().split(".")
    if not sep or len(path) != 2 or not all(path):
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. train.lr=0.001")
    try:
        parsed = _load_yaml(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from exc
    return path, parsed


def read_params(path: str | Path) -> dict[str, Any]:
    """Parse a params YAML file; a missing or malformed file is a `ConfigError`."""
    params_path = Path(path)
    try:
        text = params_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"params file {params_path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"params file {params_path} is not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"params file {params_path} cannot be read: {exc}") from exc
    try:
        raw = _load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {params_path} is not valid YAML: {exc}") from exc
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"params file {params_path}: expected a mapping of sections")
    return raw or {}


def load_config(path: str | Path | None = "params.yaml", overrides: list[str] | None = None) -> Config:
    """Read params (a missing default `params.yaml` means all defaults), apply overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None and (Path(path).exists() or str(path) != "params.yaml"):
        raw = read_params(path)
    for text in overrides or []:
        (section, key), value = parse_override(text)
        section_values = raw.setdefault(section, {})
        if section_values is None:
            section_values = raw[section] = {}
        if not isinstance(section_values, dict):
            raise ConfigError(f"{section}: expected a mapping of keys, got {section_values!r}")
        section_values[key] = value
    return build_config(raw)
