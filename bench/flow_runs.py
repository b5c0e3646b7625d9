"""Submit flow runs to the team's Prefect server at once and wait for every one (bench/team.py and
tests/test_team.py).

    python -m bench.flow_runs SPEC.json TIMEOUT_S     # with the team env file's variables set

SPEC is a JSON list of {"deployment": "flow/deployment", "parameters": {...}}. Prints a JSON list, one
object per run in SPEC's order: id, name, state (type name), message, submit-to-start seconds, run
seconds (Prefect's total run time), and for a run that did not complete the last lines of its log.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import LogSort
from prefect.deployments import run_deployment
from prefect.exceptions import PrefectHTTPStatusError

LOG_TAIL = 20


def log_tail(client: SyncPrefectClient, run: FlowRun) -> list[str]:
    """The last `LOG_TAIL` log messages of a run that did not complete (none for one that did)."""
    if run.state is not None and run.state.type == StateType.COMPLETED:
        return []
    logs = client.read_logs(
        LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
        limit=LOG_TAIL,
        sort=LogSort.TIMESTAMP_DESC,
    )
    return [f"{log.timestamp:%H:%M:%S} {log.message}" for log in reversed(logs)]


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    deadline = time.monotonic() + float(sys.argv[2])
    runs = [run_deployment(item["deployment"], parameters=item["parameters"], timeout=0) for item in spec]
    current = runs
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            try:
                current = [client.read_flow_run(run.id) for run in runs]
            except (httpx.HTTPError, PrefectHTTPStatusError) as exc:  # e.g. the server restarts
                print(f"waiting for the Prefect server: {exc}", file=sys.stderr)
            else:
                if all(run.state is not None and run.state.is_final() for run in current):
                    break
            time.sleep(5)
        tails = [log_tail(client, run) for run in current]
    report = [
        {
            "id": str(run.id),
            "name": run.name,
            "state": run.state.type.value if run.state else "none",
            "state_name": run.state.name if run.state else "none",
            "message": (run.state.message or "") if run.state else "",
            "start_latency_s": (run.start_time - run.created).total_seconds()
            if run.start_time and run.created
            else None,
            "run_seconds": run.total_run_time.total_seconds(),
            "log_tail": tail,
        }
        for run, tail in zip(current, tails, strict=True)
    ]
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
