"""The MLflow model registry: register the exported ONNX pair, promote it through the gate, and load
registered models back only when their bytes are the ones registered.

- `register_models`: logs `decoder.onnx` and `encoder.onnx` (onnx flavour, signature, input
  example) in one MLflow run, registers one version of each registered model with the metrics and
  provenance as tags and a model card as description, and points `challenger` at both.
- `promote_challenger`: runs the gate (`vaegan.promotion_gate`) on the challenger against the
  champion and moves `champion` on both models together, under the registry lock
  (`vaegan.registry_lock`); records the decision on the versions and in an MLflow run.
- `load_verified_onnx` / `champion_pair`: download a registered model and refuse it unless the
  sha256 of its `model.onnx` equals the `onnx_sha256` tag written at registration.

docs/registry.md describes the layout, the tags, the gate and the lock.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vaegan.artifacts.provenance import sha256_file
from vaegan.errors import RegistryError
from vaegan.promotion_gate import Candidate, GateDecision, decide_promotion
from vaegan.registry_lock import registry_lock
from vaegan.tracking.store import connect, ensure_experiment, tracking_uri

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

    from vaegan.config import Config, RegistryConfig, TrackingConfig

log = logging.getLogger(__name__)

ROLES = ("decoder", "encoder")
CHALLENGER = "challenger"
CHAMPION = "champion"
ONNX_FILE = "model.onnx"  # the onnx flavour's data file inside a logged model
EXAMPLE_BATCH = 2
EXAMPLE_SEED = 0
# Largest difference allowed between the stored artifact's and the exported file's outputs.
ROUND_TRIP_TOLERANCE = 1e-6


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
        return self.run_id


@dataclass(frozen=True)
class PromotionDecision:
    """The gate's verdict on a challenger and what `promote_challenger` did with it."""

    promoted: bool
    reasons: list[str]
    challenger: dict[str, str]  # role -> version
    previous_champion: dict[str, str] | None  # role -> version; None when there was none
    metrics: dict[str, float | None]  # the numbers the gate compared
    pair_id: str | None
    dry_run: bool = False
    record_run_id: str | None = None  # the MLflow run that records the decision

    def summary(self) -> str:
        """The decision and its reasons, as `vaegan promote` prints them."""
        versions = f"decoder v{self.challenger['decoder']}, encoder v{self.challenger['encoder']}"
        if self.promoted:
            verdict = f"would promote {versions}" if self.dry_run else f"promoted {versions} to champion"
        else:
            verdict = f"{versions} not promoted"
        before = (
            f"decoder v{self.previous_champion['decoder']}, encoder v{self.previous_champion['encoder']}"
            if self.previous_champion
            else "none"
        )
        prefix = "dry run, nothing changed: " if self.dry_run else ""
        lines = [
            f"{prefix}{verdict} (previous champion: {before})",
            *(f"  {reason}" for reason in self.reasons),
        ]
        if self.record_run_id:
            lines.append(f"  recorded in MLflow run {self.record_run_id}")
        return "\n".join(lines)


@dataclass(frozen=True)
class VerifiedModel:
    """A registered ONNX model downloaded to `path` whose sha256 equals its `onnx_sha256` tag."""

    path: Path
    name: str
    version: str
    tags: dict[str, str]
    run_id: str | None
    sha256: str
    uri: str


# ---------------------------------------------------------------------------------------------
# Errors and clients


