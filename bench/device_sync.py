"""Wait for the device: a timer read after `sync_device` has seen the queued GPU work finish."""

from __future__ import annotations

import torch


def sync_device(device: torch.device) -> None:
    """Block until every kernel queued on `device` has run (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
