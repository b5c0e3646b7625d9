"""Register the exported ONNX pair: check the export files and where they come from, log both graphs
in one MLflow run (onnx flavour, signature, input example), register one version of each model
with the metrics and provenance as tags and the model card as description, and point `challenger`
at both under the registry lock. Re-running with an unchanged export adds nothing.

The registration run also holds `params.yaml`, the training's whole config as the checkpoint
recorded it: with the `git_commit`, `data_sha256`, `code_sha256`, `weights_sha256` and `env.*`
tags it is what `vaegan reproduce` rebuilds the model from and compares against."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import math
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import mlflow.onnx
import numpy as np
import onnx
import onnxruntime as ort
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from vaegan.artifacts.atomic_io import read_json_object
from vaegan.artifacts.checkpoint import load_checkpoint
from vaegan.artifacts.onnx_runtime import create_session
from vaegan.artifacts.provenance import sha256_file
from vaegan.artifacts.weights_digest import weights_sha256
from vaegan.config import Config
from vaegan.dvc_commands import stage_lock_md5
from vaegan.errors import RegistryError
from vaegan.registry.client import (
    CHALLENGER,
    ONNX_FILE,
    ROLES,
    check_alias_pair,
    connect_registry,
    experiment_id,
    mlflow_errors,
)
from vaegan.registry.lock import registry_lock
from vaegan.registry.model_card import model_card
from vaegan.tracking.store import orchestration_tags

log = logging.getLogger(__name__)

# The training config, logged in the registration run (`vaegan reproduce` reads it back).
PARAMS_ARTIFACT = "params.yaml"
EXAMPLE_BATCH = 2
EXAMPLE_SEED = 0
# Largest difference allowed between the stored artifact's and the exported file's outputs.
ROUND_TRIP_TOLERANCE = 1e-6
# What serving a logged graph needs (its requirements.txt); the ONNX Runtime build installed here
# (onnxruntime or onnxruntime-gpu) is the one named.
SERVING_PACKAGES = ("mlflow", "numpy", "onnx")
ONNXRUNTIME_BUILDS = ("onnxruntime-gpu", "onnxruntime")


@dataclass(frozen=True)
class Registration:
    """What `register_models` created: one version of each model, both aliased `challenger`."""

    decoder_version: str
    encoder_version: str
    run_id: str  # the MLflow run that logged both models; also their `pair_id`
    training_run_id: str
    model_uris: dict[str, str]  # role -> models:/<name>/<version>
    tags: dict[str, str] = field(default_factory=dict)  # the tags both versions share

    @property
    def pair_id(self) -> str:
        """The registration's id, the `pair_id` tag both versions carry."""
        return self.run_id


