"""The team stack's secrets: generated once at the first `up`, kept in a 0600 file of the state folder.

One account per service: PostgreSQL's superuser (used by the servers only), the S3 server's key pair
(used by the MLflow server and by DVC), MLflow's admin user of its basic-auth app and Prefect's server
auth string. Team members get the last three through the env file; nobody needs PostgreSQL's but the
servers (and the registry lock, which takes an advisory lock on the tracking database).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from vaegan.artifacts.atomic_io import write_text
from vaegan.errors import ConfigError


@dataclass(frozen=True)
class Credentials:
    postgres_user: str
    postgres_password: str
    lock_password: str  # the registry lock's role: it may connect to the lock database, no more
    s3_access_key: str
    s3_secret_key: str
    mlflow_user: str
    mlflow_password: str
    prefect_auth: str  # "user:password", Prefect's basic-auth string
    flask_secret: str  # MLflow's basic-auth app signs its forms with it

    @classmethod
    def generate(cls) -> Credentials:
        return cls(
            postgres_user="vaegan",
            postgres_password=secrets.token_urlsafe(18),
            lock_password=secrets.token_urlsafe(18),
            s3_access_key="vaegan" + secrets.token_hex(6),
            s3_secret_key=secrets.token_urlsafe(24),
            mlflow_user="vaegan-admin",
            mlflow_password=secrets.token_urlsafe(18),
            prefect_auth="vaegan:" + secrets.token_urlsafe(18),
            flask_secret=secrets.token_hex(24),
        )


def load_or_create(path: Path) -> Credentials:
    """The credentials in `path`, generated and written (mode 0600) when the file does not exist."""
    if path.is_file():
        try:
            return Credentials(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: not a credentials file of this version ({exc})") from exc
    credentials = Credentials.generate()
    write_private(path, json.dumps(asdict(credentials), indent=2) + "\n")
    return credentials


def write_private(path: Path, text: str) -> None:
    """Write `text` atomically into `path`, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old_mask = os.umask(0o077)
    try:
        write_text(path, text)
    finally:
        os.umask(old_mask)
    os.chmod(path, 0o600)
