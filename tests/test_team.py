"""Team mode for real: `python -m vaegan.team up` starts PostgreSQL, the S3 server, MLflow and Prefect
with auth and a worker per pool, in a temporary folder on free ports of 127.0.0.1; a retrain submitted
through the Prefect API runs on a worker in its own clone and leaves everything on the team's servers;
many runs at once survive server restarts and a worker killed mid-training; the registry lock is a
PostgreSQL advisory lock that a killed holder frees; bad input is one line.

One stack serves the module (its start costs ~30 s cold); `down` and a second `up` run last.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bench.team import free_ports, read_env_file
from vaegan.artifacts.provenance import sha256_file
from vaegan.errors import RegistryError
from vaegan.registry.lock import registry_lock

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("postgres", "s3", "mlflow", "prefect")


def team_command(
    state: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vaegan.team", "--dir", str(state), *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def up_args(ports: list[int]) -> list[str]:
    names = ("--postgres-port", "--s3-port", "--mlflow-port", "--prefect-port")
    return ["up", *(arg for name, port in zip(names, ports, strict=True) for arg in (name, str(port)))]


def http_status(url: str, auth: str | None = None, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def alive(pid: int) -> bool:
    """A live process (a zombie that nobody reaped yet is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pids(state: Path) -> dict[str, int]:
    return {path.stem: json.loads(path.read_text())["pid"] for path in (state / "run").glob("*.pid")}


def team_registry(team: Team, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """A client of the team's MLflow server, for tracking and registry alike (an earlier test of
    this process may have set a process-wide registry URI), with the member's credentials."""
    for name, value in team.env.items():
        if name.startswith(("MLFLOW_", "AWS_")):
            monkeypatch.setenv(name, value)
    uri = team.env["MLFLOW_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@dataclass
class Team:
    root: Path
    state: Path
    ports: list[int]
    env: dict[str, str]  # the env file's variables on top of this process's environment
    up_env: dict[str, str]  # what `up` and `worker` run with: their workers inherit it


@pytest.fixture(scope="module")
def team() -> Iterator[Team]:
    # PostgreSQL runs as an unprivileged user when the tests run as root: its folder must be
    # reachable by others, which pytest's 0700 temporary root is not
    root = Path(tempfile.mkdtemp(prefix="vaegan-team-test-", dir="/tmp"))
    os.chmod(root, 0o755)
    state = root / "state"
    ports = free_ports(4)
    # The workers (children of `up`) train on one thread each: several runs share the 2 cores
    # without OpenMP threads spinning against each other.
    up_env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = team_command(state, *up_args(ports), env=up_env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        env = {**os.environ, **read_env_file(state / "env")}
        yield Team(root, state, ports, env, up_env)
    finally:
        team_command(state, "down")
        shutil.rmtree(root, ignore_errors=True)


def test_up_starts_every_server_bound_to_localhost_with_private_credentials(team: Team) -> None:
    status = team_command(team.state, "status")
    assert status.returncode == 0, status.stdout
    rows = {line.split()[0]: line for line in status.stdout.splitlines()}
    assert set(rows) == {*SERVERS, "worker-vaegan-cpu-0", "worker-vaegan-gpu-0"}
    assert all(" up (pid " in row for row in rows.values())
    for worker in ("worker-vaegan-cpu-0", "worker-vaegan-gpu-0"):  # polls every 2 s, not 10
        environ = Path(f"/proc/{pids(team.state)[worker]}/environ").read_bytes().split(b"\0")
        assert b"PREFECT_WORKER_QUERY_SECONDS=2" in environ, worker
    for name in ("env", "credentials.json"):
        assert (team.state / name).stat().st_mode & 0o777 == 0o600
    for port in team.ports:  # bound to 127.0.0.1 only
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) == 0
    assert team.env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{team.ports[2]}"
    assert team.env["PREFECT_API_URL"] == f"http://127.0.0.1:{team.ports[3]}/api"


def test_mlflow_and_prefect_refuse_requests_without_credentials(team: Team) -> None:
    mlflow = f"{team.env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1"
    mlflow_auth = f"{team.env['MLFLOW_TRACKING_USERNAME']}:{team.env['MLFLOW_TRACKING_PASSWORD']}"
    assert http_status(mlflow) == 401
    assert http_status(mlflow, "someone:wrong") == 401
    assert http_status(mlflow, mlflow_auth) == 200
    prefect = f"{team.env['PREFECT_API_URL']}/flows/filter"
    assert http_status(prefect, data=b"{}") == 401
    assert http_status(prefect, "vaegan:wrong", data=b"{}") == 401
    assert http_status(prefect, team.env["PREFECT_API_AUTH_STRING"], data=b"{}") == 200


def s3_buckets(team: Team, secret: str | None = None) -> list[str]:
    client = boto3.client(
        "s3",
        endpoint_url=team.env["VAEGAN_DVC_ENDPOINT_URL"],
        aws_access_key_id=team.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=secret or team.env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    return sorted(bucket["Name"] for bucket in client.list_buckets()["Buckets"])


def test_the_s3_server_refuses_requests_without_the_key(team: Team) -> None:
    assert 400 <= http_status(team.env["VAEGAN_DVC_ENDPOINT_URL"] + "/dvc") < 500  # unsigned
    with pytest.raises(
        botocore.exceptions.ClientError, match="SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"
    ):
        s3_buckets(team, secret="wrong")
    assert s3_buckets(team) == ["dvc", "mlflow"]


def test_a_second_up_finds_the_running_stack(team: Team) -> None:
    before = pids(team.state)
    again = team_command(team.state, "up")
    assert again.returncode == 0, again.stderr
    for name in ("s3", "mlflow", "prefect"):
        assert f"{name:<10} running (pid {before[name]})" in again.stdout
    assert "automation" not in again.stdout  # the zombie automation is current: left as it is
    assert pids(team.state) == before


def test_a_killed_server_leaves_a_stale_pid_file_that_up_replaces(team: Team) -> None:
    old = pids(team.state)["s3"]
    os.killpg(old, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{old}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    again = team_command(team.state, "up")
    assert again.returncode == 0, again.stderr
    assert f"stale pid file {team.state / 'run' / 's3.pid'} (its process is gone): removed" in again.stdout
    assert pids(team.state)["s3"] != old
    assert s3_buckets(team) == ["dvc", "mlflow"]  # up again, on the same folder


def test_a_taken_port_stops_up_before_anything_starts(team: Team) -> None:
    state = team.root / "second"
    ports = free_ports(4)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports[2]))
        squatter.listen()
        started = team_command(state, *up_args(ports))
    assert started.returncode == 2
    err = started.stderr.strip().splitlines()
    assert err == [
        f"vaegan team up: error: port {ports[2]} on 127.0.0.1 (mlflow) is taken by another program: stop it, "
        "or start a new stack with another port (--mlflow-port) in another folder (--dir)"
    ]
    assert not (state / "postgres").exists() and pids(state) == {}


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MLFLOW_TRACKING_PASSWORD", "wrong", "refused the credentials (MLFLOW_TRACKING_USERNAME"),
        ("MLFLOW_TRACKING_URI", "http://127.0.0.1:{closed}", "is not reachable"),
    ],
)
def test_a_wrong_password_or_an_unreachable_server_is_one_line_and_exit_2(
    team: Team, tmp_path: Path, variable: str, value: str, message: str
) -> None:
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    env = {**team.env, variable: value.format(closed=free_ports(1)[0])}
    done = subprocess.run(
        [sys.executable, "-m", "vaegan", "promote", "--dry-run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


HOLD_LOCK = """
import sys, time
from vaegan.registry.lock import registry_lock
with registry_lock(sys.argv[1], shared=sys.argv[2] == "shared"):
    print("held", flush=True)
    time.sleep(600)
"""


def hold_lock(team: Team, kind: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, team.env["MLFLOW_TRACKING_URI"], kind],
        env=team.env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_the_registry_lock_is_an_advisory_lock_that_a_killed_holder_frees(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAEGAN_REGISTRY_LOCK_URL", team.env["VAEGAN_REGISTRY_LOCK_URL"])
    # the same server by another name meets the same lock (a file lock per URI would not)
    other_name = team.env["MLFLOW_TRACKING_URI"].replace("127.0.0.1", "localhost")
    holder = hold_lock(team, "exclusive")
    try:
        with (
            pytest.raises(RegistryError, match="still held after 1 s"),
            registry_lock(other_name, shared=True, timeout_s=1),
        ):
            pass
    finally:
        holder.kill()  # SIGKILL: no unlock is ever sent; PostgreSQL frees it with the connection
        holder.wait()
    started = time.monotonic()
    with registry_lock(other_name, timeout_s=30) as held:
        assert held.startswith("exclusive advisory lock") and "vaegan_lock@" in held
    assert time.monotonic() - started < 10
    readers = [hold_lock(team, "shared"), hold_lock(team, "shared")]  # readers share it
    try:
        with pytest.raises(RegistryError, match="still held"), registry_lock(other_name, timeout_s=1):
            pass
    finally:
        for reader in readers:
            reader.kill()
            reader.wait()


def test_a_retrain_runs_on_a_worker_in_its_own_clone_and_leaves_everything_on_the_servers(
    team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "deployment", "run", "retrain/on-demand",
         "--param", "profile=smoke",
         "--watch", "--watch-timeout", "1200"],
        env=team.env, capture_output=True, text=True, timeout=1300,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", submitted.stdout)
    assert flow_run_id is not None and "Completed" in submitted.stdout, submitted.stdout[-2000:]

    # the registered champion names the flow run that made it
    client = team_registry(team, monkeypatch)
    champion = client.get_model_version_by_alias("vaegan-decoder", "champion")
    encoder = client.get_model_version_by_alias("vaegan-encoder", "champion")
    assert champion.tags["prefect.flow_run_id"] == flow_run_id.group(1)
    assert champion.tags["pair_id"] == encoder.tags["pair_id"]
    run_name = champion.tags["prefect.flow_run_name"]

    # nothing of the run is left on the worker: its clone was a temporary folder, removed (by the
    # worker once the flow's process has exited, which can be a moment after the state is final)
    deadline = time.monotonic() + 60
    while list((team.state / "workspaces").glob("*/tmp*prefect")) and time.monotonic() < deadline:
        time.sleep(1)
    assert list((team.state / "workspaces").glob("*/tmp*prefect")) == []  # (caches such as .ses stay)
    # its params.yaml, dvc.lock and metrics are the branch runs/<flow run> of the team's remote
    clone = tmp_path / "member"
    subprocess.run(
        ["git", "clone", "-q", "-b", f"runs/{run_name}", team.env["VAEGAN_GIT_REMOTE"], str(clone)],
        check=True,
    )
    params = yaml.safe_load((clone / "params.yaml").read_text())
    assert params["train"]["limit_train_images"] == 512 and params["model"]["preset"] == "seed"
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    assert "export" in lock["stages"]

    # a fresh clone with only the env file pulls the run's outputs and samples the champion
    def member(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=clone, env=team.env, capture_output=True, text=True, timeout=600)

    assert member(sys.executable, "-m", "vaegan.team", "connect").returncode == 0
    pulled = member(sys.executable, "-m", "dvc", "pull", "-q", "export")
    assert pulled.returncode == 0, pulled.stderr
    export = json.loads((clone / "metrics" / "export.json").read_text())
    assert sha256_file(clone / "models" / "onnx" / "decoder.onnx") == export["decoder"]["sha256"]
    sampled = member(
        str(Path(sys.executable).parent / "vaegan"), "sample", "--model", "models:/vaegan-decoder@champion",
        "--n", "16", "--out", str(tmp_path / "grid.png"),
    )  # fmt: skip
    assert sampled.returncode == 0, sampled.stderr
    png = (tmp_path / "grid.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24])[0] > 4 * 28  # a 4 x 4 grid of digits


def registered_versions(client: Any, name: str) -> list[Any]:
    return sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def registry_snapshot(client: MlflowClient) -> dict[str, dict[str, Any]]:
    """Every registered version of both models: its tags, its run's metrics and artifact files."""
    snapshot = {}
    for name in ("vaegan-decoder", "vaegan-encoder"):
        for version in registered_versions(client, name):
            run = client.get_run(version.run_id)
            snapshot[f"{name} v{version.version}"] = {
                "tags": version.tags,
                "metrics": run.data.metrics,
                "artifacts": sorted(artifact_files(client, version.run_id)),
            }
    return snapshot


def artifact_files(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    files = []
    for item in client.list_artifacts(run_id, path):
        files.extend(artifact_files(client, run_id, item.path) if item.is_dir else [item.path])
    return files


def pairs_whole(client: MlflowClient) -> bool:
    """`champion` and `challenger` each name one registration on both models (or on neither)."""
    for alias in ("champion", "challenger"):
        pair_ids = set()
        for name in ("vaegan-decoder", "vaegan-encoder"):
            try:
                pair_ids.add(client.get_model_version_by_alias(name, alias).tags["pair_id"])
            except MlflowException:
                pair_ids.add(None)
        if len(pair_ids) != 1:
            return False
    return True


@contextlib.contextmanager
def flow_runs_at_once(
    team: Team, spec: list[dict[str, Any]], folder: Path
) -> Iterator[subprocess.Popen[str]]:
    """bench.flow_runs submitting `spec` at once and waiting for every run (killed if the test fails
    before it ends); read its report with `flow_runs_report`."""
    (folder / "spec.json").write_text(json.dumps(spec))
    load = subprocess.Popen(
        [sys.executable, "-m", "bench.flow_runs", str(folder / "spec.json"), "2400"],
        cwd=REPO_ROOT, env=team.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield load
    finally:
        if load.poll() is None:
            load.kill()
            load.communicate()


def flow_runs_report(load: subprocess.Popen[str]) -> list[dict[str, Any]]:
    out, err = load.communicate(timeout=2500)
    assert load.returncode == 0, err[-3000:]
    return list(json.loads(out))


def story(item: dict[str, Any], run: dict[str, Any]) -> str:
    """A failed run for an assertion message: what was asked, how it ended, the end of its log."""
    return "\n".join([f"{item} -> {run['name']} {run['state_name']}: {run['message']}", *run["log_tail"]])


@pytest.mark.timeout(2700)
def test_many_runs_at_once_from_several_people_with_restarts_and_a_dead_worker_lose_nothing(
    team: Team, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """6 retrains (4 params, 2 exact repeats), 8 champion checks and 2 reproduce checks submitted at
    once through the Prefect API to 2 workers a pool, a `vaegan promote` from a plain checkout, then
    while they run `pg_ctl restart -m fast`, a restart of the S3 server, one of the Prefect server
    and `kill -9` of a worker during a train stage: its run ends Crashed within the documented time,
    the same run resubmitted completes on the other worker, `up` sweeps the dead run's clone."""
    # main becomes the first run's branch (its params and dvc.lock, outputs on S3): what the
    # scheduled checks and the retrains start from, as after a team merges a good run
    client = team_registry(team, monkeypatch)
    champion = client.get_model_version_by_alias("vaegan-decoder", "champion")
    remote = team.env["VAEGAN_GIT_REMOTE"].removeprefix("file://")
    first = champion.tags["prefect.flow_run_name"]
    subprocess.run(["git", "--git-dir", remote, "branch", "-f", "main", f"runs/{first}"], check=True)
    for pool in ("vaegan-gpu", "vaegan-cpu"):
        add_worker(team, pool)
    before = registry_snapshot(client)
    kept_file = artifact_files(client, champion.run_id)[0]
    kept_bytes = Path(client.download_artifacts(champion.run_id, kept_file, str(tmp_path))).read_bytes()
    seeds = [1, 2, 3, 4, 1, 2]  # the last two repeat the first two exactly
    spec = [
        *({"deployment": "retrain/on-demand", "parameters": {"profile": "smoke", "params": {"train.seed": s}}}
          for s in seeds),
        *({"deployment": "check-champion/daily", "parameters": {"seed": s}} for s in range(8)),
        *({"deployment": "reproduce/weekly", "parameters": {"check_only": True}} for _ in range(2)),
    ]  # fmt: skip
    member = tmp_path / "member"
    member.mkdir()
    subprocess.run(
        ["git", "--git-dir", remote, "show", "main:params.yaml"],
        stdout=(member / "params.yaml").open("w"),
        check=True,
    )
    with flow_runs_at_once(team, spec, tmp_path) as load:
        time.sleep(60)
        # meanwhile a team member promotes from a plain checkout
        promoted = subprocess.run(
            [str(Path(sys.executable).parent / "vaegan"), "promote"],
            cwd=member, env=team.env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert promoted.returncode == 0, promoted.stderr
        # and the servers restart under the runs (the queued retrains start after them)
        for server in ("postgres", "s3", "prefect"):
            restarted = team_command(team.state, "restart", server, env=team.up_env)
            assert restarted.returncode == 0, restarted.stdout + restarted.stderr
            assert f"{server:<10} restarted" in restarted.stdout or "started on" in restarted.stdout
            if server == "prefect":  # no run starts while the server is away
                assert "paused work pools vaegan-cpu, vaegan-gpu" in restarted.stdout, restarted.stdout
                assert "resumed work pools vaegan-cpu, vaegan-gpu" in restarted.stdout, restarted.stdout
            time.sleep(20)
        dead = kill_a_worker_during_training(team)
        resubmitted = resubmit_once_crashed(team, dead)
        runs = flow_runs_report(load)
    for item, run in zip(spec, runs, strict=True):
        if run["id"] == dead.flow_run_id:
            assert run["state"] == "CRASHED", story(item, run)
            continue
        assert run["state"] == "COMPLETED" or (run["state"] == "FAILED" and run["message"]), story(item, run)
    retrains = [run for run in runs[: len(seeds)] if run["id"] != dead.flow_run_id]
    assert len(retrains) == len(seeds) - 1 and all(run["state"] == "COMPLETED" for run in retrains), retrains
    assert wait_until_final(team, resubmitted, timeout_s=1200) == "COMPLETED"

    # nothing registered before was lost or changed (a promotion may add tags), artifacts included
    after = registry_snapshot(client)
    for key, record in before.items():
        assert record["tags"].items() <= after[key]["tags"].items(), key
        assert after[key]["metrics"] == record["metrics"], key
        assert after[key]["artifacts"] == record["artifacts"], key
    kept_again = Path(client.download_artifacts(champion.run_id, kept_file, str(tmp_path / "again")))
    assert kept_again.read_bytes() == kept_bytes
    # the repeats made no new registered version: 4 distinct models, 4 new versions
    decoders = registered_versions(client, "vaegan-decoder")
    assert len(decoders) == sum(key.startswith("vaegan-decoder") for key in before) + 4, [
        (v.version, v.tags.get("prefect.flow_run_name")) for v in decoders
    ]
    assert pairs_whole(client)
    # the promotions form one chain: each read the champion the previous one wrote
    promoted_versions = sorted(
        (v for v in decoders if v.tags.get("promotion.decision") == "promoted"),
        key=lambda v: v.tags["promotion.timestamp"] + v.tags["promotion.run_id"],
    )
    encoder_of = {v.tags["pair_id"]: v.version for v in registered_versions(client, "vaegan-encoder")}
    expected_before = "none"
    for version in promoted_versions:
        assert version.tags["promotion.champion_before"] == expected_before, version.tags
        expected_before = f"decoder v{version.version} + encoder v{encoder_of[version.tags['pair_id']]}"
    assert (
        promoted_versions[-1].version
        == client.get_model_version_by_alias("vaegan-decoder", "champion").version
    )
    for log in (team.state / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        assert "database is locked" not in text and "still held after" not in text, log
        # eight checks at once create the `check-champion` experiment once, without a failed task
        assert "RESOURCE_ALREADY_EXISTS" not in text, log


def flow_run(team: Team, flow_run_id: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{team.env['PREFECT_API_URL']}/flow_runs/{flow_run_id}")
    credentials = b64encode(team.env["PREFECT_API_AUTH_STRING"].encode()).decode()
    request.add_header("Authorization", f"Basic {credentials}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.loads(response.read()))


def flow_run_state(team: Team, flow_run_id: str) -> str:
    return str(flow_run(team, flow_run_id)["state"]["type"])


def processes_with(needle: bytes, part: str) -> list[int]:
    """The live processes whose /proc/<pid>/<part> (cmdline, environ) contains `needle`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / part).read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def process_tree(root: int) -> list[int]:
    """`root` and every live descendant of it."""
    children: dict[int | None, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            children.setdefault(parent_of(int(entry.name)), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def process_tree_root(pid: int, roots: set[int]) -> int | None:
    """The first of `roots` among `pid` and its ancestors, None when there is none."""
    current: int | None = pid
    while current is not None and current > 1:
        if current in roots:
            return current
        current = parent_of(current)
    return None


def run_deployment_now(team: Team, *params: str) -> str:
    """Submit a retrain with these `KEY=VALUE` parameters without waiting; its flow run id."""
    submitted = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "deployment", "run", "retrain/on-demand",
         *(arg for param in params for arg in ("--param", param))],
        env=team.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    found = re.search(r"UUID: ([0-9a-f-]{36})", submitted.stdout)
    assert found is not None, submitted.stdout
    return found.group(1)


def add_worker(team: Team, pool: str) -> None:
    """A second worker for `pool` (`make worker POOL=...`), unless an earlier test added it."""
    if f"worker-{pool}-1" in pids(team.state):
        return
    added = team_command(team.state, "worker", "--pool", pool, env=team.up_env)
    assert added.returncode == 0 and f"worker-{pool}-1 started" in added.stdout, added.stderr


@dataclass(frozen=True)
class DeadWorker:
    name: str
    flow_run_id: str  # the run it was training
    clones: list[Path]  # what its workspace held when it died
    killed_at: float  # time.monotonic()


def flow_run_of(pid: int) -> str | None:
    """The Prefect flow run a process works for (the worker puts its id in the run's environment)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    found = [item.split(b"=", 1)[1].decode() for item in environ if item.startswith(b"PREFECT__FLOW_RUN_ID=")]
    return found[0] if found else None


def kill_a_worker_during_training(team: Team) -> DeadWorker:
    """`kill -9` of a retrain worker, its flow run and the stages, while a train stage runs: a machine
    that died."""
    workers = {pid: name for name, pid in pids(team.state).items() if name.startswith("worker-vaegan-gpu")}
    assert len(workers) == 2
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        for pid in processes_with(b"train\x00", "cmdline"):  # `vaegan train`, the stage (and its dvc)
            victim, flow_run_id = process_tree_root(pid, set(workers)), flow_run_of(pid)
            if victim is None or flow_run_id is None:
                continue
            name = workers[victim]
            clones = list(team.state.joinpath("workspaces", name).iterdir())
            for process in process_tree(victim):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process, signal.SIGKILL)
            return DeadWorker(name, flow_run_id, clones, time.monotonic())
        time.sleep(1)
    raise AssertionError("no train stage ran on a worker after the restarts")


def resubmit_once_crashed(team: Team, dead: DeadWorker) -> str:
    """Wait for the dead worker's run to be Crashed (150 s without heartbeat, then the automation:
    docs/team.md), resubmit it, and once it runs on the other worker let `up` restart the dead one
    and sweep its clone; the resubmitted run's id."""
    while (state := flow_run_state(team, dead.flow_run_id)) != "CRASHED":
        assert time.monotonic() - dead.killed_at < 300, state
        time.sleep(5)
    time.sleep(2)
    # no orphan of the dead run goes on writing its clone: every process with its folder is gone
    assert processes_with(str(team.state / "workspaces" / dead.name).encode(), "environ") == []
    parameters = flow_run(team, dead.flow_run_id)["parameters"]
    again = run_deployment_now(team, *(f"{key}={json.dumps(value)}" for key, value in parameters.items()))
    while flow_run_state(team, again) in ("SCHEDULED", "PENDING"):
        assert time.monotonic() - dead.killed_at < 1500
        time.sleep(2)
    restarted = team_command(team.state, "up", env=team.up_env)
    assert restarted.returncode == 0, restarted.stderr
    assert f"{dead.name} removed" in restarted.stdout, restarted.stdout
    assert dead.clones and not any(clone.exists() for clone in dead.clones)
    return again


def wait_until_final(team: Team, flow_run_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while (state := flow_run_state(team, flow_run_id)) not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        assert time.monotonic() < deadline, state
        time.sleep(5)
    return state


def test_down_stops_everything_and_keeps_the_data(team: Team, monkeypatch: pytest.MonkeyPatch) -> None:
    client = team_registry(team, monkeypatch)
    registered = registered_versions(client, "vaegan-decoder")
    before = pids(team.state)
    stopped = team_command(team.state, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert pids(team.state) == {}
    assert not any(alive(pid) for pid in before.values())
    status = team_command(team.state, "status")
    assert status.returncode == 3 and all(
        "stopped" in line for line in status.stdout.splitlines() if line.split()[0] in SERVERS
    )
    again = team_command(team.state, "up", env=team.up_env)
    assert again.returncode == 0, again.stderr
    assert "initialising" not in again.stdout and "created database" not in again.stdout

    # the same versions with the same tags, read back from the restarted servers
    def records(versions: list[Any]) -> list[tuple[str, dict[str, str], list[str]]]:
        return [(v.version, v.tags, v.aliases) for v in versions]

    assert records(registered_versions(client, "vaegan-decoder")) == records(registered)
