"""Load registered models back only when their bytes are the ones registered: download a version's
`model.onnx` and refuse it unless its sha256 equals the `onnx_sha256` tag written at registration."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from vaegan.artifacts.provenance import sha256_file
from vaegan.config import Config, TrackingConfig
from vaegan.errors import RegistryError
from vaegan.registry.client import (
    CHAMPION,
    ONNX_FILE,
    alias_candidate,
    alias_version,
    connect_registry,
    is_missing,
    mlflow_errors,
    pair_text,
)
from vaegan.registry.lock import registry_lock

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))/?$")
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<path>[^/]+)/?$")


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


def resolve_model_version(client: MlflowClient, model_uri: str) -> ModelVersion:
    """The registered model version `model_uri` names: `models:/name@alias`, `models:/name/<version>`,
    or `runs:/<register run id>/<decoder|encoder>`."""
    match = _MODELS_URI.match(model_uri)
    if match and match["alias"]:
        version = alias_version(client, match["name"], match["alias"])
        if version is None:
            raise RegistryError(f"{model_uri}: no version of {match['name']!r} has alias {match['alias']!r}")
        return version
    if match and match["version"] and match["version"].isdigit():
        try:
            return client.get_model_version(match["name"], match["version"])
        except MlflowException as exc:
            if is_missing(exc):
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
    client: MlflowClient, version: ModelVersion, uri: str, store_uri: str, dst_dir: str | Path
) -> VerifiedModel:
    name, number = version.name, str(version.version)
    expected = version.tags.get("onnx_sha256")
    location = client.get_model_version_download_uri(name, number)
    target = Path(dst_dir)
    target.mkdir(parents=True, exist_ok=True)
    path = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location.rstrip('/')}/{ONNX_FILE}", dst_path=str(target), tracking_uri=store_uri
        )
    )
    actual = sha256_file(path)
    if expected != actual:
        path.unlink(missing_ok=True)
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
    *,
    dst_dir: str | Path,
) -> VerifiedModel:
    """Download the registered ONNX model `model_uri` into `dst_dir` (the caller's, which it
    removes) and return it only if its sha256 equals the version's `onnx_sha256` tag."""
    client, uri = connect_registry(tracking, tracking_uri)
    with mlflow_errors(f"load {model_uri}"):
        version = resolve_model_version(client, model_uri)
        return _download_verified(client, version, model_uri, uri, dst_dir)


def champion_pair(
    *, config: Config, dst_dir: str | Path, tracking_uri: str | None = None
) -> tuple[VerifiedModel, VerifiedModel]:
    """The champion (decoder, encoder), both verified, from one registration (same pair_id),
    downloaded under `dst_dir` (the caller's, which it removes)."""
    registry = config.registry
    client, uri = connect_registry(config.tracking, tracking_uri)
    with mlflow_errors("load the champion pair"):
        with registry_lock(uri, shared=True):
            champion = alias_candidate(client, registry, CHAMPION)
        if champion is None:
            raise RegistryError(
                f"no {CHAMPION!r} alias on {registry.decoder_name} / {registry.encoder_name}: "
                "run `vaegan promote` first"
            )
        if champion.pair_id is None:
            raise RegistryError(
                f"the champion aliases point at {pair_text(champion)}, which are not one registration"
            )
        loaded = []
        for name, number in (
            (registry.decoder_name, champion.decoder_version),
            (registry.encoder_name, champion.encoder_version),
        ):
            version = client.get_model_version(name, number)
            sub_dir = Path(dst_dir) / name
            loaded.append(_download_verified(client, version, f"models:/{name}/{number}", uri, sub_dir))
    return loaded[0], loaded[1]


def champion_metric_tags(*, config: Config) -> dict[str, str]:
    """The champion decoder's `metric.<name>` tags as `{name: value}`; {} when there is no champion."""
    client, uri = connect_registry(config.tracking)
    with mlflow_errors("read the champion"), registry_lock(uri, shared=True):
        champion = alias_version(client, config.registry.decoder_name, CHAMPION)
    if champion is None:
        return {}
    return {
        key.removeprefix("metric."): value
        for key, value in champion.tags.items()
        if key.startswith("metric.")
    }
