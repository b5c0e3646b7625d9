"""`python -m vaegan.team`: the team stack on this machine (`make serve-team`, `team-down`,
`team-status`, `worker`).

    python -m vaegan.team up                    # PostgreSQL, S3, MLflow, Prefect, one worker per pool
    python -m vaegan.team status
    python -m vaegan.team worker --pool vaegan-gpu   # one more worker (on this machine)
    python -m vaegan.team restart postgres     # one server (postgres, s3, mlflow, prefect) in place
    python -m vaegan.team down                  # stop everything; the data stays in .team/
    python -m vaegan.team connect               # in a member's checkout: DVC uses the team remote

After `up`, `source .team/env` in any shell (or another checkout on a machine that reaches these
servers) and `make run`, `vaegan promote`, `make check-champion`, `vaegan reproduce` use the team's
servers. Every state file lives under --dir (default .team/): the PostgreSQL cluster, the S3 folder,
Prefect's home, the credentials (0600), one log and one pid file per process.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from vaegan.dvc_commands import REMOTE_URL_VARIABLE, use_team_remote
from vaegan.errors import VaeganError, run_command
from vaegan.team.layout import DEFAULT_ROOT, Ports, TeamLayout
from vaegan.team.stack import POOLS, SERVERS, Stack

DEFAULTS = Ports()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vaegan.team",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dir", default=DEFAULT_ROOT, help=f"the stack's state folder (default {DEFAULT_ROOT})"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start what is not running (idempotent) and write the env file")
    up.add_argument("--host", default=None, help="address every server binds to (default 127.0.0.1)")
    for name, port in DEFAULTS.named().items():
        up.add_argument(f"--{name}-port", type=int, default=None, help=f"{name} port (default {port})")
    up.add_argument("--workers", type=int, default=1, help="process workers per work pool (default 1)")
    up.add_argument(
        "--repo",
        default=".",
        help="checkout whose prefect.yaml is deployed and whose HEAD seeds the git remote",
    )
    commands.add_parser("down", help="stop workers and servers; the data stays")
    restart = commands.add_parser(
        "restart", help="restart one server in place (PostgreSQL: pg_ctl restart -m fast); clients reconnect"
    )
    restart.add_argument("server", choices=("postgres", *SERVERS))
    commands.add_parser("status", help="each server and worker: up, stopped or not answering")
    commands.add_parser(
        "connect",
        help="make the team's S3 remote this checkout's default DVC remote (in .dvc/config.local; "
        "run it with the env file sourced)",
    )
    worker = commands.add_parser("worker", help="start one more process worker on this machine")
    worker.add_argument("--pool", default=POOLS[0], choices=POOLS, help=f"work pool (default {POOLS[0]})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(f"vaegan team {args.command}", lambda: COMMANDS[args.command](args))


def up(args: argparse.Namespace) -> int:
    if args.workers < 0:
        raise VaeganError(f"--workers {args.workers}: must be 0 or more")
    chosen = {
        "host": args.host, "postgres": args.postgres_port, "s3": args.s3_port,
        "mlflow": args.mlflow_port, "prefect": args.prefect_port,
    }  # fmt: skip
    given = {key: value for key, value in chosen.items() if value is not None}
    layout = TeamLayout.at(args.dir)
    stack = Stack.open(layout, replace(DEFAULTS, **given) if given else None)
    stack.up(workers_per_pool=args.workers, repo=Path(args.repo).resolve())
    print(f"\nMLflow UI:  {stack.urls()['mlflow']}  (user {stack.credentials.mlflow_user})")
    print(f"Prefect UI: {stack.urls()['prefect']}")
    print(f"Use it from a shell: source {layout.env_file}")
    return 0


def down(args: argparse.Namespace) -> int:
    layout = TeamLayout.at(args.dir)
    if layout.read_ports() is None:
        print(f"no team stack in {layout.root}")
        return 0
    stopped = Stack.open(layout).down()
    print("stopped: " + (", ".join(stopped) or "nothing was running") + f"; data kept in {layout.root}")
    return 0


def running_stack(folder: str) -> Stack:
    """The stack set up in `folder`; VaeganError when there is none."""
    layout = TeamLayout.at(folder)
    if layout.read_ports() is None:
        raise VaeganError(f"no team stack in {layout.root}: start it first (make serve-team)")
    return Stack.open(layout)


def restart(args: argparse.Namespace) -> int:
    running_stack(args.dir).restart(args.server)
    return 0


def status(args: argparse.Namespace) -> int:
    layout = TeamLayout.at(args.dir)
    if layout.read_ports() is None:
        print(f"no team stack in {layout.root} (start one: make serve-team)")
        return 3
    rows = Stack.open(layout).status()
    for name, state, where in rows:
        print(f"{name:<22} {state:<28} {where}")
    return 0 if all(state.startswith("up") for _, state, _ in rows) else 3


def connect(_args: argparse.Namespace) -> int:
    remote = use_team_remote(".")
    if remote is None:
        raise VaeganError(f"{REMOTE_URL_VARIABLE} is not set: `source .team/env` first")
    print(f"DVC remote {remote!r} ({os.environ[REMOTE_URL_VARIABLE]}) is this checkout's default")
    return 0


def worker(args: argparse.Namespace) -> int:
    running_stack(args.dir).start_worker(args.pool)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": up, "down": down, "restart": restart, "status": status, "connect": connect, "worker": worker,
}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
