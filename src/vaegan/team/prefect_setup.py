"""Configure the team's Prefect server: process work pools and the automation that crashes zombie runs;
pause the pools around a restart of the server.

    python -m vaegan.team.prefect_setup setup vaegan-cpu vaegan-gpu   # with PREFECT_API_URL set
    python -m vaegan.team.prefect_setup pause vaegan-cpu vaegan-gpu   # prints the pools it paused
    python -m vaegan.team.prefect_setup resume vaegan-cpu

Run by `python -m vaegan.team up` and `restart prefect` in a subprocess with the member environment
(Prefect reads its settings when it is first imported). Idempotent: an existing pool or automation
is kept, a pool paused by someone else stays paused.

Restarts: a flow run's client retries its calls while the server is away, but a client that never
connected fails at once, and the engine opens one while a run starts. So `pause` stops the workers
from starting runs and waits until the runs they already started are running (none `Pending`);
the server restarts with no run in that window, and `resume` lets the queued runs start.

Zombie runs: a worker killed with its flow run leaves the run `Running` for ever, holding its slot.
Flow runs started by a worker send a heartbeat event every `HEARTBEAT_S` seconds
(PREFECT_FLOWS_HEARTBEAT_FREQUENCY, set for the workers); the automation below, the one Prefect
documents for self-hosted servers, marks a run `Crashed` when no heartbeat and no final state came
for `ZOMBIE_AFTER_S` seconds after its last heartbeat. Heartbeats sent while the Prefect server or
its database restarts are lost, so the window is five heartbeats (a restart under load measured
well under the two minutes that leaves); and the state change is not forced, so a run that has
ended (its final event delayed by the restart) keeps its state.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta

from prefect import get_client
from prefect.automations import Automation
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectNotFound

from vaegan.team.environment import HEARTBEAT_S

ZOMBIE_AUTOMATION = "vaegan: crash zombie flow runs"
ZOMBIE_AFTER_S = 5 * HEARTBEAT_S
FINAL_OR_ALIVE = (
    "prefect.flow-run.heartbeat",
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Crashed",
)
# how long `pause` waits for started runs to reach Running, and how often it looks
STARTING_TIMEOUT_S = 300
POLL_S = 3


def ensure_work_pools(names: list[str]) -> list[str]:
    """Create the process work pools that do not exist; the names created."""
    created = []
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_work_pool(name)
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))
                created.append(name)
    return created


def zombie_automation() -> Automation:
    return Automation(
        name=ZOMBIE_AUTOMATION,
        description=f"Mark a flow run Crashed when it sent no heartbeat for {ZOMBIE_AFTER_S} s.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect=set(FINAL_OR_ALIVE),
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=ZOMBIE_AFTER_S),
        ),
        actions=[
            ChangeFlowRunState(
                name="Crashed",
                state=StateType.CRASHED,
                message=f"no heartbeat for {ZOMBIE_AFTER_S} s: its worker or machine died",
                force=False,  # a run that has ended keeps its state
            )
        ],
    )


async def ensure_zombie_automation() -> str:
    """Create the zombie automation, or bring one of its name up to this definition; what was done
    ("created", "updated" or "" when it was current)."""
    wanted = zombie_automation()
    try:
        current = await Automation.aread(name=ZOMBIE_AUTOMATION)
    except ValueError:
        await wanted.acreate()
        return "created"
    fields = {"description", "trigger", "actions", "enabled"}
    if current.model_dump(include=fields) == wanted.model_dump(include=fields):
        return ""
    wanted.id = current.id
    await wanted.aupdate()
    return "updated"


def pause_pools(names: list[str]) -> list[str]:
    """Pause the pools that are not paused; the names paused (to resume after the restart)."""
    paused = []
    with get_client(sync_client=True) as client:
        for name in names:
            if not client.read_work_pool(name).is_paused:
                client.update_work_pool(name, WorkPoolUpdate(is_paused=True))
                paused.append(name)
    return paused


def resume_pools(names: list[str]) -> None:
    with get_client(sync_client=True) as client:
        for name in names:
            client.update_work_pool(name, WorkPoolUpdate(is_paused=False))


def starting_runs(names: list[str]) -> int:
    """How many flow runs of these pools a worker started that are not running yet (`Pending`)."""
    with get_client(sync_client=True) as client:
        pending = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING]))
            ),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=names)),
        )
    return len(pending)


def wait_for_starting_runs(names: list[str], timeout_s: float = STARTING_TIMEOUT_S) -> int:
    """Wait until no run of these pools is starting (a worker that fetched a run just before the
    pause proposes `Pending` a moment later: look twice); the runs still starting at the timeout."""
    deadline = time.monotonic() + timeout_s
    starting, quiet_polls = 0, 0
    while time.monotonic() < deadline and quiet_polls < 2:
        time.sleep(POLL_S)
        starting = starting_runs(names)
        quiet_polls = quiet_polls + 1 if starting == 0 else 0
    return starting


def setup(pools: list[str]) -> None:
    for name in ensure_work_pools(pools):
        print(f"created work pool {name} (process)")
    done = asyncio.run(ensure_zombie_automation())
    if done:
        print(f"{done} automation {ZOMBIE_AUTOMATION!r} (Crashed after {ZOMBIE_AFTER_S} s silent)")


def pause(pools: list[str]) -> None:
    """Print the pools paused, one a line; say on stderr when runs were still starting."""
    paused = pause_pools(pools)
    print("\n".join(paused))
    starting = wait_for_starting_runs(pools)
    if starting:
        print(f"{starting} flow runs still starting after {STARTING_TIMEOUT_S} s", file=sys.stderr)


COMMANDS = {"setup": setup, "pause": pause, "resume": resume_pools}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(f"usage: python -m vaegan.team.prefect_setup {{{','.join(COMMANDS)}}} POOL...", file=sys.stderr)
        return 2
    COMMANDS[args[0]](args[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