@contextlib.contextmanager
def _mlflow_errors(action: str) -> Iterator[None]:
    """Turn MLflow's exceptions into a RegistryError naming what was being done."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RegistryError(f"{action}: MLflow refused: {first}") from exc


def _connect(tracking: TrackingConfig, uri: str | None = None) -> tuple[MlflowClient, str]:
    """A checked client and the URI in effect; an explicit `uri` beats MLFLOW_TRACKING_URI and params."""
    uri = uri or tracking_uri(tracking)
    return connect(tracking, uri), uri


def _is_missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def _alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version of registered model `name` that `alias` points at; None when either is absent."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise
    version = model.aliases.get(alias)
    return None if version is None else client.get_model_version(name, str(version))


# ---------------------------------------------------------------------------------------------
# Register


def _read_json(path: str | Path, what: str) -> dict[str, Any]:
    json_path = Path(path)
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"{what} {json_path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{what} {json_path} cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise RegistryError(f"{what} {json_path}: expected a JSON object")
    return data


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


def training_provenance(
    config: Config, export_metrics: Mapping[str, Any], eval_metrics: Mapping[str, Any], repo_dir: str | Path
) -> dict[str, str]:
    """Where the exported models come from: checkpoint, training run, data, code, DVC lock.

    Refuses when the export or the evaluation was made from another checkpoint than
    `train.model_path`: the tags would then describe a different model.
    """
    from vaegan.artifacts.checkpoint import load_checkpoint
    from vaegan.flows.dvc_stages import stage_lock_md5

    model_path = Path(config.train.model_path)
    if not model_path.is_file():
        raise RegistryError(f"training checkpoint {model_path} (train.model_path) does not exist")
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
    state = load_checkpoint(model_path, "vaegan").get("state") or {}
    return {
        "checkpoint_sha256": checkpoint_sha,
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


def _metric_line(label: str, tags: Mapping[str, str], *keys: str, digits: int = 4) -> str | None:
    values = [tags.get(f"metric.{key}") for key in keys]
    if values[0] is None:
        return None
    shown = []
    for value in values:
        number = None if value is None else _float(value)
        shown.append("n/a" if number is None else f"{number:.{digits}g}")
    return f"| {label} | {' / '.join(shown)} |"


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def model_card(role: str, io: str, tags: Mapping[str, str]) -> str:
    """The version's description (Markdown): what it is, its metrics and where it comes from."""
    purpose = {
        "decoder": "Generates 28x28 grey-scale digits from noise z ~ N(0, I), mapped through the "
        "model's latent prior (N(0, I) or the one fitted to the encoder means) inside the graph.",
        "encoder": "Maps 28x28 grey-scale digits to the mean and log-variance of q(z|x), and to the "
        "reconstruction decoded from that mean.",
    }[role]
    rows = [
        _metric_line("FID (prior samples) / recon / floor", tags, "fid", "fid_recon", "fid_floor"),
        _metric_line("precision / recall", tags, "precision", "recall"),
        _metric_line("PSNR dB / SSIM (reconstructions)", tags, "psnr", "ssim"),
        _metric_line("recon MSE / BCE", tags, "recon_mse", "recon_bce"),
        _metric_line("KL to the prior", tags, "kl"),
        _metric_line("evaluator test accuracy", tags, "evaluator_test_accuracy"),
        _metric_line("label consistency / sample class entropy", tags, "label_consistency",
                     "sample_class_entropy"),
    ]  # fmt: skip
    table = "\n".join(row for row in rows if row is not None)
    setting = (
        f"{tags.get('metric.num_samples', '?')} prior samples, "
        f"{tags.get('metric.feature_extractor', '?')} features, seed {tags.get('metric.seed', '?')}"
    )
    other = "encoder" if role == "decoder" else "decoder"
    return f"""# VAE-GAN {role} (Larsen et al. 2016), ONNX

{purpose} Runs with ONNX Runtime alone.

Graph: {io}. Trained with objective `{tags.get("objective", "?")}`.

## Evaluation ({setting})

| metric | value |
|---|---|
{table}

FID here uses the project's own feature extractor; compare it only with FIDs of the same setting.

## Provenance

- registration (pair_id, shared with the {other} of the same registration): {tags.get("pair_id")}
- training MLflow run: {tags.get("training_run_id")}
- git commit: {tags.get("git_commit")}
- data sha256: {tags.get("data_sha256")}
- checkpoint sha256: {tags.get("checkpoint_sha256")}
- DVC train stage md5: {tags.get("dvc_train_md5")}
- ONNX Runtime parity with PyTorch passed: {tags.get("parity_passed")}

## Limits

Trained on MNIST-like 28x28 digits only; not for other image domains.
"""


