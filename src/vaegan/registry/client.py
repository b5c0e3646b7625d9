"""The registry's MLflow edge: a checked client, MLflow's exceptions as RegistryError, the version an
alias points at, and the registration (`Candidate`) one alias names on both models."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from vaegan.config import RegistryConfig, TrackingConfig
from vaegan.errors import RegistryError, first_line
from vaegan.registry.gate import Candidate
from vaegan.tracking.store import connect, ensure_experiment, uri_in_effect

ROLES = ("decoder", "encoder")
CHALLENGER = "challenger"
CHAMPION = "champion"
ONNX_FILE = "model.onnx"  # the onnx flavour's data file inside a logged model


@contextlib.contextmanager
def mlflow_errors(action: str) -> Iterator[None]:
    """Turn MLflow's exceptions into a RegistryError naming what was being done."""
    try:
        yield
    except MlflowException as exc:
        raise RegistryError(f"{action}: MLflow refused: {first_line(exc)}") from exc


def connect_registry(tracking: TrackingConfig, uri: str | None = None) -> tuple[MlflowClient, str]:
    """A checked client and the URI in effect; an explicit `uri` beats MLFLOW_TRACKING_URI and params."""
    uri = uri_in_effect(tracking, uri)
    return connect(tracking, uri), uri


def is_missing(exc: MlflowException) -> bool:
    """True when MLflow refused because the model, version or alias does not exist."""
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def experiment_id(client: MlflowClient, tracking: TrackingConfig, name: str | None = None) -> str:
    """ensure_experiment, tolerating a concurrent process that created it first."""
    try:
        return ensure_experiment(client, tracking, name)
    except MlflowException:
        experiment = client.get_experiment_by_name(name or tracking.experiment)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version of registered model `name` that `alias` points at; None when either is absent."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if is_missing(exc):
            return None
        raise
    version = model.aliases.get(alias)
    return None if version is None else client.get_model_version(name, str(version))


def alias_candidate(client: MlflowClient, registry: RegistryConfig, alias: str) -> Candidate | None:
    """The registration `alias` points at on both models; None when neither has it."""
    decoder = alias_version(client, registry.decoder_name, alias)
    encoder = alias_version(client, registry.encoder_name, alias)
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
    return _candidate(decoder, encoder)


def versions_candidate(
    client: MlflowClient, registry: RegistryConfig, versions: tuple[str, str]
) -> Candidate:
    """The registration of versions (decoder, encoder), whatever the aliases say."""
    decoder = client.get_model_version(registry.decoder_name, str(versions[0]))
    encoder = client.get_model_version(registry.encoder_name, str(versions[1]))
    return _candidate(decoder, encoder)


def _candidate(decoder: ModelVersion, encoder: ModelVersion) -> Candidate:
    return Candidate(str(decoder.version), str(encoder.version), dict(decoder.tags), dict(encoder.tags))


def pair_text(candidate: Candidate) -> str:
    """The candidate's versions and the pair_id of each half, for messages."""
    decoder_pair = candidate.decoder_tags.get("pair_id")
    encoder_pair = candidate.encoder_tags.get("pair_id")
    return f"{candidate.label()} (pair_id {decoder_pair} vs {encoder_pair})"


def check_alias_pair(client: MlflowClient, registry: RegistryConfig, alias: str, pair_id: str | None) -> None:
    """Re-read `alias` on both models; raise unless both carry `pair_id`."""
    current = alias_candidate(client, registry, alias)
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
