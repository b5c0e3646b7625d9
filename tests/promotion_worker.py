"""A promotion run in a child process (spawn), kept free of torch so the child starts fast."""

from __future__ import annotations

from typing import Any

from vaegan.config import Config
from vaegan.registry.promotion import promote_challenger  # imported before the barrier: the children race


def promote_in_child(config: Config, versions: tuple[str, str], barrier: Any, results: Any) -> None:
    """Wait for the other child at `barrier`, then promote `versions`; put the outcome on `results`."""
    barrier.wait(timeout=120)
    try:
        decision = promote_challenger(config=config, versions=versions)
        results.put((versions, decision.promoted, None))
    except Exception as exc:
        results.put((versions, None, repr(exc)))