def _example_io(path: Path, latent_dim: int | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """An input example for graph `path` (batch of 2, seeded) and its ONNX Runtime outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
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
    names = [output.name for output in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, inputs), strict=True))
    return inputs, outputs


def _io_text(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> str:
    def spec(arrays: Mapping[str, np.ndarray]) -> str:
        return ", ".join(f"`{name}` float32 (batch, {', '.join(map(str, a.shape[1:]))})" for name, a in
                         arrays.items())  # fmt: skip

    return f"{spec(inputs)} -> {spec(outputs)}"


def _run_onnx(path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(inputs)), strict=True))


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """Silence ONNX Runtime's own log while MLflow test-loads the model with its recorded providers
    (CUDA, then CPU): on a machine without a GPU it prints a CUDA load error before falling back,
    which MLflow already reports as a warning."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # fatal only
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)  # ONNX Runtime's default: warnings and above


@dataclass(frozen=True)
class _LoggedOnnx:
    model_uri: str
    model_id: str | None
    onnx_sha256: str
    io: str


def _log_onnx(client: MlflowClient, role: str, path: Path, latent_dim: int | None, work: Path) -> _LoggedOnnx:
    """Log one graph in the active run, download what MLflow stored, check and hash it."""
    import mlflow
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    inputs, outputs = _example_io(path, latent_dim)
    with _quiet_onnxruntime():
        info = mlflow.onnx.log_model(
            onnx.load(str(path)),
            name=role,
            signature=infer_signature(inputs, outputs),
            input_example=inputs,
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
    round_trip = _run_onnx(stored, inputs)
    for name, expected in outputs.items():
        error = float(np.max(np.abs(round_trip[name] - expected)))
        if not error <= ROUND_TRIP_TOLERANCE:
            raise RegistryError(
                f"the {role} MLflow stored gives output {name} {error:.3g} away from {path}'s; not registered"
            )
    return _LoggedOnnx(info.model_uri, info.model_id, sha256_file(stored), _io_text(inputs, outputs))


def _ensure_registered_model(client: MlflowClient, name: str, role: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name,
            description=f"VAE-GAN {role} as ONNX, registered by `vaegan register`; "
            "aliases `champion` (served) and `challenger` (latest registration).",
        )
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def _experiment_id(client: MlflowClient, tracking: TrackingConfig, name: str | None = None) -> str:
    """ensure_experiment, tolerating a concurrent process that created it first."""
    from mlflow.exceptions import MlflowException

    try:
        return ensure_experiment(client, tracking, name)
    except MlflowException:
        experiment = client.get_experiment_by_name(name or tracking.experiment)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def register_models(*, config: Config, repo_dir: str | Path = ".") -> Registration:
    """Log and register the exported decoder and encoder; point `challenger` at the new versions.

    Reads `<export.dir>/{decoder,encoder}.onnx`, `export.metrics_path`, `evaluate.metrics_path`,
    the checkpoint `train.model_path` and `<repo_dir>/dvc.lock`. Refuses (RegistryError) when the
    export's parity check failed or a file differs from the sha256 the export recorded.
    """
    import mlflow

    export_metrics = _read_json(config.export.metrics_path, "export metrics")
    eval_metrics = _read_json(config.evaluate.metrics_path, "evaluation metrics")
    files = verified_export_files(config.export.dir, export_metrics)
    provenance = training_provenance(config, export_metrics, eval_metrics, repo_dir)
    shared_tags = version_tags(eval_metrics, provenance)
    latent_dim = export_metrics.get("latent_dim")
    registry = config.registry
    names = {"decoder": registry.decoder_name, "encoder": registry.encoder_name}
    client, uri = _connect(config.tracking)
    with _mlflow_errors("look up earlier registrations"):
        existing = _existing_registration(client, names, shared_tags, export_metrics)
    if existing is not None:
        log.info(
            "this export (checkpoint %s) is already registered as %s: nothing to register",
            provenance["checkpoint_sha256"][:12], ", ".join(existing.model_uris.values()),
        )  # fmt: skip
        return existing
    with _mlflow_errors("register"), tempfile.TemporaryDirectory(prefix="vaegan-register-") as work:
        experiment_id = _experiment_id(client, config.tracking)
        run_tags = {"vaegan.stage": "register", **provenance}
        with mlflow.start_run(experiment_id=experiment_id, run_name="register", tags=run_tags) as run:
            pair_id = run.info.run_id
            shared_tags["pair_id"] = pair_id
            numeric = {
                f"eval/{key}": float(value)
                for key, value in eval_metrics.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            }
            mlflow.log_metrics(numeric)
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
            with registry_lock(uri):
                for role in ROLES:
                    client.set_registered_model_alias(names[role], CHALLENGER, versions[role])
                _check_pair(client, registry, CHALLENGER, pair_id)
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
    """The registration of this very export (same ONNX files, checkpoint and evaluation), if any.

    Re-running the pipeline with nothing changed must not add versions: DVC skipped every stage,
    so the registry keeps the versions it already has.
    """
    same = [key for key in shared_tags if key.startswith("metric.")] + ["checkpoint_sha256"]

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


# ---------------------------------------------------------------------------------------------
# Promote


def _candidate(client: MlflowClient, registry: RegistryConfig, alias: str) -> Candidate | None:
    """The registration `alias` points at on both models; None when neither has it."""
    decoder = _alias_version(client, registry.decoder_name, alias)
    encoder = _alias_version(client, registry.encoder_name, alias)
    if decoder is None and encoder is None:
        return None
    if decoder is None or encoder is None:
        have, lack = (
            (registry.encoder_name, registry.decoder_name)
            if decoder is None
            else (registry.decoder_name, registry.encoder_name)
        )
        raise RegistryError(
            f"alias {alias!r} is set on {have} but not on {lack}: the registry is inconsistent; "
            f"set or delete it by hand (MlflowClient.set_registered_model_alias) before promoting"
        )
    return Candidate(str(decoder.version), str(encoder.version), dict(decoder.tags), dict(encoder.tags))


def _candidate_of_versions(
    client: MlflowClient, registry: RegistryConfig, versions: tuple[str, str]
) -> Candidate:
    decoder = client.get_model_version(registry.decoder_name, str(versions[0]))
    encoder = client.get_model_version(registry.encoder_name, str(versions[1]))
    return Candidate(str(decoder.version), str(encoder.version), dict(decoder.tags), dict(encoder.tags))


def _pair_text(candidate: Candidate) -> str:
    decoder_pair = candidate.decoder_tags.get("pair_id")
    encoder_pair = candidate.encoder_tags.get("pair_id")
    return f"{candidate.label()} (pair_id {decoder_pair} vs {encoder_pair})"


def _check_pair(client: MlflowClient, registry: RegistryConfig, alias: str, pair_id: str | None) -> None:
    """Re-read `alias` on both models; raise unless both carry `pair_id`."""
    current = _candidate(client, registry, alias)
    found = (
        (current.decoder_tags.get("pair_id"), current.encoder_tags.get("pair_id"))
        if current
        else (None, None)
    )
    if current is None or found != (pair_id, pair_id):
        where = current.label() if current else "nothing"
        raise RegistryError(
            f"after moving {alias!r} it points at {where} with pair_ids {found[0]} / {found[1]}, "
            f"expected {pair_id} on both: something moved the aliases without the registry lock; "
            "check the registry by hand"
        )


def _move_champion(
    client: MlflowClient, registry: RegistryConfig, challenger: Candidate, champion: Candidate | None
) -> None:
    """Point `champion` at the challenger on both models; undo the first move if the second fails."""
    client.set_registered_model_alias(registry.decoder_name, CHAMPION, challenger.decoder_version)
    try:
        client.set_registered_model_alias(registry.encoder_name, CHAMPION, challenger.encoder_version)
    except Exception:
        if champion is not None:
            client.set_registered_model_alias(registry.decoder_name, CHAMPION, champion.decoder_version)
        else:
            client.delete_registered_model_alias(registry.decoder_name, CHAMPION)
        raise
    _check_pair(client, registry, CHAMPION, challenger.pair_id)


def _record(
    client: MlflowClient,
    config: Config,
    decision: PromotionDecision,
    gate: GateDecision,
    champion: Candidate | None,
) -> str:
    """Log the decision as an MLflow run (experiment `<tracking.experiment>-promotions`) and as
    `promotion.*` tags on the challenger's versions; return the run id."""
    from mlflow.entities import Metric, Param

    registry = config.registry
    now = datetime.now(UTC)
    verdict = "promoted" if decision.promoted else "rejected"
    experiment_id = _experiment_id(client, config.tracking, f"{config.tracking.experiment}-promotions")
    run = client.create_run(
        experiment_id,
        run_name=f"promote-{verdict}",
        tags={
            "vaegan.stage": "promote",
            "promotion.decision": verdict,
            "promotion.reasons": "\n".join(decision.reasons),
            "promotion.failed_checks": ",".join(gate.failed) or "none",
            "challenger.decoder_version": decision.challenger["decoder"],
            "challenger.encoder_version": decision.challenger["encoder"],
            "challenger.pair_id": str(decision.pair_id),
            "champion_before": champion.label() if champion else "none",
            "champion_before.pair_id": str(champion.pair_id) if champion else "none",
        },
    )
    run_id = run.info.run_id
    millis = int(now.timestamp() * 1000)
    client.log_batch(
        run_id,
        metrics=[
            Metric(key, float(value), millis, 0)
            for key, value in decision.metrics.items()
            if value is not None and math.isfinite(value)
        ],
        params=[
            Param(f"registry.{key}", str(getattr(registry, key)))
            for key in ("min_improvement", "max_fid", "min_evaluator_accuracy")
        ],
    )
    client.log_text(run_id, json.dumps(asdict(decision), indent=2, default=str), "decision.json")
    client.set_terminated(run_id)
    tags = {
        "promotion.decision": verdict,
        "promotion.reasons": "\n".join(decision.reasons),
        "promotion.timestamp": now.isoformat(timespec="seconds"),
        "promotion.run_id": run_id,
        "promotion.champion_before": champion.label() if champion else "none",
    }
    if "new" in gate.failed:  # the challenger is the champion: keep the tags of its promotion
        return run_id
    for name, version in (
        (registry.decoder_name, decision.challenger["decoder"]),
        (registry.encoder_name, decision.challenger["encoder"]),
    ):
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
    return run_id


def promote_challenger(
    *, config: Config, dry_run: bool = False, versions: tuple[str, str] | None = None
) -> PromotionDecision:
    """Run the gate on the challenger against the champion; move `champion` on both models when it
    passes. `versions` = (decoder, encoder) judges that registration instead of the `challenger`
    alias. The read-decide-write section holds the registry lock; `dry_run` only reads and decides.
    """
    registry = config.registry
    client, uri = _connect(config.tracking)
    with _mlflow_errors("promote"), registry_lock(uri, shared=dry_run):
        challenger = (
            _candidate_of_versions(client, registry, versions)
            if versions is not None
            else _candidate(client, registry, CHALLENGER)
        )
        if challenger is None:
            raise RegistryError(
                f"no {CHALLENGER!r} alias on {registry.decoder_name} / {registry.encoder_name}: "
                "run `vaegan register` first"
            )
        champion = _candidate(client, registry, CHAMPION)
        if champion is not None and champion.pair_id is None:
            raise RegistryError(
                f"the champion aliases point at {_pair_text(champion)}, which are not one "
                "registration; fix the aliases by hand before promoting"
            )
        gate = decide_promotion(challenger, champion, registry)
        decision = PromotionDecision(
            promoted=gate.promote,
            reasons=gate.reasons,
            challenger={"decoder": challenger.decoder_version, "encoder": challenger.encoder_version},
            previous_champion=(
                {"decoder": champion.decoder_version, "encoder": champion.encoder_version}
                if champion
                else None
            ),
            metrics=dict(gate.compared),
            pair_id=challenger.pair_id,
            dry_run=dry_run,
        )
        if dry_run:
            return decision
        if gate.promote:
            _move_champion(client, registry, challenger, champion)
        run_id = _record(client, config, decision, gate, champion)
    log.info("%s (recorded in run %s)", "promoted" if decision.promoted else "not promoted", run_id)
    return dataclasses.replace(decision, record_run_id=run_id)


# ---------------------------------------------------------------------------------------------
# Load verified

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))/?$")
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<path>[^/]+)/?$")


