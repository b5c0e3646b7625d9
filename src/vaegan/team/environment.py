"""What a team member, a worker and each server need in their environment to use the stack.

`member_environment` is what `.team/env` exports: the MLflow and Prefect URLs with their credentials,
the S3 endpoint and keys that DVC's remote uses, the registry lock's database and the git remote.
A worker runs with exactly that (plus flow heartbeats), so a flow run on a worker and a command in a
member's shell meet the same servers with the same rights.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from vaegan.services.postgres import Cluster
from vaegan.team.credentials import Credentials, write_private
from vaegan.team.layout import Ports, TeamLayout

LOCK_DATABASE = "vaegan_locks"
LOCK_ROLE = "vaegan_lock"
DVC_BUCKET = "dvc"
MLFLOW_BUCKET = "mlflow"
# rclone's S3 gateway and recent botocore disagree on default checksums (boto/boto3#4512)
S3_CHECKSUMS = {
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}
# flow runs report every 30 s; the zombie automation crashes a run silent for ZOMBIE_AFTER_S
HEARTBEAT_S = 30
# a worker asks for scheduled runs every 2 s: Prefect's default of 10 s left a worker idle 5 s on
# average between one run's end and the next one's start (docs/performance.md "Team stack")
WORKER_POLL_S = 2
# Prefect clients retry for ~4 min (not the default ~1 min) while a server restarts under load, and
# retry the 500s its API answers while PostgreSQL restarts (the request did not commit)
PREFECT_RETRIES = {"PREFECT_CLIENT_MAX_RETRIES": "7", "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500"}
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def cluster(layout: TeamLayout, ports: Ports, credentials: Credentials) -> Cluster:
    return Cluster(
        data_dir=layout.postgres_dir,
        log_file=layout.log_file("postgres"),
        host=ports.host,
        port=ports.postgres,
        superuser=credentials.postgres_user,
        password=credentials.postgres_password,
    )


def s3_endpoint(ports: Ports) -> str:
    return f"http://{ports.host}:{ports.s3}"


def s3_environment(ports: Ports, credentials: Credentials) -> dict[str, str]:
    """What boto3 (MLflow's artifact proxy, DVC's S3 remote) needs to reach the S3 server."""
    return {
        "AWS_ACCESS_KEY_ID": credentials.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": credentials.s3_secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint(ports),
        **S3_CHECKSUMS,
    }


def lock_url(ports: Ports, credentials: Credentials) -> str:
    """The database the registry lock takes its advisory locks in, as the lock role (no rights)."""
    return (
        f"postgresql://{LOCK_ROLE}:{credentials.lock_password}@{ports.host}:{ports.postgres}/{LOCK_DATABASE}"
    )


def member_environment(layout: TeamLayout, ports: Ports, credentials: Credentials) -> dict[str, str]:
    """The variables a team member (or a worker) uses the stack with."""
    return {
        "MLFLOW_TRACKING_URI": f"http://{ports.host}:{ports.mlflow}",
        "MLFLOW_TRACKING_USERNAME": credentials.mlflow_user,
        "MLFLOW_TRACKING_PASSWORD": credentials.mlflow_password,
        "PREFECT_API_URL": f"http://{ports.host}:{ports.prefect}/api",
        "PREFECT_API_AUTH_STRING": credentials.prefect_auth,
        "VAEGAN_DVC_REMOTE_URL": f"s3://{DVC_BUCKET}",
        "VAEGAN_DVC_ENDPOINT_URL": s3_endpoint(ports),
        "VAEGAN_REGISTRY_LOCK_URL": lock_url(ports, credentials),
        "VAEGAN_GIT_REMOTE": layout.git_remote.as_uri(),
        **s3_environment(ports, credentials),
        **PREFECT_RETRIES,
        **TELEMETRY_OFF,
    }


def worker_environment(base: Mapping[str, str], member: Mapping[str, str]) -> dict[str, str]:
    """A worker's environment: the caller's (PATH, HOME) with the member variables, heartbeats and
    its poll interval."""
    return {
        **base,
        **member,
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),
        "PREFECT_WORKER_QUERY_SECONDS": str(WORKER_POLL_S),
    }


def write_env_file(layout: TeamLayout, member: Mapping[str, str]) -> None:
    """`.team/env`: `export NAME=value` lines for `source .team/env` (mode 0600: it holds passwords)."""
    lines = [
        "# The vaegan team stack: `source .team/env` in a shell, then make run, vaegan promote,",
        "# make check-champion and vaegan reproduce use the team's servers. Written by `make serve-team`.",
        *(f"export {name}={shlex.quote(value)}" for name, value in sorted(member.items())),
    ]
    write_private(layout.env_file, "\n".join(lines) + "\n")
