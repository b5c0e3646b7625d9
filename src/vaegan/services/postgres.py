"""A PostgreSQL cluster in a folder of the project's, run with the system's PostgreSQL binaries.

`initdb` and `pg_ctl` refuse to run as root: started as root, the cluster belongs to an unprivileged
user (`nobody` by default) and every PostgreSQL program runs as that user. The server listens on
TCP only (no Unix socket: the project's folders can be deeper than a socket path may be long),
password authentication (scram-sha-256) for every connection, one superuser with a generated
password.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2

from vaegan.errors import first_line
from vaegan.services.daemons import ServiceError

DEFAULT_UNPRIVILEGED_USER = "nobody"
START_TIMEOUT_S = 60


def find_binaries() -> Path:
    """The folder of `initdb`/`pg_ctl`: PATH first, else the newest /usr/lib/postgresql/N/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_major_version)
    if not candidates:
        raise ServiceError(
            "PostgreSQL's server programs (initdb, pg_ctl) are not installed: "
            "install them (Debian: apt-get install postgresql-15) or point PATH at them"
        )
    return Path(candidates[-1]).parent


def _major_version(path: str) -> int:
    part = Path(path).parts[-3]
    return int(part) if part.isdigit() else 0


def service_user() -> str | None:
    """The user PostgreSQL runs as: None (this user) unless we are root, then `nobody` (or
    $VAEGAN_PG_USER)."""
    if os.geteuid() != 0:
        return None
    return os.environ.get("VAEGAN_PG_USER", DEFAULT_UNPRIVILEGED_USER)


@dataclass(frozen=True)
class Cluster:
    """A cluster folder, the TCP address it listens on and its superuser."""

    data_dir: Path
    log_file: Path
    host: str
    port: int
    superuser: str
    password: str

    def url(self, database: str, driver: str = "postgresql") -> str:
        """A SQLAlchemy/libpq URL of `database` for the superuser (`driver` e.g. postgresql+asyncpg)."""
        return f"{driver}://{self.superuser}:{self.password}@{self.host}:{self.port}/{database}"

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def init(self) -> None:
        """`initdb` the cluster (once): the superuser with its password, scram-sha-256 everywhere."""
        user = service_user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        _hand_over(self.data_dir, user, mode=0o700)
        _hand_over(self.log_file, user, mode=0o600)
        with tempfile.NamedTemporaryFile("w", prefix="pgpass-", delete=False) as pwfile:
            pwfile.write(self.password + "\n")
        try:
            _hand_over(Path(pwfile.name), user, mode=0o600)
            self._run(
                "initdb",
                "-D", str(self.data_dir),
                "-U", self.superuser,
                f"--pwfile={pwfile.name}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            )  # fmt: skip
        finally:
            os.unlink(pwfile.name)

    def start(self) -> None:
        """`pg_ctl start` on 127.0.0.1 (or the given host) and the port; waits until it accepts."""
        self._run("pg_ctl", "start", *self._start_args())

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w")

    def restart(self, mode: str = "fast") -> None:
        """`pg_ctl restart -m mode` (fast: open transactions roll back, sessions are cut); waits until
        it accepts again."""
        self._run("pg_ctl", "restart", "-m", mode, *self._start_args())

    def _start_args(self) -> list[str]:
        options = f"-c listen_addresses={self.host} -p {self.port} -c unix_socket_directories=''"
        return [
            "-D", str(self.data_dir), "-l", str(self.log_file),
            "-o", options, "-w", "-t", str(START_TIMEOUT_S),
        ]  # fmt: skip

    def pid(self) -> int | None:
        """The postmaster's pid when it runs (its postmaster.pid names a live process), else None."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def running(self) -> bool:
        return self.pid() is not None

    @contextlib.contextmanager
    def admin_cursor(self) -> Iterator[Any]:
        """An autocommit cursor of the superuser on database `postgres`; ServiceError when refused."""
        try:
            connection = psycopg2.connect(self.url("postgres"), connect_timeout=10)
        except psycopg2.Error as exc:
            raise ServiceError(f"PostgreSQL on {self.host}:{self.port} refused: {first_line(exc)}") from exc
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                yield cursor
        finally:
            connection.close()

    def ensure_database(self, name: str) -> bool:
        """Create database `name` unless it exists; True when it was created."""
        with self.admin_cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone():
                return False
            cursor.execute(f'CREATE DATABASE "{name}"')
        return True

    def ensure_role(self, role: str, password: str, database: str) -> None:
        """A login role with `password` that may connect to `database` and nothing else."""
        with self.admin_cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            verb = "ALTER" if cursor.fetchone() else "CREATE"
            cursor.execute(f'{verb} ROLE "{role}" LOGIN PASSWORD %s', (password,))
            cursor.execute(f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC')
            cursor.execute(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"')

    def _run(self, program: str, *args: str) -> None:
        binary = find_binaries() / program
        done = subprocess.run(
            [str(binary), *args],
            capture_output=True,
            text=True,
            user=service_user(),
            cwd="/",
            check=False,
        )
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise ServiceError(
                f"PostgreSQL {program} failed (exit {done.returncode}): {' / '.join(detail[-3:])}"
                f"; log: {self.log_file}"
            )


def _hand_over(path: Path, user: str | None, mode: int) -> None:
    """Give `path` to `user` (when running as root) with `mode`; ServiceError when `user` cannot
    reach it (a parent folder closed to other users, such as a 0700 temporary folder)."""
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        blocked = _first_closed_parent(path, user)
        if blocked is not None:
            raise ServiceError(
                f"PostgreSQL runs as {user!r} (it refuses root), and {user!r} cannot enter {blocked}: "
                "put the team folder where other users can reach it, or set VAEGAN_PG_USER"
            )
    os.chmod(path, mode)


def _first_closed_parent(path: Path, user: str) -> Path | None:
    for parent in reversed(path.resolve().parents):
        probe = subprocess.run(["test", "-x", str(parent)], user=user, check=False)
        if probe.returncode != 0:
            return parent
    return None