def _read_json(path: str | Path, what: str) -> dict[str, Any]:
    try:
        return read_json_object(path)
    except FileNotFoundError:
        raise RegistryError(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{what} {path} cannot be read: {exc}") from exc


def verified_export_files(export_dir: str | Path, export_metrics: Mapping[str, Any]) -> dict[str, Path]:
    """The exported `.onnx` file of each role, after checking parity passed and every sha256 matches."""
    if export_metrics.get("parity_passed") is not True:
        raise RegistryError(
            "metrics/export.json does not say parity_passed: true; the ONNX export was not verified "
            "against PyTorch, so it is not registered (re-run `vaegan export`)"
        )
    files = {}
    for role in ROLES:
        entry = export_metrics.get(role)
        if not isinstance(entry, dict) or not entry.get("sha256"):
            raise RegistryError(f"export metrics have no {role}.sha256: re-run `vaegan export`")
        path = Path(export_dir) / str(entry.get("file") or f"{role}.onnx")
        if not path.is_file():
            raise RegistryError(f"exported {role} {path} does not exist: run `vaegan export`")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise RegistryError(
                f"{path} has sha256 {actual} but export metrics recorded {entry['sha256']}: "
                "the file changed after export; re-run `vaegan export`"
            )
        files[role] = path
    return files


def _training_checkpoint(config: Config) -> dict[str, Any]:
    model_path = Path(config.train.model_path)
    if not model_path.is_file():
        raise RegistryError(f"training checkpoint {model_path} (train.model_path) does not exist")
    return load_checkpoint(model_path, "vaegan")


def training_provenance(
    config: Config,
    export_metrics: Mapping[str, Any],
    eval_metrics: Mapping[str, Any],
    repo_dir: str | Path,
    payload: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Where the exported models come from: checkpoint and its weights, training run, data, code
    (commit and the training code's sha256), DVC lock, and the environment that made the bits
    (`env.*`: the training's record plus the ONNX libraries that exported and checked the graphs).
    `payload` is the loaded `train.model_path` checkpoint (read from disk when None).

    Refuses when the export or the evaluation was made from another checkpoint than
    `train.model_path`: the tags would then describe a different model.
    """
    model_path = Path(config.train.model_path)
    payload = _training_checkpoint(config) if payload is None else payload
    checkpoint_sha = sha256_file(model_path)
    exported_from = export_metrics.get("checkpoint_sha256")
    if exported_from != checkpoint_sha:
        raise RegistryError(
            f"the ONNX export was made from checkpoint sha256 {exported_from}, but {model_path} has "
            f"sha256 {checkpoint_sha}: re-run `vaegan export`"
        )
    eval_provenance = eval_metrics.get("provenance") or {}
    evaluated = eval_provenance.get("checkpoint_sha256")
    if evaluated is not None and evaluated != checkpoint_sha:
        raise RegistryError(
            f"{config.evaluate.metrics_path} describes checkpoint sha256 {evaluated}, not {model_path} "
            f"({checkpoint_sha}): re-run `vaegan evaluate`"
        )
    state = payload.get("state") or {}
    environment = state.get("environment") or {}  # checkpoints from before it was recorded have none
    lock_path = Path(repo_dir) / "dvc.lock"
    return {
        **{f"env.{key}": str(value) for key, value in environment.items()},
        "env.onnx": str(onnx.__version__),
        "env.onnxruntime": str(ort.__version__),
        "checkpoint_sha256": checkpoint_sha,
        "weights_sha256": weights_sha256(payload),
        "code_sha256": str((state.get("resume_key") or {}).get("code_sha256") or "unknown"),
        "dvc_lock_sha256": sha256_file(lock_path) if lock_path.is_file() else "none",
        "training_run_id": str(state.get("mlflow_run_id") or "none"),
        "data_sha256": str(state.get("data_sha256") or eval_provenance.get("data_sha256") or "unknown"),
        "git_commit": str(state.get("git_commit") or "unknown"),
        "dvc_train_md5": stage_lock_md5("train", repo_dir),
        "evaluator_sha256": str(eval_provenance.get("evaluator_sha256") or "unknown"),
        "objective": str(state.get("objective") or "unknown"),
    }


def _tag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def version_tags(eval_metrics: Mapping[str, Any], provenance: Mapping[str, str]) -> dict[str, str]:
    """The tags both versions of a registration carry: `metric.<name>` for every scalar in
    metrics/eval.json, the provenance, and `parity_passed`."""
    tags = {
        f"metric.{key}": _tag_value(value)
        for key, value in eval_metrics.items()
        if isinstance(value, (bool, int, float, str))
    }
    tags.update(provenance)
    tags["parity_passed"] = "true"
    return tags


def _example_inputs(
    session: ort.InferenceSession, path: Path, latent_dim: int | None
) -> dict[str, np.ndarray]:
    """An input example for the graph of `session` (read from `path`): a batch of 2, seeded."""
    rng = np.random.default_rng(EXAMPLE_SEED)
    inputs = {}
    for graph_input in session.get_inputs():
        dims = [EXAMPLE_BATCH, *graph_input.shape[1:]]
        if not all(isinstance(dim, int) for dim in dims[1:]):
            raise RegistryError(f"{path}: input {graph_input.name} has a non-fixed shape {graph_input.shape}")
        if len(dims) == 2:  # a latent vector (batch, latent_dim)
            if latent_dim is not None and dims[1] != latent_dim:
                raise RegistryError(
                    f"{path}: input {graph_input.name} has {dims[1]} latent dimensions, "
                    f"export metrics say {latent_dim}"
                )
            inputs[graph_input.name] = rng.standard_normal(dims, dtype=np.float32)
        else:  # images in [0, 1]
            inputs[graph_input.name] = rng.random(dims, dtype=np.float32)
    return inputs


def _run_all(session: ort.InferenceSession, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of the graph, by name."""
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(inputs)), strict=True))


def _io_text(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> str:
    def spec(arrays: Mapping[str, np.ndarray]) -> str:
        return ", ".join(f"`{name}` float32 (batch, {', '.join(map(str, a.shape[1:]))})" for name, a in
                         arrays.items())  # fmt: skip

    return f"{spec(inputs)} -> {spec(outputs)}"


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """Silence ONNX Runtime's own log while MLflow test-loads the model with its recorded providers
    (CUDA, then CPU): on a machine without a GPU it prints a CUDA load error before falling back,
    which MLflow already reports as a warning."""
    ort.set_default_logger_severity(4)  # fatal only
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)  # ONNX Runtime's default: warnings and above


def serving_requirements() -> list[str]:
    """The pinned packages a logged graph needs: stated rather than inferred, because MLflow infers
    them by loading the model in a fresh Python process (seconds per graph) and then names both ONNX
    Runtime builds, one of them not installed."""
    runtime = next(name for name in ONNXRUNTIME_BUILDS if _installed(name))
    return [f"{name}=={importlib.metadata.version(name)}" for name in (*SERVING_PACKAGES, runtime)]


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class _LoggedOnnx:
    model_uri: str
    model_id: str | None
    onnx_sha256: str
    io: str


def _log_onnx(client: MlflowClient, role: str, path: Path, latent_dim: int | None, work: Path) -> _LoggedOnnx:
    """Log one graph in the active run, download what MLflow stored, check and hash it."""
    session = create_session(path, "cpu")
    inputs = _example_inputs(session, path, latent_dim)
    outputs = _run_all(session, inputs)
    with _quiet_onnxruntime():
        info = mlflow.onnx.log_model(
            onnx.load(str(path)),
            name=role,
            signature=infer_signature(inputs, outputs),
            input_example=inputs,
            pip_requirements=serving_requirements(),
            save_as_external_data=False,  # one self-contained model.onnx: one file, one sha256
        )
    location = client.get_logged_model(info.model_id).artifact_location if info.model_id else None
    if not location:
        raise RegistryError(f"MLflow did not report where the logged {role} model is stored")
    stored = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location.rstrip('/')}/{ONNX_FILE}", dst_path=str(work / role)
        )
    )
    round_trip = _run_all(create_session(stored, "cpu"), inputs)
    for name, expected in outputs.items():
        error = float(np.max(np.abs(round_trip[name] - expected)))
        if not error <= ROUND_TRIP_TOLERANCE:
            raise RegistryError(
                f"the {role} MLflow stored gives output {name} {error:.3g} away from {path}'s; not registered"
            )
    return _LoggedOnnx(info.model_uri, info.model_id, sha256_file(stored), _io_text(inputs, outputs))


