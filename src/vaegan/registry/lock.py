"""The lock that serialises the registry's read-decide-write sections: a PostgreSQL advisory lock
that every machine meets in team mode, else a file lock (fcntl.flock).

Moving an alias on two registered models is two requests, and deciding a promotion reads before
it writes; MLflow offers no transaction across them. Every writer of the `challenger`/`champion`
aliases (`vaegan register`, `vaegan promote`) therefore holds this lock exclusively, and readers
of the champion pair hold it shared, so nobody sees a half-moved pair.

Where the lock file lives:

- `sqlite:///path/mlflow.db`: `path/mlflow.db.registry.lock`, next to the database, so every
  process on the machine that uses that store meets the same lock.
- a server with `VAEGAN_REGISTRY_LOCK_URL` set (the team stack's env file sets it): a PostgreSQL
  advisory lock, exclusive or shared, in that database. Every machine that uses the team's registry
  meets it, whatever host name it spells the server with. The lock lives as long as its
  connection: a process that dies releases it, and a connection that broke while the lock was held
  is reported when the section ends (the aliases are re-read after every move: `check_alias_pair`).
- any other URI (an `mlflow server`, a database server): one file per URI under
  `$XDG_CACHE_HOME/vaegan/locks/` (default `~/.cache/vaegan/locks/`). This serialises the
  processes of one machine only.

flock is advisory and per open file description; it is released when the process dies, so a
crashed promotion never leaves a stale lock behind. It is unreliable on some network file systems.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2

from vaegan.errors import RegistryError, ServiceUnavailable, first_line

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
_POLL_S = 0.05
LOCK_URL_VARIABLE = "VAEGAN_REGISTRY_LOCK_URL"
REGISTRY_LOCK_KEY = (0x7661_6567, 1)  # ("vaeg", 1): the registry's key in the lock database


def lock_path_for(uri: str) -> Path:
    """The lock file that guards the registry behind tracking URI `uri`."""
    if uri.startswith("sqlite:///"):
        db_path = uri.removeprefix("sqlite:///").split("?", 1)[0]
        if db_path and db_path != ":memory:":
            return Path(db_path).resolve().with_name(Path(db_path).name + ".registry.lock")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(uri.rstrip("/").encode("utf-8")).hexdigest()[:16]
    return cache / "vaegan" / "locks" / f"registry-{key}.lock"


def _is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


@contextlib.contextmanager
def registry_lock(uri: str, *, shared: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[str]:
    """Hold the registry lock of `uri` (exclusive, or shared for readers) for the `with` body; yields
    what the lock is, for messages."""
    lock_database = os.environ.get(LOCK_URL_VARIABLE)
    if lock_database and not _is_local(uri):
        with advisory_lock(lock_database, shared=shared, timeout_s=timeout_s) as held:
            yield held
    else:
        with file_lock(lock_path_for(uri), shared=shared, timeout_s=timeout_s) as path:
            yield str(path)


@contextlib.contextmanager
def advisory_lock(database_url: str, *, shared: bool, timeout_s: float) -> Iterator[str]:
    """A PostgreSQL advisory lock (session level) on REGISTRY_LOCK_KEY in `database_url`."""
    where = _without_password(database_url)
    try:
        connection = psycopg2.connect(database_url, connect_timeout=10)
    except psycopg2.Error as exc:
        raise ServiceUnavailable(
            f"the registry lock's database {where} is not reachable: {first_line(exc)}"
        ) from exc
    connection.autocommit = True
    kind = "shared" if shared else "exclusive"
    try:
        with connection.cursor() as cursor:
            try_lock = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
            _poll(
                lambda: _fetch_true(cursor, f"SELECT {try_lock}(%s, %s)", REGISTRY_LOCK_KEY), where, timeout_s
            )
            try:
                yield f"{kind} advisory lock {REGISTRY_LOCK_KEY} on {where}"
            finally:
                unlock = "pg_advisory_unlock_shared" if shared else "pg_advisory_unlock"
                try:
                    released = _fetch_true(cursor, f"SELECT {unlock}(%s, %s)", REGISTRY_LOCK_KEY)
                except psycopg2.Error as exc:
                    released = False
                    log.warning("registry lock on %s: %s", where, first_line(exc))
                if not released:
                    log.warning(
                        "the registry lock on %s was lost while held (its connection broke); "
                        "the aliases were re-read after the move",
                        where,
                    )
    except psycopg2.Error as exc:
        raise ServiceUnavailable(f"the registry lock's database {where} failed: {first_line(exc)}") from exc
    finally:
        connection.close()


def _fetch_true(cursor: Any, query: str, key: tuple[int, int]) -> bool:
    cursor.execute(query, key)
    row = cursor.fetchone()
    return bool(row and row[0])


def _without_password(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1@", url)


def _poll(take: Callable[[], bool], where: str | Path, timeout_s: float) -> None:
    """Call `take` until it returns True; RegistryError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    waited = False
    while not take():
        if not waited:
            log.info("waiting for the registry lock %s (another promotion holds it)", where)
            waited = True
        if time.monotonic() > deadline:
            raise RegistryError(
                f"registry lock {where} still held after {timeout_s:g} s; "
                "is another `vaegan promote` or `vaegan register` stuck?"
            )
        time.sleep(_POLL_S)


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool, timeout_s: float) -> Iterator[Path]:
    """An flock on `path`, exclusive or shared."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise RegistryError(f"cannot open the registry lock file {path}: {exc}") from exc
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX

    def take() -> bool:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    try:
        _poll(take, path, timeout_s)
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
