"""The team stack: PostgreSQL, an S3 server, the MLflow tracking server and the Prefect server, plus
process workers, all started from one state folder and bound to 127.0.0.1 unless a host is given.

`up` is idempotent: a server that runs (its pid file names a live process) is kept, a stale pid file
(the previous run was killed) is removed with a line saying so, and a port taken by a program of
somebody else's stops the whole `up` before anything starts. When a server fails to start, every
server this `up` started is stopped again: nothing half-started is left running. `down` stops the
workers and servers and leaves every byte of data in place.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vaegan.services.daemons import Daemon, ServiceError, answers, port_in_use, wait_until
from vaegan.services.postgres import Cluster
from vaegan.team import environment as env
from vaegan.team.credentials import Credentials, load_or_create, write_private
from vaegan.team.layout import Ports, TeamLayout

POOLS = ("vaegan-cpu", "vaegan-gpu")
START_TIMEOUT_S = float(os.environ.get("VAEGAN_TEAM_START_TIMEOUT", "300"))
SERVERS = ("s3", "mlflow", "prefect")
DATABASES = ("prefect", "mlflow", "mlflow_auth", env.LOCK_DATABASE)
# MLflow's basic-auth app checks the password hash (scrypt: ~0.25 s of CPU) on every request
# unless it caches good credentials; a changed or revoked password then works for at most this long.
AUTH_CACHE_TTL_S = 300


def _bin(name: str) -> str:
    """A program of this interpreter's environment (mlflow, prefect, rclone)."""
    return str(Path(sys.executable).parent / name)


