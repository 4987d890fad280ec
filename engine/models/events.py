"""What the model repositories of this process report, for /metrics: hits, misses, evictions, refusals and bytes.

Observers (engine.serving.metrics.Metrics) subscribe with `observe`; they are held weakly, so that one dropped with
its app stops receiving events.
"""
from __future__ import annotations

import logging
import weakref
from typing import Protocol

log = logging.getLogger("engine.models")

# the events: a request found the version loaded (hit) or not (miss); a version was evicted from memory or its copy
# from disk (eviction, disk_eviction); a load was refused for its size (too_large) or for want of room (no_room);
# the bytes a model holds in memory or on disk changed by `amount` (memory_bytes, disk_bytes)
EVENTS = ("hit", "miss", "eviction", "disk_eviction", "too_large", "no_room", "memory_bytes", "disk_bytes")


class Observer(Protocol):
    """Something that counts model events."""

    def model_event(self, api: str, model: str, event: str, amount: int) -> None:
        """One of EVENTS for a model of an API (`amount`: 1, or a change in bytes)."""


_observers: weakref.WeakSet[Observer] = weakref.WeakSet()


def observe(observer: Observer) -> None:
    """Send this process's model events to `observer` from now on."""
    _observers.add(observer)


def report(api: str, model: str, event: str, amount: int = 1) -> None:
    """Tell every observer; an observer's failure is logged, never raised into a request."""
    for observer in list(_observers):
        try:
            observer.model_event(api, model, event, amount)
        except Exception:
            log.exception("a model metrics observer failed")
