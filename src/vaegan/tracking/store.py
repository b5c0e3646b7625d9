"""MLflow at the edge: which tracking URI, which experiment, and clear errors when it is wrong.

The URI comes from the MLFLOW_TRACKING_URI environment variable when set, else `tracking.uri`
(default `sqlite:///mlflow.db`). A local store gets its artifacts under
`tracking.artifact_location`; a server decides its own.

Relative local paths (the sqlite file, a plain store folder, the artifact location) are made
absolute against the DVC repository the command runs for: DVC sets `DVC_ROOT` for every stage, and
for `dvc exp run --temp`/`--queue` it points at the user's repository, not at the temporary copy
the experiment runs in (which DVC deletes afterwards, and the runs with it). Outside DVC they are
made absolute against the working directory.

MLflow records absolute artifact locations in the store. A workspace moved or copied with its
mlflow.db would read and write the original folder's artifacts: an experiment created here carries
the URI of the store it was created in (tag `vaegan.store`), and `connect` refuses a local store
whose `tracking.experiment` was created in another one, naming it (`check_store_origin`). Several
workspaces sharing one store (one MLFLOW_TRACKING_URI) are fine: the tag is that store's.
"""

from __future__ import annotations

import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from vaegan.errors import RegistryError, ServiceUnavailable, first_line

if TYPE_CHECKING:
    from vaegan.config import TrackingConfig

LOCAL_SCHEMES = ("sqlite", "file", "")


def local_base() -> Path:
    """Where relative local store paths live: the DVC repository this command runs for
    (`DVC_ROOT`, set for every stage), else the working directory."""
    root = os.environ.get("DVC_ROOT")
    return Path(root) if root else Path.cwd()


def anchored(path: str, base: Path | None = None) -> str:
    """`path` joined to `base` (default `local_base()`) when it is relative, else unchanged."""
    if not path or Path(path).is_absolute():
        return path
    return str((base or local_base()) / path)


def absolute_uri(uri: str, base: Path | None = None) -> str:
    """`uri` with a relative local store (the sqlite file, a plain folder) made absolute against
    `base` (default `local_base()`); servers and absolute paths unchanged. Always absolute, because
    MLflow keeps one store per URI string per process: a relative URI used from two folders would
    reach the first folder's store."""
    scheme = _scheme(uri)
    if scheme == "sqlite" and uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        return "sqlite:///" + anchored(uri.removeprefix("sqlite:///"), base)
    if scheme == "":
        return anchored(uri, base)
    return uri


def tracking_uri(tracking: TrackingConfig) -> str:
    """The MLflow tracking URI in effect (environment first, then params), local paths absolute."""
    return absolute_uri(os.environ.get("MLFLOW_TRACKING_URI") or tracking.uri)


def uri_in_effect(tracking: TrackingConfig, uri: str | None = None) -> str:
    """An explicit `uri` (a command line's --tracking-uri: a relative local store is relative to the
    working directory, as the user typed it there), else `tracking_uri`; absolute either way."""
    return absolute_uri(uri, Path.cwd()) if uri else tracking_uri(tracking)


# environment variable -> MLflow tag: what runs this command (DVC sets the first two in `dvc exp run`,
# the flows set the others for their stages and registrations)
ORCHESTRATION_TAGS = {
    "DVC_EXP_NAME": "dvc.exp_name",
    "DVC_EXP_BASELINE_REV": "dvc.exp_baseline_rev",
    "VAEGAN_FLOW_RUN_ID": "prefect.flow_run_id",
    "VAEGAN_FLOW_RUN_NAME": "prefect.flow_run_name",
    "VAEGAN_FLOW_RUN_URL": "prefect.flow_run_url",
}


def orchestration_tags() -> dict[str, str]:
    """Tags that tie an MLflow run or model version to the DVC experiment and the Prefect flow run
    that made it (empty when run by hand)."""
    return {tag: os.environ[var] for var, tag in ORCHESTRATION_TAGS.items() if os.environ.get(var)}


def _scheme(uri: str) -> str:
    return uri.split(":", 1)[0] if "://" in uri else ""


# SQLAlchemy database URLs name a driver after `+` (postgresql+psycopg2, mysql+pymysql, ...)
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")


def _check_uri(uri: str) -> None:
    scheme = _scheme(uri)
    dialect = scheme.split("+", 1)[0]
    known = (*LOCAL_SCHEMES, "http", "https", "databricks")
    if scheme not in known and dialect not in DATABASE_SCHEMES:
        raise RegistryError(f"tracking URI {uri!r}: unsupported scheme {scheme!r}")
    if scheme == "sqlite":
        db_path = uri.removeprefix("sqlite:///")
        parent = Path(db_path).parent
        if db_path and not parent.exists():
            raise RegistryError(f"tracking URI {uri!r}: directory {parent} does not exist")