def resolve_model_version(client: MlflowClient, model_uri: str) -> ModelVersion:
    """The registered model version `model_uri` names: `models:/name@alias`, `models:/name/<version>`,
    or `runs:/<register run id>/<decoder|encoder>`."""
    from mlflow.exceptions import MlflowException

    match = _MODELS_URI.match(model_uri)
    if match and match["alias"]:
        version = _alias_version(client, match["name"], match["alias"])
        if version is None:
            raise RegistryError(f"{model_uri}: no version of {match['name']!r} has alias {match['alias']!r}")
        return version
    if match and match["version"] and match["version"].isdigit():
        try:
            return client.get_model_version(match["name"], match["version"])
        except MlflowException as exc:
            if _is_missing(exc):
                raise RegistryError(
                    f"{model_uri}: {match['name']!r} has no version {match['version']}"
                ) from exc
            raise
    runs = _RUNS_URI.match(model_uri)
    if runs:
        found = [
            version
            for version in client.search_model_versions(f"run_id = '{runs['run_id']}'")
            if version.tags.get("role") == runs["path"]
        ]
        if len(found) != 1:
            raise RegistryError(
                f"{model_uri}: {len(found)} registered {runs['path']} versions come from that run; "
                "only registered models carry the sha256 that makes them loadable"
            )
        return found[0]
    raise RegistryError(
        f"{model_uri}: expected models:/<name>@<alias>, models:/<name>/<version> or "
        "runs:/<run id>/<decoder|encoder> (only registered versions carry the sha256 to verify)"
    )