@dataclass
class Stack:
    layout: TeamLayout
    ports: Ports
    credentials: Credentials
    on_line: Callable[[str], None] = print
    started: list[str] = field(default_factory=list)

    @classmethod
    def open(
        cls, layout: TeamLayout, ports: Ports | None = None, on_line: Callable[[str], None] = print
    ) -> Stack:
        """The stack of `layout`: the ports of its first `up` (or `ports` for a new one)."""
        known = layout.read_ports()
        chosen = known or ports or Ports()
        if known and ports and ports != known:
            on_line(f"the stack in {layout.root} was set up with {known}; keeping those ports")
        layout.root.mkdir(parents=True, exist_ok=True)
        os.chmod(layout.root, 0o755)  # PostgreSQL's unprivileged user must enter it
        return cls(layout, chosen, load_or_create(layout.credentials_file), on_line)

    # --- the parts -------------------------------------------------------------------------------

    @property
    def cluster(self) -> Cluster:
        return env.cluster(self.layout, self.ports, self.credentials)

    def daemon(self, name: str) -> Daemon:
        return Daemon(name, self.layout.pid_file(name), self.layout.log_file(name))

    def member_environment(self) -> dict[str, str]:
        return env.member_environment(self.layout, self.ports, self.credentials)

    def urls(self) -> dict[str, str]:
        return {
            "postgres": f"postgresql://{self.ports.host}:{self.ports.postgres}",
            "s3": env.s3_endpoint(self.ports),
            "mlflow": f"http://{self.ports.host}:{self.ports.mlflow}",
            "prefect": f"http://{self.ports.host}:{self.ports.prefect}",
        }

    def server_up(self, name: str) -> bool:
        urls = self.urls()
        if name == "postgres":
            return self.cluster.running()
        if name == "s3":
            return answers(urls["s3"], ok_only=False)
        if name == "mlflow":
            return answers(urls["mlflow"] + "/health")
        return answers(urls["prefect"] + "/api/health", self.credentials.prefect_auth)

    # --- up ----------------------------------------------------------------------------------------

    def up(self, workers_per_pool: int = 1, repo: Path | None = None) -> None:
        """Start whatever of the stack is not running, then deploy the flows of `repo` (default: the
        working directory); on a failure stop what this call started."""
        self._clear_stale()
        self._check_ports()
        self.layout.write_ports(self.ports)
        try:
            self._start_postgres()
            for name in SERVERS:
                self._start_server(name)
            self._configure_prefect()
            self._deploy(repo or Path.cwd())
            for pool in POOLS:
                for index in range(workers_per_pool):
                    self.start_worker(pool, index)
            env.write_env_file(self.layout, self.member_environment())
        except BaseException:
            self._stop_started()
            raise

    def _clear_stale(self) -> None:
        """Remove the pid files whose process is gone (a reboot, a kill -9), saying so."""
        for name in [*SERVERS, *self.workers()]:
            daemon = self.daemon(name)
            if daemon.clear_stale():
                self.on_line(f"{name:<10} stale pid file {daemon.pid_file} (its process is gone): removed")
                if name.startswith("worker-"):  # whether or not this `up` starts it again
                    self._sweep(self.layout.workspaces(name), name)

    def _check_ports(self) -> None:
        """ServiceError before anything starts when a port we need is taken by another program."""
        for name, port in self.ports.named().items():
            ours = self.cluster.running() if name == "postgres" else self.daemon(name).pid() is not None
            if not ours and port_in_use(self.ports.host, port):
                raise ServiceError(
                    f"port {port} on {self.ports.host} ({name}) is taken by another program: stop it, "
                    f"or start a new stack with another port (--{name}-port) in another folder (--dir)"
                )

    def _start_postgres(self) -> None:
        cluster = self.cluster
        if cluster.running():
            self.on_line(f"postgres   running (pid {cluster.pid()})")
        else:
            if not cluster.initialised():
                self.on_line(f"postgres   initialising {cluster.data_dir}")
                cluster.init()
            cluster.start()
            self.started.append("postgres")
            self.on_line(f"postgres   started on {self.ports.host}:{self.ports.postgres}")
        for database in DATABASES:
            if cluster.ensure_database(database):
                self.on_line(f"postgres   created database {database}")
        cluster.ensure_role(env.LOCK_ROLE, self.credentials.lock_password, env.LOCK_DATABASE)

    def restart(self, name: str) -> None:
        """Restart one server in place (PostgreSQL with `pg_ctl restart -m fast`), e.g. after an
        upgrade; the clients reconnect (MLflow's and Prefect's database pools ping before use, their
        clients retry). Prefect's work pools are paused while its server is away."""
        if name == "postgres":
            if not self.cluster.running():
                raise ServiceError("postgres is not running: start the stack (make serve-team)")
            self.cluster.restart("fast")
            self.on_line(f"postgres   restarted on {self.ports.host}:{self.ports.postgres}")
            return
        if self.daemon(name).pid() is None:
            raise ServiceError(f"{name} is not running: start the stack (make serve-team)")
        paused = self._pause_pools() if name == "prefect" else []
        try:
            self.daemon(name).stop()
            self.on_line(f"{name:<10} stopped")
            self._start_server(name)
        finally:
            if paused:
                self._resume_pools(paused)

    def _start_server(self, name: str) -> None:
        daemon = self.daemon(name)
        pid = daemon.pid()
        if pid is not None:
            self.on_line(f"{name:<10} running (pid {pid})")
            return
        argv, environment = self._launch(name)
        process = daemon.start(argv, env=environment, cwd=self.layout.root)
        self.started.append(name)
        wait_until(
            lambda: self.server_up(name),
            daemon=daemon,
            process=process,
            timeout_s=START_TIMEOUT_S,
            what=f"the {name} server",
        )
        self.on_line(f"{name:<10} started on {self.urls()[name]} (pid {process.pid}, log {daemon.log_file})")

    def _launch(self, name: str) -> tuple[list[str], dict[str, str]]:
        """The command line and environment of server `name`."""
        if name == "s3":
            return self._s3_argv(), {**os.environ, "RCLONE_CONFIG": os.devnull}
        if name == "mlflow":
            return self._mlflow_argv(), self._mlflow_env()
        return self._prefect_argv(), self._prefect_env()

    def _s3_argv(self) -> list[str]:
        for bucket in (env.DVC_BUCKET, env.MLFLOW_BUCKET):
            (self.layout.storage_dir / bucket).mkdir(parents=True, exist_ok=True)
        key = f"{self.credentials.s3_access_key},{self.credentials.s3_secret_key}"
        return [
            _bin("rclone"), "serve", "s3", str(self.layout.storage_dir),
            "--addr", f"{self.ports.host}:{self.ports.s3}", "--auth-key", key,
            "--etag-hash", "MD5", "--log-level", "NOTICE",
        ]  # fmt: skip

    def _mlflow_argv(self) -> list[str]:
        return [
            _bin("mlflow"), "server", "--app-name", "basic-auth",
            "--host", self.ports.host, "--port", str(self.ports.mlflow),
            "--backend-store-uri", self.cluster.url("mlflow", "postgresql+psycopg2"),
            "--artifacts-destination", f"s3://{env.MLFLOW_BUCKET}",
            "--workers", "2",
        ]  # fmt: skip

    def _mlflow_env(self) -> dict[str, str]:
        config = self.layout.mlflow_dir / "basic_auth.ini"
        write_private(
            config,
            "[mlflow]\n"
            "default_permission = EDIT\n"
            f"database_uri = {self.cluster.url('mlflow_auth', 'postgresql+psycopg2')}\n"
            f"admin_username = {self.credentials.mlflow_user}\n"
            f"admin_password = {self.credentials.mlflow_password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}\n",
        )
        return {
            **os.environ,
            **env.s3_environment(self.ports, self.credentials),
            **env.TELEMETRY_OFF,
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self.credentials.flask_secret,
        }

    def _prefect_argv(self) -> list[str]:
        return [
            _bin("prefect"),
            "server",
            "start",
            "--host",
            self.ports.host,
            "--port",
            str(self.ports.prefect),
        ]

    def _prefect_env(self) -> dict[str, str]:
        self.layout.prefect_home.mkdir(parents=True, exist_ok=True)
        return {
            **os.environ,
            **env.TELEMETRY_OFF,
            "PREFECT_HOME": str(self.layout.prefect_home),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": self.cluster.url("prefect", "postgresql+asyncpg"),
            "PREFECT_SERVER_API_AUTH_STRING": self.credentials.prefect_auth,
            "PREFECT_API_AUTH_STRING": self.credentials.prefect_auth,
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
            "PREFECT_API_URL": f"{self.urls()['prefect']}/api",
        }

    def _configure_prefect(self) -> None:
        """Work pools and the zombie-run automation, through Prefect's own client (a subprocess with
        the member environment: Prefect reads its settings when it is first imported)."""
        for line in self._prefect_setup("setup", *POOLS).splitlines():
            self.on_line(f"prefect    {line}")

    def _pause_pools(self) -> list[str]:
        """Pause the work pools before the Prefect server restarts, so that no run starts into the
        gap (prefect_setup says why); the pools paused."""
        paused = self._prefect_setup("pause", *POOLS).split()
        if paused:
            self.on_line(f"prefect    paused work pools {', '.join(paused)}; no flow run is starting")
        return paused

    def _resume_pools(self, pools: list[str]) -> None:
        self._prefect_setup("resume", *pools)
        self.on_line(f"prefect    resumed work pools {', '.join(pools)}")

    def _prefect_setup(self, *args: str) -> str:
        return self._as_member([sys.executable, "-m", "vaegan.team.prefect_setup", *args], Path.cwd())

    def _deploy(self, repo: Path) -> None:
        """Seed the team's git remote with this checkout's HEAD (when it has no `main` yet) and
        deploy prefect.yaml's deployments; their runs clone that remote."""
        remote = self.layout.git_remote
        if not (remote / "HEAD").is_file():
            _git_or_fail(Path.cwd(), "init", "--quiet", "--bare", "--initial-branch=main", str(remote))
            self.on_line(f"git        created the team's git remote {remote}")
        if _git(remote, "rev-parse", "--verify", "--quiet", "refs/heads/main").returncode != 0:
            _git_or_fail(repo, "push", "--quiet", remote.as_uri(), "HEAD:refs/heads/main")
            self.on_line(f"git        pushed this checkout's HEAD to {remote} as main")
        self._as_member([_bin("prefect"), "--no-prompt", "deploy", "--all"], repo)
        self.on_line("prefect    deployed retrain/on-demand, check-champion/daily, reproduce/weekly")

    def _as_member(self, argv: list[str], cwd: Path) -> str:
        """Run `argv` with the member environment; its output, ServiceError naming it when it fails."""
        done = subprocess.run(
            argv, cwd=cwd, env={**os.environ, **self.member_environment()}, capture_output=True, text=True
        )
        if done.returncode != 0:
            command = " ".join(Path(argv[0]).name if i == 0 else arg for i, arg in enumerate(argv[:4]))
            raise ServiceError(f"{command} failed: {(done.stderr or done.stdout).strip()[-800:]}")
        return done.stdout

    def start_worker(self, pool: str, index: int | None = None) -> str:
        """Start a process worker on `pool` (the next free index unless given); its name."""
        if index is None:
            index = next(i for i in range(1000) if self.daemon(f"worker-{pool}-{i}").pid() is None)
        name = f"worker-{pool}-{index}"
        daemon = self.daemon(name)
        pid = daemon.pid()
        if pid is not None:
            self.on_line(f"{name} running (pid {pid})")
            return name
        workspaces = self.layout.workspaces(name)
        self._sweep(workspaces, name)
        argv = [
            _bin("prefect"), "worker", "start", "--pool", pool, "--type", "process",
            "--name", f"{os.uname().nodename}-{name}", "--limit", "1",
        ]  # fmt: skip
        environment = env.worker_environment(os.environ, self.member_environment())
        # each flow run's temporary folder (its clone) is made under the worker's own folder
        process = daemon.start(argv, env={**environment, "TMPDIR": str(workspaces)}, cwd=workspaces)
        self.started.append(name)
        self.on_line(f"{name} started (pid {process.pid}, log {daemon.log_file})")
        return name

    def _sweep(self, workspaces: Path, name: str) -> None:
        """Remove what a dead worker's runs left in its folder (a killed worker cannot clean up;
        a worker that is starting runs nothing yet)."""
        workspaces.mkdir(parents=True, exist_ok=True)
        for leftover in sorted(workspaces.iterdir()):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink()
            self.on_line(f"{name} removed {leftover} (left by a run whose worker died)")

    # --- down and status ----------------------------------------------------------------------------

    def workers(self) -> list[str]:
        return sorted(path.stem for path in (self.layout.root / "run").glob("worker-*.pid"))

    def down(self) -> list[str]:
        """Stop workers, servers and PostgreSQL (in that order); the names of those that ran."""
        stopped = [name for name in [*self.workers(), *reversed(SERVERS)] if self.daemon(name).stop()]
        if self.cluster.running():
            self.cluster.stop()
            stopped.append("postgres")
        return stopped

    def _stop_started(self) -> None:
        for name in reversed(self.started):
            if name == "postgres":
                self.cluster.stop()
            else:
                self.daemon(name).stop()
            self.on_line(f"{name:<10} stopped again (this start failed)")
        self.started.clear()

    def status(self) -> list[tuple[str, str, str]]:
        """(name, state, where) for every server and worker."""
        rows = []
        cluster_pid = self.cluster.pid()
        rows.append(("postgres", _state(cluster_pid, self.server_up("postgres")), self.urls()["postgres"]))
        for name in SERVERS:
            pid = self.daemon(name).pid()
            rows.append((name, _state(pid, pid is not None and self.server_up(name)), self.urls()[name]))
        for name in self.workers():
            pid = self.daemon(name).pid()
            rows.append((name, _state(pid, pid is not None), str(self.layout.log_file(name))))
        return rows


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)


def _git_or_fail(repo: Path, *args: str) -> None:
    done = _git(repo, *args)
    if done.returncode != 0:
        raise ServiceError(f"git {args[0]} failed: {(done.stderr or done.stdout).strip()}")


def _state(pid: int | None, healthy: bool) -> str:
    if pid is None:
        return "stopped"
    return f"up (pid {pid})" if healthy else f"not answering (pid {pid})"
