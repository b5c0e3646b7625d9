"""Where the team stack keeps its state: one folder (`.team/` by default, gitignored), and what is in it.

.team/
  stack.json          host and ports chosen at the first `up` (later `up`s reuse them)
  credentials.json    generated passwords and keys (mode 0600)
  env                 what a team member sources to use the stack (mode 0600)
  postgres/           the PostgreSQL cluster (Prefect's, MLflow's and MLflow auth's databases)
  storage/            the S3 server's folder: bucket `mlflow` (artifacts), bucket `dvc` (remote)
  prefect/            PREFECT_HOME of the server (lease storage survives a restart)
  mlflow/             the basic-auth app's config
  git/vaegan-ops.git  the team's git remote on one machine (a bare repository)
  run/*.pid           one pid file per server and worker
  logs/*.log          one log per server and worker
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from vaegan.artifacts.atomic_io import write_text
from vaegan.errors import ConfigError

DEFAULT_ROOT = ".team"


@dataclass(frozen=True)
class Ports:
    """The address the servers bind to and their ports."""

    host: str = "127.0.0.1"
    postgres: int = 55432
    s3: int = 9900
    mlflow: int = 5500
    prefect: int = 4400

    def named(self) -> dict[str, int]:
        return {"postgres": self.postgres, "s3": self.s3, "mlflow": self.mlflow, "prefect": self.prefect}


@dataclass(frozen=True)
class TeamLayout:
    root: Path

    @classmethod
    def at(cls, root: str | Path = DEFAULT_ROOT) -> TeamLayout:
        return cls(Path(root).resolve())

    @property
    def stack_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def credentials_file(self) -> Path:
        return self.root / "credentials.json"

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    @property
    def postgres_dir(self) -> Path:
        return self.root / "postgres"

    @property
    def storage_dir(self) -> Path:
        return self.root / "storage"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"

    @property
    def git_remote(self) -> Path:
        return self.root / "git" / "vaegan-ops.git"

    def workspaces(self, worker: str) -> Path:
        """Where `worker`'s flow runs make their temporary folders (each run's clone)."""
        return self.root / "workspaces" / worker

    def pid_file(self, name: str) -> Path:
        return self.root / "run" / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def read_ports(self) -> Ports | None:
        """The ports of the first `up`, None before it."""
        if not self.stack_file.is_file():
            return None
        try:
            return Ports(**json.loads(self.stack_file.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{self.stack_file}: not a stack file of this version ({exc})") from exc

    def write_ports(self, ports: Ports) -> None:
        write_text(self.stack_file, json.dumps(asdict(ports), indent=2) + "\n")