def _download_verified(
    client: MlflowClient, version: ModelVersion, uri: str, store_uri: str, dst_dir: str | Path | None
) -> VerifiedModel:
    import mlflow

    name, number = version.name, str(version.version)
    expected = version.tags.get("onnx_sha256")
    location = client.get_model_version_download_uri(name, number)
    own_dir = dst_dir is None
    target = Path(tempfile.mkdtemp(prefix=f"vaegan-{name}-v{number}-")) if dst_dir is None else Path(dst_dir)
    target.mkdir(parents=True, exist_ok=True)
    path = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location.rstrip('/')}/{ONNX_FILE}", dst_path=str(target), tracking_uri=store_uri
        )
    )
    actual = sha256_file(path)
    if expected != actual:
        path.unlink(missing_ok=True)
        if own_dir:
            shutil.rmtree(target, ignore_errors=True)
        if expected is None:
            raise RegistryError(
                f"{uri} ({name} v{number}) has no onnx_sha256 tag, so its artifact (sha256 {actual}) "
                "cannot be verified; refusing to load it (register models with `vaegan register`)"
            )
        raise RegistryError(
            f"{uri} ({name} v{number}): the stored {ONNX_FILE} has sha256 {actual}, but the version "
            f"was registered with onnx_sha256 {expected}; the artifact was changed after registration, "
            "refusing to load it"
        )
    return VerifiedModel(
        path=path,
        name=name,
        version=number,
        tags=dict(version.tags),
        run_id=version.run_id,
        sha256=actual,
        uri=uri,
    )


