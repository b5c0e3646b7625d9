"""Prefect flows and deployments: `retrain`, `check_champion`, `reproduce`, and `serve` for schedules.

Importing the package switches off the usage telemetry of the services these flows start or talk
to, unless you set the variables yourself: Prefect's temporary API server sends an anonymous
heartbeat (offline, each failed one is an ERROR line in the flow's output) and MLflow a usage record.
The pipeline runs with no network beyond the package index, and a server it starts for one run
should not call out. The Makefile exports the same two for `make repro` and the other targets.
"""

from __future__ import annotations

import os

TELEMETRY_OFF = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}

for _name, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_name, _value)
