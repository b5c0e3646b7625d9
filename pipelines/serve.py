"""`make serve`: a local Prefect server, an MLflow server and the deployments, all on 127.0.0.1.

    python -m pipelines.serve                         # Prefect UI :4200, MLflow UI :5000
    python -m pipelines.serve --prefect-port 4300 --mlflow-port 5300

It starts `prefect server start` and `mlflow server` as child processes (unless PREFECT_API_URL /
MLFLOW_TRACKING_URI already point at servers: then it uses those), waits until both answer, and
serves three deployments from this process, which also executes their runs:

- `retrain/on-demand`: the retraining flow, run from the UI or `prefect deployment run`;
- `check-champion/daily`: the champion check, scheduled (cron, default 06:00 every day);
- `reproduce/weekly`: rebuild the champion from its record and compare (default Monday 04:00).

Teams with a shared Prefect server and work pools use prefect.yaml (`prefect deploy --all`) instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

from vaegan.errors import VaeganError
from vaegan.services.daemons import Daemon, ServiceError, answers, port_in_use, wait_until

SERVE_DIR = Path(".serve")
DAILY_CRON = "0 6 * * *"
WEEKLY_CRON = "0 4 * * 1"


def build_deployments(cron: str = DAILY_CRON, weekly_cron: str = WEEKLY_CRON) -> list[Any]:
    """The three deployments: on-demand retraining, the daily champion check and the weekly proof
    that the champion is reproducible."""
    # Imported here, not at the top: prefect reads its settings (PREFECT_API_URL) once, when it is
    # first imported (prefect.context.GLOBAL_SETTINGS_CONTEXT), and `main` sets them first.
    from pipelines.check_champion import check_champion
    from pipelines.reproduce import reproduce
    from pipelines.retrain import retrain

    return [
        retrain.to_deployment(
            name="on-demand",
            tags=["vaegan"],
            description="Reproduce the DVC pipeline, register, promote.",
            concurrency_limit=1,  # DVC takes one command per workspace; promotions stay serialised
        ),
        check_champion.to_deployment(
            name="daily",
            cron=cron,
            tags=["vaegan"],
            description="Check the champion on the current test data; fail on FID drift.",
        ),
        reproduce.to_deployment(
            name="weekly",
            cron=weekly_cron,
            tags=["vaegan"],
            description="Rebuild the champion from its record; fail when the rebuild is `different`.",
            concurrency_limit=1,  # a rebuild is a whole training: one at a time
        ),
    ]


def start_server(
    stack: contextlib.ExitStack,
    name: str,
    argv: list[str],
    *,
    host: str,
    port: int,
    health_url: str,
    timeout_s: float,
) -> None:
    """Start one server (its own process group, output in .serve/<name>.log), stopped with the
    stack; ServiceError at once when its port is taken or it dies during start-up."""
    if port_in_use(host, port):
        raise ServiceError(
            f"port {port} on {host} ({name}) is taken by another program: stop it or pass --{name}-port"
        )
    daemon = Daemon(name, SERVE_DIR / f"{name}.pid", SERVE_DIR / f"{name}.log")
    process = daemon.start([os.path.join(os.path.dirname(sys.executable), argv[0]), *argv[1:]])
    stack.callback(daemon.stop)
    wait_until(
        lambda: answers(health_url),
        daemon=daemon,
        process=process,
        timeout_s=timeout_s,
        what=f"{name} server",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="address the servers bind to (default 127.0.0.1)")
    parser.add_argument("--prefect-port", type=int, default=4200)
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument(
        "--cron", default=DAILY_CRON, help=f"schedule of check-champion (default {DAILY_CRON!r})"
    )
    parser.add_argument(
        "--weekly-cron", default=WEEKLY_CRON, help=f"schedule of reproduce (default {WEEKLY_CRON!r})"
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=300.0, help="seconds to wait for each server"
    )
    args = parser.parse_args(argv)
    # SIGTERM (systemd, docker stop, timeout) unwinds like Ctrl-C, so the child servers are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        serve_all(args)
    except VaeganError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("serve: stopped (Ctrl-C); the servers it started are stopped", file=sys.stderr)
        return 130
    return 0


def serve_all(args: argparse.Namespace) -> None:
    """Start the servers that are not given by the environment, then serve the deployments; every
    server started here is stopped on the way out (Ctrl-C, SIGTERM or a failed start)."""
    SERVE_DIR.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        if not os.environ.get("MLFLOW_TRACKING_URI", "").startswith("http"):
            mlflow_url = f"http://{args.host}:{args.mlflow_port}"
            start_server(
                stack, "mlflow",
                ["mlflow", "server", "--host", args.host, "--port", str(args.mlflow_port),
                 "--backend-store-uri", "sqlite:///mlflow.db", "--artifacts-destination", "mlartifacts"],
                host=args.host, port=args.mlflow_port, health_url=f"{mlflow_url}/health",
                timeout_s=args.startup_timeout,
            )  # fmt: skip
            os.environ["MLFLOW_TRACKING_URI"] = mlflow_url
        if not os.environ.get("PREFECT_API_URL"):
            prefect_api = f"http://{args.host}:{args.prefect_port}/api"
            start_server(
                stack, "prefect",
                ["prefect", "server", "start", "--host", args.host, "--port", str(args.prefect_port)],
                host=args.host, port=args.prefect_port, health_url=f"{prefect_api}/health",
                timeout_s=args.startup_timeout,
            )  # fmt: skip
            os.environ["PREFECT_API_URL"] = prefect_api
        print(f"MLflow UI:  {os.environ['MLFLOW_TRACKING_URI']}")
        print(f"Prefect UI: {os.environ['PREFECT_API_URL'].removesuffix('/api')}")
        from prefect import serve  # after PREFECT_API_URL is set (see build_deployments)

        serve(*build_deployments(args.cron, args.weekly_cron))
    return 0


if __name__ == "__main__":
    sys.exit(main())
