"""A promotion run in a child process (spawn), kept free of torch so the child starts fast."""

from __future__ import annotations

from typing import Any

from vaegan.config import Config


def promote_in_child(config: Config, versions: tuple[str, str], barrier: Any, results: Any) -> None:
    """Wait for the other child at `barrier`, then promote `versions`; put the outcome on `results`."""
    import vaegan.registry  # imported before the barrier, so that the two children really race

    barrier.wait(timeout=120)
    try:
        decision = vaegan.registry.promote_challenger(config=config, versions=versions)
        results.put((versions, decision.promoted, None))
    except Exception as exc:
        results.put((versions, None, repr(exc)))
