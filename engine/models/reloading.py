"""Live reloading: a thread that looks at a repository's model locations every poll interval and applies new,
changed and removed versions, waiting until a version's files have settled (a copy in progress is not a version)."""
from __future__ import annotations

import logging
import threading
import time
from contextlib import AbstractContextManager
from typing import Protocol

from engine.models.layout import Signature, VersionInfo

log = logging.getLogger("engine.models")

Key = tuple[str, int]
Pending = tuple[Signature, float, float]  # an unsettled version's (signature, activity, since)


class Watched(Protocol):
    """What a Reloader needs of the repository it watches (engine.models.repository.ModelRepository)."""

    @property
    def lock(self) -> AbstractContextManager[object]:
        """Held while the reloader reads and changes what the repository knows."""

    def list_tree(self) -> dict[str, dict[int, VersionInfo]]:
        """Every version in the model locations, by model name."""

    def is_new(self, name: str, info: VersionInfo) -> bool:
        """True when the version is not loaded as listed."""

    def forget_missing(self, tree: dict[str, dict[int, VersionInfo]]) -> list[Key]:
        """Forget the versions that are no longer listed; the keys to remove."""

    def accept(self, name: str, info: VersionInfo) -> None:
        """Take a new or changed version."""

    def remove(self, key: Key) -> None:
        """Drop a version that is gone."""


class Reloader:
    """Watches one repository's locations."""

    def __init__(self, repository: Watched, poll_interval: float) -> None:
        self.repository = repository
        self.poll_interval = poll_interval
        self.settle = min(1.0, poll_interval / 2)  # a version whose files changed this recently may be half-written
        self._pending: dict[Key, Pending] = {}  # the versions still unsettled at the last pass
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Look every poll interval, on a thread of its own."""
        self.thread = threading.Thread(target=self._poll, name="engine-model-poller", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop looking (after the pass in progress)."""
        self._stop.set()
        if self.thread:
            self.thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                while self.refresh() and not self._stop.wait(self.settle):
                    pass  # something was still being written: look again soon
            except Exception:  # never let one bad pass end live reloading
                log.exception("model reloading failed; trying again in %s s", self.poll_interval)

    def refresh(self) -> bool:
        """Apply what changed in the model locations; True while some version still looks half-written."""
        repository = self.repository
        try:
            tree = repository.list_tree()
        except Exception:
            log.exception("could not list the models; keeping the current ones")
            return False
        now, clock, unsettled = time.time(), time.monotonic(), False
        accepted: list[tuple[str, VersionInfo]] = []
        pending: dict[Key, Pending] = {}
        with repository.lock:
            for name, versions in tree.items():
                for version, info in versions.items():
                    if not repository.is_new(name, info):
                        continue
                    if not self._settled((name, version), info, now, clock, pending):
                        unsettled = True
                        continue
                    accepted.append((name, info))
            self._pending = pending
            removed = repository.forget_missing(tree)
        for name, info in accepted:
            repository.accept(name, info)
        for key in removed:
            repository.remove(key)
        return unsettled

    def _settled(self, key: Key, info: VersionInfo, now: float, clock: float, pending: dict[Key, Pending]) -> bool:
        """Nothing under the version was written for `settle` seconds: by its modification times, or, where those
        are ahead of our clock (another machine's, S3's), by listing it unchanged for that long."""
        if now - info.activity >= self.settle:
            return True
        seen = self._pending.get(key)
        since = seen[2] if seen is not None and seen[:2] == (info.signature, info.activity) else clock
        pending[key] = (info.signature, info.activity, since)
        return clock - since >= self.settle