def _probe_server(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast when an http(s) tracking server does not answer at all (MLflow's own client retries
    a refused connection with backoff for minutes). Any HTTP answer, even an error, counts as up."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        pass  # it answered: a proxy path or an auth wall, not a dead server
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServiceUnavailable(f"MLflow tracking URI {uri!r} is not reachable: {reason}") from exc


def connect(tracking: TrackingConfig, uri: str | None = None) -> MlflowClient:
    """An MlflowClient for `uri` (default: the tracking URI in effect), checked to answer; sets
    mlflow's global tracking and registry URIs."""
    uri = uri_in_effect(tracking, uri)
    _check_uri(uri)
    if _scheme(uri) in ("http", "https"):
        _probe_server(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:  # a local store is opened (and its schema checked) when the client is built
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    except Exception as exc:  # sqlalchemy's DatabaseError for a corrupt file, MlflowException, ...
        raise RegistryError(f"MLflow store {uri!r} cannot be opened: {first_line(exc)}") from exc
    try:
        client.search_experiments(max_results=1)
    except MlflowException as exc:
        if exc.error_code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            raise RegistryError(
                f"MLflow at {uri!r} refused the credentials (MLFLOW_TRACKING_USERNAME / "
                f"MLFLOW_TRACKING_PASSWORD: in team mode, `source .team/env`): {exc.error_code}"
            ) from exc
        raise ServiceUnavailable(f"MLflow tracking URI {uri!r} is not reachable: {first_line(exc)}") from exc
    except Exception as exc:  # requests/sqlalchemy errors, ...
        raise ServiceUnavailable(f"MLflow tracking URI {uri!r} is not reachable: {first_line(exc)}") from exc
    if uri == tracking_uri(tracking):  # the workspace's own store (not another one named by hand)
        check_store_origin(client, tracking, uri)
    return client


# Experiment tag: the URI of the local store the experiment was created in.
STORE_TAG = "vaegan.store"


def local_artifact_root(tracking: TrackingConfig) -> str | None:
    """The file URI of `tracking.artifact_location` for a local store (relative: in the workspace);
    None for a server, which decides its own."""
    if _scheme(tracking_uri(tracking)) not in LOCAL_SCHEMES:
        return None
    return Path(anchored(tracking.artifact_location)).resolve().as_uri()


def _uri_path(location: str) -> str:
    """A file URI's path (other locations unchanged), for messages."""
    parsed = urllib.parse.urlparse(location)
    return urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else location


def check_store_origin(client: MlflowClient, tracking: TrackingConfig, uri: str) -> None:
    """RegistryError when `tracking.experiment` of the local store at `uri` was created in another
    store (its `vaegan.store` tag): an mlflow.db moved or copied with its workspace, whose runs would
    read and write the original folder's artifacts. An experiment from before the tag is adopted
    when its artifacts are where `tracking.artifact_location` says, else refused the same way."""
    artifact_root = local_artifact_root(tracking)
    experiment = client.get_experiment_by_name(tracking.experiment) if artifact_root else None
    if experiment is None:
        return
    origin = experiment.tags.get(STORE_TAG)
    if origin == uri:
        return
    if origin is None and experiment.artifact_location == artifact_root:
        client.set_experiment_tag(experiment.experiment_id, STORE_TAG, uri)
        return
    came_from = (
        origin.removeprefix("sqlite:///")
        if origin
        else str(Path(_uri_path(experiment.artifact_location)).parent)
    )
    raise RegistryError(
        f"MLflow store {uri} was moved or copied from {came_from}: its experiment "
        f"{tracking.experiment!r} keeps its artifacts in {_uri_path(experiment.artifact_location)}, "
        "and this workspace's runs would read and write there; work in the original, or start a new "
        "store here (move mlflow.db and the artifact folder aside)"
    )


def ensure_experiment(client: MlflowClient, tracking: TrackingConfig, name: str | None = None) -> str:
    """The id of experiment `name` (default `tracking.experiment`), created when missing (by this
    process or, on a shared server, by another that created it at the same moment)."""
    experiment_name = name or tracking.experiment
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is not None:
        return str(experiment.experiment_id)
    artifact_location = local_artifact_root(tracking)
    tags = {STORE_TAG: tracking_uri(tracking)} if artifact_location else None
    try:
        return str(client.create_experiment(experiment_name, artifact_location=artifact_location, tags=tags))
    except MlflowException as exc:
        created = client.get_experiment_by_name(experiment_name)
        if exc.error_code != "RESOURCE_ALREADY_EXISTS" or created is None:
            raise
        return str(created.experiment_id)


METRICS_PER_BATCH = 100  # well inside MLflow's limit of metrics per log_batch request


def log_metrics(
    client: MlflowClient, run_id: str, values: Mapping[str, float | None], *, step: int = 0, prefix: str = ""
) -> None:
    """Log `<prefix><name>` for each finite value of `values` at `step`, in batches MLflow accepts
    (None and non-finite values are left out: MLflow stores NaN, which breaks comparisons)."""
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{prefix}{key}", float(value), now, step)
        for key, value in values.items()
        if value is not None and math.isfinite(value)
    ]
    for start in range(0, len(metrics), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + METRICS_PER_BATCH])