def load_verified_onnx(
    model_uri: str,
    tracking: TrackingConfig,
    tracking_uri: str | None = None,
    dst_dir: str | Path | None = None,
) -> VerifiedModel:
    """Download the registered ONNX model `model_uri` (into `dst_dir`, default a new temporary
    directory) and return it only if its sha256 equals the version's `onnx_sha256` tag."""
    client, uri = _connect(tracking, tracking_uri)
    with _mlflow_errors(f"load {model_uri}"):
        version = resolve_model_version(client, model_uri)
        return _download_verified(client, version, model_uri, uri, dst_dir)


def champion_pair(
    *, config: Config, tracking_uri: str | None = None, dst_dir: str | Path | None = None
) -> tuple[VerifiedModel, VerifiedModel]:
    """The champion (decoder, encoder), both verified, from one registration (same pair_id)."""
    registry = config.registry
    client, uri = _connect(config.tracking, tracking_uri)
    with _mlflow_errors("load the champion pair"):
        with registry_lock(uri, shared=True):
            champion = _candidate(client, registry, CHAMPION)
        if champion is None:
            raise RegistryError(
                f"no {CHAMPION!r} alias on {registry.decoder_name} / {registry.encoder_name}: "
                "run `vaegan promote` first"
            )
        if champion.pair_id is None:
            raise RegistryError(
                f"the champion aliases point at {_pair_text(champion)}, which are not one registration"
            )
        loaded = []
        for name, number in (
            (registry.decoder_name, champion.decoder_version),
            (registry.encoder_name, champion.encoder_version),
        ):
            version = client.get_model_version(name, number)
            sub_dir = None if dst_dir is None else Path(dst_dir) / name
            loaded.append(_download_verified(client, version, f"models:/{name}/{number}", uri, sub_dir))
    return loaded[0], loaded[1]


