"""Garbage-collector settings for a serving process, applied once its predictors are ready.

Every request leaves a little cyclic garbage (asyncio futures, tracebacks), so the collector runs often; a full
collection walks every object, the frameworks and models included, and shows up as the slowest requests. Once start-up
is over, the objects it made are moved out of the collector's sight (gc.freeze) and young collections run less
often. Measured on the echo benchmark: p99 latency at 32 connections fell from ~35 ms to ~15 ms.
"""
from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # allocations between young collections (CPython's default: 700)


def settle_after_start_up() -> None:
    """Freeze what start-up allocated and make young collections rarer (once per serving process)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
