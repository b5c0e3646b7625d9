"""The team stack, measured: how long `up` takes, what the stack holds in memory, how many flow runs
a minute it carries with 1 and 2 workers, how long a run waits for a worker, and a champion check
on a worker against the same check run in place.

    python -m bench.team                      # a new stack in a temporary folder, then removed
    python -m bench.team --runs 8 --out bench/results/team-cpu.json

It starts its own stack (free ports of 127.0.0.1, OMP_NUM_THREADS=1 for the workers), trains one
champion through the `retrain/on-demand` deployment (profile smoke), makes that run's branch `main`, then
submits `--runs` champion checks (`check-champion/daily`, the smoke profile's 500 samples) at once,
first with one worker on the CPU pool and then with two. Prints a table; writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from vaegan.nn.devices import cpu_model

REPO_ROOT = Path(__file__).resolve().parents[1]


def machine_label() -> str:
    """cpu-<N>core-<model>, file-name safe (the label bench.run gives a CPU)."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", f"cpu-{os.cpu_count()}core-{cpu_model()}").strip("-").lower()


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def team(state: Path, *args: str, env: dict[str, str]) -> float:
    """Run `python -m vaegan.team --dir state ARGS`; its wall seconds (RuntimeError when it fails)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "vaegan.team", "--dir", str(state), *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"vaegan.team {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - started


def read_env_file(path: Path) -> dict[str, str]:
    printed = subprocess.run(
        ["bash", "-c", f"set -a; source {path}; env -0"], capture_output=True, check=True
    )
    return dict(item.split("=", 1) for item in printed.stdout.decode().split("\0") if "=" in item)


def stack_rss_mib(state: Path) -> float:
    """Resident memory of every process of the stack: each daemon's session and PostgreSQL's."""
    leaders = {json.loads(p.read_text())["pid"] for p in (state / "run").glob("*.pid")}
    with contextlib.suppress(OSError, ValueError):
        leaders.add(int((state / "postgres" / "postmaster.pid").read_text().split()[0]))
    total_kib = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid, session = int(stat[1]), int(stat[3])
        if session in leaders or ppid in leaders or int(entry.name) in leaders:
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


def submit(spec: list[dict[str, Any]], env: dict[str, str], timeout_s: float) -> list[dict[str, Any]]:
    folder = Path(tempfile.mkdtemp(prefix="vaegan-bench-spec-"))
    try:
        (folder / "spec.json").write_text(json.dumps(spec))
        done = subprocess.run(
            [sys.executable, "-m", "bench.flow_runs", str(folder / "spec.json"), str(timeout_s)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return list(json.loads(done.stdout))


class PeakMemory:
    """Samples the stack's RSS every second in a thread; `peak` is the largest sample."""

    def __init__(self, state: Path) -> None:
        self.state, self.peak, self._stop = state, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            self.peak = max(self.peak, stack_rss_mib(self.state))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def throughput(runs: int, state: Path, env: dict[str, str]) -> dict[str, Any]:
    spec = [{"deployment": "check-champion/daily", "parameters": {"seed": seed}} for seed in range(runs)]
    with PeakMemory(state) as memory:
        started = time.perf_counter()
        report = submit(spec, env, timeout_s=3600)
        seconds = time.perf_counter() - started
    latencies = [run["start_latency_s"] for run in report if run["start_latency_s"] is not None]
    return {
        "runs": runs,
        "completed": sum(run["state"] == "COMPLETED" for run in report),
        "seconds": seconds,
        "runs_per_minute": runs / seconds * 60,
        "start_latency_p50_s": statistics.median(latencies),
        "start_latency_p95_s": percentile(latencies, 0.95),
        "check_run_median_s": statistics.median(run["run_seconds"] for run in report),
        "peak_rss_mib": memory.peak,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=8, help="champion checks per throughput measurement")
    parser.add_argument("--out", default=None, help="JSON file (default bench/results/team-<machine>.json)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="vaegan-bench-team-", dir="/tmp"))
    os.chmod(root, 0o755)  # PostgreSQL's unprivileged user must reach it
    state = root / "state"
    up_env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ports = free_ports(4)
    names = ("--postgres-port", "--s3-port", "--mlflow-port", "--prefect-port")
    port_args = [arg for name, port in zip(names, ports, strict=True) for arg in (name, str(port))]
    results: dict[str, Any] = {"machine": machine_label(), "python": platform.python_version()}
    try:
        results["cold_start_s"] = team(state, "up", *port_args, env=up_env)
        results["idle_rss_mib"] = stack_rss_mib(state)
        team(state, "down", env=up_env)
        results["warm_start_s"] = team(state, "up", env=up_env)
        env = {**os.environ, **read_env_file(state / "env")}
        retrain = {"deployment": "retrain/on-demand", "parameters": {"profile": "smoke"}}
        started = time.perf_counter()
        first = submit([retrain], env, timeout_s=3600)[0]
        results["smoke_retrain_on_worker_s"] = time.perf_counter() - started
        if first["state"] != "COMPLETED":
            raise RuntimeError(f"the smoke retrain did not complete: {first}")
        remote = env["VAEGAN_GIT_REMOTE"].removeprefix("file://")
        subprocess.run(
            ["git", "--git-dir", remote, "branch", "-f", "main", f"runs/{first['name']}"], check=True
        )
        results["one_worker"] = throughput(args.runs, state, env)
        team(state, "worker", "--pool", "vaegan-cpu", env=up_env)
        results["two_workers"] = throughput(args.runs, state, env)
        results["check_in_place_s"] = check_in_place(root, env)
    finally:
        subprocess.run(
            [sys.executable, "-m", "vaegan.team", "--dir", str(state), "down"], cwd=REPO_ROOT, check=False
        )
        shutil.rmtree(root, ignore_errors=True)
    print_table(results)
    out = Path(args.out or REPO_ROOT / "bench" / "results" / f"team-{results['machine']}.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def check_in_place(root: Path, env: dict[str, str]) -> float:
    """`python -m pipelines.check_champion` in a clone of main, its data already there: the check
    a member runs in a checkout (the flow reports to the team's Prefect server)."""
    clone = root / "member"
    remote = env["VAEGAN_GIT_REMOTE"]
    subprocess.run(["git", "clone", "-q", remote, str(clone)], check=True)
    subprocess.run([sys.executable, "-m", "vaegan.team", "connect"], cwd=clone, env=env, check=True)
    subprocess.run(
        [sys.executable, "-m", "dvc", "pull", "-q", "prepare", "evaluator"], cwd=clone, env=env, check=True
    )
    checkout_env = {**env, "PYTHONPATH": f"{clone}{os.pathsep}{clone / 'src'}"}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipelines.check_champion", "--seed", "0"],
        cwd=clone,
        env=checkout_env,
        check=True,
    )
    return time.perf_counter() - started


def print_table(results: dict[str, Any]) -> None:
    rows = [
        ("`up`, cold (initdb, migrations)", f"{results['cold_start_s']:.1f} s"),
        ("`up` after `down`", f"{results['warm_start_s']:.1f} s"),
        ("stack memory, idle (RSS)", f"{results['idle_rss_mib']:.0f} MiB"),
        ("smoke-profile retrain on a worker", f"{results['smoke_retrain_on_worker_s']:.0f} s"),
    ]
    for key, label in (("one_worker", "1 worker"), ("two_workers", "2 workers")):
        row = results[key]
        rows += [
            (
                f"champion checks, {label}",
                f"{row['runs_per_minute']:.2f} runs/min ({row['completed']}/{row['runs']} completed)",
            ),
            (
                f"submit-to-start p50 / p95, {label}",
                f"{row['start_latency_p50_s']:.1f} s / {row['start_latency_p95_s']:.1f} s",
            ),
            (f"stack memory under load, {label}", f"{row['peak_rss_mib']:.0f} MiB"),
        ]
    on_worker = results["one_worker"]["check_run_median_s"]
    rows += [
        ("champion check on a worker (median run time)", f"{on_worker:.1f} s"),
        ("champion check in place (checkout, team servers)", f"{results['check_in_place_s']:.1f} s"),
    ]
    print(f"| measure ({results['machine']}) | value |\n| --- | ---: |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    sys.exit(main())