def champion_metric_tags(*, config: Config) -> dict[str, str]:
    """The champion decoder's `metric.<name>` tags as `{name: value}`; {} when there is no champion."""
    client, uri = _connect(config.tracking)
    with _mlflow_errors("read the champion"), registry_lock(uri, shared=True):
        champion = _alias_version(client, config.registry.decoder_name, CHAMPION)
    if champion is None:
        return {}
    return {
        key.removeprefix("metric."): value
        for key, value in champion.tags.items()
        if key.startswith("metric.")
    }


# ---------------------------------------------------------------------------------------------
# CLI entries


def run_register(config: Config, args: argparse.Namespace) -> int:
    """`vaegan register`: register the exported pair as challenger and print the versions."""
    registration = register_models(config=config)
    print(
        f"registered {config.registry.decoder_name} v{registration.decoder_version} and "
        f"{config.registry.encoder_name} v{registration.encoder_version} as {CHALLENGER} "
        f"(pair {registration.pair_id}, fid {registration.tags.get('metric.fid')})"
    )
    return 0


def run_promote(config: Config, args: argparse.Namespace) -> int:
    """`vaegan promote`: print the gate's decision and reasons; exit 0 whether or not it promoted."""
    versions = getattr(args, "versions", None)  # (decoder, encoder), when the CLI offers --versions
    decision = promote_challenger(
        config=config,
        dry_run=bool(getattr(args, "dry_run", False)),
        versions=(str(versions[0]), str(versions[1])) if versions else None,
    )
    print(decision.summary())
    return 0