def _ensure_registered_model(client: MlflowClient, name: str, role: str) -> None:
    try:
        client.create_registered_model(
            name,
            description=f"VAE-GAN {role} as ONNX, registered by `vaegan register`; "
            "aliases `champion` (served) and `challenger` (latest registration).",
        )
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def register_models(*, config: Config, repo_dir: str | Path = ".") -> Registration:
    """Log and register the exported decoder and encoder; point `challenger` at the new versions.

    Reads `<export.dir>/{decoder,encoder}.onnx`, `export.metrics_path`, `evaluate.metrics_path`,
    the checkpoint `train.model_path` and `<repo_dir>/dvc.lock`. Refuses (RegistryError) when the
    export's parity check failed or a file differs from the sha256 the export recorded.
    """
    export_metrics = _read_json(config.export.metrics_path, "export metrics")
    eval_metrics = _read_json(config.evaluate.metrics_path, "evaluation metrics")
    files = verified_export_files(config.export.dir, export_metrics)
    payload = _training_checkpoint(config)
    provenance = {
        **training_provenance(config, export_metrics, eval_metrics, repo_dir, payload),
        **orchestration_tags(),
    }
    shared_tags = version_tags(eval_metrics, provenance)
    names = {"decoder": config.registry.decoder_name, "encoder": config.registry.encoder_name}
    client, uri = connect_registry(config.tracking)
    # Held from the look-up to the alias move: two runs that exported the same model (a repeat on
    # another worker) register it once, the second finds the first's versions.
    with registry_lock(uri):
        with mlflow_errors("look up earlier registrations"):
            existing = _existing_registration(client, names, shared_tags, export_metrics)
        if existing is not None:
            log.info(
                "this export (checkpoint %s) is already registered as %s: nothing to register",
                provenance["checkpoint_sha256"][:12], ", ".join(existing.model_uris.values()),
            )  # fmt: skip
            return existing
        return _register_new(client, config, files, export_metrics, eval_metrics, payload, provenance)


