"""Configure the team's Prefect server: process work pools and the automation that crashes zombie runs.

    python -m vaegan.team.prefect_setup vaegan-cpu vaegan-gpu     # with PREFECT_API_URL set

Run by `python -m vaegan.team up` in a subprocess with the member environment (Prefect reads its
settings when it is first imported). Idempotent: an existing pool or automation is kept.

Zombie runs: a worker killed with its flow run leaves the run `Running` for ever, holding its slot.
Flow runs started by a worker send a heartbeat event every `HEARTBEAT_S` seconds
(PREFECT_FLOWS_HEARTBEAT_FREQUENCY, set for the workers); the automation below, the one Prefect
documents for self-hosted servers, marks a run `Crashed` when no heartbeat and no final state came
for `ZOMBIE_AFTER_S` seconds after its last heartbeat.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

from prefect import get_client
from prefect.automations import Automation
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectNotFound

from vaegan.team.environment import HEARTBEAT_S

ZOMBIE_AUTOMATION = "vaegan: crash zombie flow runs"
ZOMBIE_AFTER_S = 3 * HEARTBEAT_S
FINAL_OR_ALIVE = (
    "prefect.flow-run.heartbeat",
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Crashed",
)


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
                force=True,
            )
        ],
    )


async def ensure_zombie_automation() -> bool:
    """Create the zombie automation unless one of its name exists; True when created."""
    try:
        await Automation.aread(name=ZOMBIE_AUTOMATION)
        return False
    except ValueError:
        await zombie_automation().acreate()
        return True


def main(argv: list[str] | None = None) -> int:
    pools = list(sys.argv[1:] if argv is None else argv)
    for name in ensure_work_pools(pools):
        print(f"created work pool {name} (process)")
    if asyncio.run(ensure_zombie_automation()):
        print(f"created automation {ZOMBIE_AUTOMATION!r} (Crashed after {ZOMBIE_AFTER_S} s silent)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
