"""A file lock that serialises the registry's read-decide-write sections (fcntl.flock).

Moving an alias on two registered models is two requests, and deciding a promotion reads before
it writes; MLflow offers no transaction across them. Every writer of the `challenger`/`champion`
aliases (`vaegan register`, `vaegan promote`) therefore holds this lock exclusively, and readers
of the champion pair hold it shared, so nobody sees a half-moved pair.

Where the lock file lives:

- `sqlite:///path/mlflow.db`: `path/mlflow.db.registry.lock`, next to the database, so every
  process on the machine that uses that store meets the same lock.
- any other URI (an `mlflow server`, a database server): one file per URI under
  `$XDG_CACHE_HOME/vaegan/locks/` (default `~/.cache/vaegan/locks/`). This serialises the
  processes of one machine only; across machines, run promotions through one Prefect deployment
  with a concurrency limit of 1 (see docs/registry.md).

flock is advisory and per open file description; it is released when the process dies, so a
crashed promotion never leaves a stale lock behind. It is unreliable on some network file systems.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from vaegan.errors import RegistryError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
_POLL_S = 0.05


def lock_path_for(uri: str) -> Path:
    """The lock file that guards the registry behind tracking URI `uri`."""
    if uri.startswith("sqlite:///"):
        db_path = uri.removeprefix("sqlite:///").split("?", 1)[0]
        if db_path and db_path != ":memory:":
            return Path(db_path).resolve().with_name(Path(db_path).name + ".registry.lock")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(uri.rstrip("/").encode("utf-8")).hexdigest()[:16]
    return cache / "vaegan" / "locks" / f"registry-{key}.lock"


@contextlib.contextmanager
def registry_lock(uri: str, *, shared: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Path]:
    """Hold the registry lock of `uri` (exclusive, or shared for readers) for the `with` body."""
    path = lock_path_for(uri)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise RegistryError(f"cannot open the registry lock file {path}: {exc}") from exc
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    deadline = time.monotonic() + timeout_s
    waited = False
    try:
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    log.info("waiting for the registry lock %s (another promotion holds it)", path)
                    waited = True
                if time.monotonic() > deadline:
                    raise RegistryError(
                        f"registry lock {path} still held after {timeout_s:g} s; "
                        "is another `vaegan promote` or `vaegan register` stuck?"
                    ) from None
                time.sleep(_POLL_S)
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
