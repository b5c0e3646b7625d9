"""Summaries of repeated measurements: {median, min, max, n}, ratios of medians, and skips."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def summary(values: Sequence[float], digits: int = 6) -> dict[str, Any]:
    """{median, min, max, n} of repeated measurements (at least one)."""
    if not values:
        raise ValueError("summary needs at least one measurement")
    return {
        "median": round(float(statistics.median(values)), digits),
        "min": round(float(min(values)), digits),
        "max": round(float(max(values)), digits),
        "n": len(values),
    }


def ratio(numerator: dict[str, Any], denominator: dict[str, Any], digits: int = 4) -> float:
    """The ratio of two summaries' medians."""
    return round(float(numerator["median"]) / float(denominator["median"]), digits)


def skipped(reason: str) -> dict[str, Any]:
    """A figure that could not be measured here, with the reason."""
    return {"skipped": reason}


def repeat_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of `fn()` over `repeats` calls after `warmup` untimed calls.

    `fn` must leave no device work queued (synchronise inside it) for the times to be true.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times
