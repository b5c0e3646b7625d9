"""The flow run a flow is in, as the environment variables that its stages and registrations read
(`vaegan.tracking.store.orchestration_tags`): every MLflow run and registered version a flow makes
names the Prefect flow run that made it."""

from __future__ import annotations

import os

from prefect.runtime import flow_run


def label_flow_run() -> str:
    """Set VAEGAN_FLOW_RUN_ID/_NAME/_URL for this process and its children; the flow run's name."""
    name = str(flow_run.name or "")
    values = {"VAEGAN_FLOW_RUN_ID": str(flow_run.id or ""), "VAEGAN_FLOW_RUN_NAME": name}
    url = flow_run.ui_url
    if url:
        values["VAEGAN_FLOW_RUN_URL"] = str(url)
    os.environ.update({key: value for key, value in values.items() if value})
    return name