def _register_new(
    client: MlflowClient,
    config: Config,
    files: Mapping[str, Path],
    export_metrics: Mapping[str, Any],
    eval_metrics: Mapping[str, Any],
    payload: Mapping[str, Any],
    provenance: Mapping[str, str],
) -> Registration:
    """Log both ONNX models in a new `register` run, create their versions and point `challenger`
    at them (the caller holds the registry lock)."""
    registry = config.registry
    names = {"decoder": registry.decoder_name, "encoder": registry.encoder_name}
    latent_dim = export_metrics.get("latent_dim")
    shared_tags = version_tags(eval_metrics, provenance)
    with mlflow_errors("register"), tempfile.TemporaryDirectory(prefix="vaegan-register-") as work:
        run_experiment = experiment_id(client, config.tracking)
        run_tags = {"vaegan.stage": "register", **provenance}
        with mlflow.start_run(experiment_id=run_experiment, run_name="register", tags=run_tags) as run:
            pair_id = run.info.run_id
            shared_tags["pair_id"] = pair_id
            numeric = {
                f"eval/{key}": float(value)
                for key, value in eval_metrics.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            }
            mlflow.log_metrics(numeric)
            mlflow.log_text(yaml.safe_dump(payload["config"], sort_keys=False), PARAMS_ARTIFACT)
            logged = {
                role: _log_onnx(
                    client, role, files[role], latent_dim if role == "decoder" else None, Path(work)
                )
                for role in ROLES
            }
            versions = {}
            for role in ROLES:
                _ensure_registered_model(client, names[role], role)
                tags = {
                    **shared_tags,
                    "role": role,
                    "onnx_sha256": logged[role].onnx_sha256,
                    "export_sha256": str(export_metrics[role]["sha256"]),
                }
                version = client.create_model_version(
                    names[role],
                    source=logged[role].model_uri,
                    run_id=pair_id,
                    tags=tags,
                    description=model_card(role, logged[role].io, tags),
                    model_id=logged[role].model_id,
                )
                versions[role] = str(version.version)
            for role in ROLES:
                client.set_registered_model_alias(names[role], CHALLENGER, versions[role])
            check_alias_pair(client, registry, CHALLENGER, pair_id)
            mlflow.set_tags({f"registry.{role}_version": versions[role] for role in ROLES})
    registration = Registration(
        decoder_version=versions["decoder"],
        encoder_version=versions["encoder"],
        run_id=pair_id,
        training_run_id=provenance["training_run_id"],
        model_uris={role: f"models:/{names[role]}/{versions[role]}" for role in ROLES},
        tags=shared_tags,
    )
    log.info(
        "registered %s v%s and %s v%s as %s (pair %s, fid %s)",
        names["decoder"], versions["decoder"], names["encoder"], versions["encoder"], CHALLENGER,
        pair_id, shared_tags.get("metric.fid"),
    )  # fmt: skip
    return registration


def _existing_registration(
    client: MlflowClient,
    names: Mapping[str, str],
    shared_tags: Mapping[str, str],
    export_metrics: Mapping[str, Any],
) -> Registration | None:
    """The registration of this model (same ONNX files, weights, training code, data and
    evaluation), if any.

    Re-running the pipeline with nothing changed must not add versions: DVC skipped every stage,
    so the registry keeps the versions it already has. Nor must a repeat elsewhere: the same params,
    data and code trained again on another worker give the same weights (the checkpoint file differs
    only in its record of the training run), so the repeat finds the first run's versions.
    """
    same = [key for key in shared_tags if key.startswith("metric.")]
    same += ["weights_sha256", "code_sha256", "data_sha256"]  # the same model from the same code and data

    def matches(tags: Mapping[str, str], role: str) -> bool:
        return tags.get("export_sha256") == str(export_metrics[role]["sha256"]) and all(
            tags.get(key) == shared_tags[key] for key in same
        )

    decoders = [
        v for v in client.search_model_versions(f"name = '{names['decoder']}'") if matches(v.tags, "decoder")
    ]
    if not decoders:
        return None
    encoders = {
        v.tags.get("pair_id"): v
        for v in client.search_model_versions(f"name = '{names['encoder']}'")
        if matches(v.tags, "encoder")
    }
    for decoder in sorted(decoders, key=lambda v: int(v.version)):
        pair_id = decoder.tags.get("pair_id")
        encoder = encoders.get(pair_id)
        if pair_id and encoder is not None:
            return Registration(
                decoder_version=str(decoder.version),
                encoder_version=str(encoder.version),
                run_id=str(pair_id),
                training_run_id=str(decoder.tags.get("training_run_id", "none")),
                model_uris={
                    "decoder": f"models:/{names['decoder']}/{decoder.version}",
                    "encoder": f"models:/{names['encoder']}/{encoder.version}",
                },
                tags=dict(decoder.tags),
            )
    return None
