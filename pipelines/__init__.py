"""Prefect flows and deployments: `retrain`, `check_champion`, `reproduce`, and `serve` for schedules.

Importing the package does two things before any flow module imports `vaegan`:

- It runs the flows on the code of the checkout they live in. A worker runs each flow run in a fresh
  clone of the team's git remote (prefect.yaml), with the Python environment of the worker's own
  checkout; putting this checkout's `src/` first on `sys.path` and on PYTHONPATH (which the DVC
  stages inherit) makes the flow and every stage run the commit that was cloned, not the one the
  worker's environment was installed from. In a plain checkout the two are the same folder.
- It switches off the usage telemetry of the services these flows start or talk to, unless you set
  the variables yourself: Prefect's temporary API server sends an anonymous heartbeat (offline,
  each failed one is an ERROR line in the flow's output) and MLflow a usage record. The pipeline
  runs with no network beyond the package index, and a server it starts for one run should not
  call out. The Makefile exports the same two for `make repro` and the other targets.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TELEMETRY_OFF = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}

for _name, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_name, _value)

CHECKOUT_SRC = Path(__file__).resolve().parents[1] / "src"

if (CHECKOUT_SRC / "vaegan").is_dir() and "vaegan" not in sys.modules:
    sys.path.insert(0, str(CHECKOUT_SRC))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(CHECKOUT_SRC), os.environ.get("PYTHONPATH")) if p
    )
