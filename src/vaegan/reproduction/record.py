"""What the registry records about a model, read back for `vaegan reproduce`.

A registration is two versions (decoder and encoder) with one `pair_id`; both carry the provenance
tags written by `vaegan register` (git commit, data, training code and weights sha256, `env.*`,
`metric.*`), each its own `export_sha256`, and the registration run holds the training's config
as `params.yaml`.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from vaegan.config import RegistryConfig
from vaegan.errors import RegistryError
from vaegan.registry.client import ROLES, is_missing
from vaegan.registry.registration import PARAMS_ARTIFACT
from vaegan.registry.verified import resolve_model_version

_TRAINING_RUN_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)/?$")
# The tags a registration must carry to be rebuilt (older registrations lack some).
REQUIRED_TAGS = ("git_commit", "data_sha256", "code_sha256", "weights_sha256", "pair_id")


@dataclass(frozen=True)
class RecordedModel:
    """One registration as the registry records it."""

    uri: str
    versions: dict[str, tuple[str, str]]  # role -> (registered model name, version)
    tags: dict[str, str]  # the decoder's tags (the provenance both versions share)
    export_sha256: dict[str, str]  # role -> sha256 of the exported .onnx file
    params: dict[str, Any]  # the training's config (Config.to_dict())

    def tag(self, name: str) -> str:
        return self.tags.get(name, "unknown")

    @property
    def git_commit(self) -> str:
        return self.tag("git_commit")

    def label(self) -> str:
        return " + ".join(f"{name} v{version}" for name, version in self.versions.values())


def _training_run_version(client: MlflowClient, registry: RegistryConfig, run_id: str) -> ModelVersion:
    """The newest decoder version registered from training run `run_id`."""
    found = [
        version
        for version in client.search_model_versions(f"name = '{registry.decoder_name}'")
        if version.tags.get("training_run_id") == run_id
    ]
    if not found:
        raise RegistryError(
            f"runs:/{run_id}: no registered {registry.decoder_name} version comes from that training run; "
            "reproduce compares a rebuild with the registered weights and graphs, so register it first"
        )
    return max(found, key=lambda version: int(version.version))


def _partner(
    client: MlflowClient, registry: RegistryConfig, version: ModelVersion
) -> dict[str, ModelVersion]:
    """Both versions of `version`'s registration, by role."""
    role = version.tags.get("role")
    pair_id = version.tags.get("pair_id")
    if role not in ROLES or not pair_id:
        raise RegistryError(
            f"{version.name} v{version.version} has no role/pair_id tags: it was not registered by "
            "`vaegan register`"
        )
    other_role = "encoder" if role == "decoder" else "decoder"
    other_name = registry.encoder_name if other_role == "encoder" else registry.decoder_name
    others = [
        v for v in client.search_model_versions(f"name = '{other_name}'") if v.tags.get("pair_id") == pair_id
    ]
    if len(others) != 1:
        raise RegistryError(
            f"{version.name} v{version.version}: {len(others)} {other_name} versions share its "
            f"pair_id {pair_id}"
        )
    return {role: version, other_role: others[0]}


def _training_params(client: MlflowClient, run_id: str, label: str) -> dict[str, Any]:
    """The `params.yaml` the registration run logged."""
    with tempfile.TemporaryDirectory(prefix="vaegan-record-") as tmp:
        try:
            path = Path(client.download_artifacts(run_id, PARAMS_ARTIFACT, tmp))
        except (MlflowException, OSError) as exc:
            if isinstance(exc, MlflowException) and not is_missing(exc):
                raise
            raise RegistryError(
                f"{label}: its registration run {run_id} holds no {PARAMS_ARTIFACT} (registered before "
                "`vaegan register` recorded the training params); re-run `make run` to register it anew"
            ) from exc
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(params, dict):
        raise RegistryError(f"{label}: {PARAMS_ARTIFACT} of run {run_id} is not a mapping of sections")
    return params


def read_record(client: MlflowClient, registry: RegistryConfig, uri: str) -> RecordedModel:
    """The registration `uri` names: `models:/name@alias`, `models:/name/<version>`,
    `runs:/<register run>/<role>`, or `runs:/<training run>` (its newest registration)."""
    match = _TRAINING_RUN_URI.match(uri)
    version = (
        _training_run_version(client, registry, match["run_id"])
        if match
        else resolve_model_version(client, uri)
    )
    pair = _partner(client, registry, version)
    tags = dict(pair["decoder"].tags)
    label = f"{uri} ({version.name} v{version.version})"
    missing = [name for name in REQUIRED_TAGS if not tags.get(name) or tags[name] == "unknown"]
    if missing:
        raise RegistryError(
            f"{label} records no {', '.join(missing)}: registered before `vaegan register` recorded "
            "what a rebuild needs; re-run `make run` to register it anew"
        )
    return RecordedModel(
        uri=uri,
        versions={role: (v.name, str(v.version)) for role, v in pair.items()},
        tags=tags,
        export_sha256={role: str(v.tags.get("export_sha256")) for role, v in pair.items()},
        params=_training_params(client, tags["pair_id"], label),
    )
