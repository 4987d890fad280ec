"""A repository's LRU limits: `cache_size` models in memory and `disk_cache_size` downloaded copies on disk.

Both are strict. A load holds a memory slot from before it starts and waits for one when every slot is taken by a
load in progress; a download holds a disk slot from before it starts. Eviction picks the least recently used model
that is not being loaded. The repository's lock guards this state: every method is called with it held, and
`wait` releases it while waiting. Each loaded version and each copy also carries its charge in the byte budgets
(engine.models.budget), which may evict it too (`evict_loaded`, `evict_copy`).
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import engine.models.budget as budget
from engine.models.budget import Charge
from engine.models.layout import Signature, VersionInfo

log = logging.getLogger("engine.models")

Key = tuple[str, int]


@dataclass
class Loaded:
    """A loaded version, the content signature it was loaded from, and its bytes in the memory budgets."""

    model: Any
    signature: Signature
    charge: Charge


@dataclass
class Copy:
    """A downloaded copy of a version, and its bytes in the disk budgets."""

    info: VersionInfo
    charge: Charge


class Limits:
    """What is in memory and on disk, least recently used first, and the slots held by loads and downloads."""

    def __init__(self, lock: threading.RLock, cache_size: int | None, disk_cache_size: int | None) -> None:
        self.cache_size = cache_size
        self.disk_cache_size = disk_cache_size
        self._freed = threading.Condition(lock)  # a memory slot or a copy being deleted was freed
        self.loaded: OrderedDict[Key, Loaded] = OrderedDict()
        self.on_disk: OrderedDict[Key, Copy] = OrderedDict()
        self._reserved = 0  # memory slots held by loads in progress
        self._loading: set[Key] = set()
        self._downloading = 0  # disk slots held by downloads in progress
        self._discarding: set[Key] = set()  # versions whose downloaded copy is being deleted

    # --- memory ---------------------------------------------------------------------------------------------

    def fresh(self, key: Key, signature: Signature | None = None) -> Any | None:
        """The loaded model (of exactly this content, when `signature` is given), marked as just used and held by the
        current request (engine.models.budget.holding); None when it must be loaded."""
        loaded = self.loaded.get(key)
        if loaded is None or signature not in (None, loaded.signature) or not budget.use(loaded.charge):
            return None  # not loaded, outdated, or being evicted by the byte budget
        self.loaded.move_to_end(key)
        if key in self.on_disk:
            self.on_disk.move_to_end(key)
        return loaded.model

    def reserve_memory(self, key: Key) -> list[Loaded]:
        """Hold a memory slot for loading `key`, evicting least recently used models (returned, to unload)."""
        evicted: list[Loaded] = []
        while self.cache_size is not None and len(self.loaded) + self._reserved >= self.cache_size:
            victim = next((k for k in self.loaded if k != key), None)
            if victim is None and key in self.loaded:
                victim = key  # only the outdated copy of this very version is left to make room
            if victim is None:
                self._freed.wait()
                continue
            evicted.append(self.loaded.pop(victim))
            log.info("model %s of version %s evicted from memory (cache_size %d)", *victim, self.cache_size)
        self._reserved += 1
        self._loading.add(key)
        return evicted

    def release_memory(self, key: Key) -> None:
        """Give back the slot of a load that has ended (it failed, or its model is now kept)."""
        self._reserved -= 1
        self._loading.discard(key)
        self._freed.notify_all()

    def keep(self, key: Key, loaded: Loaded) -> Loaded | None:
        """Keep a loaded model in the slot its load held; returns the copy it replaces, to unload."""
        self.release_memory(key)
        replaced = self.loaded.pop(key, None)
        self.loaded[key] = loaded
        return replaced

    def evict_loaded(self, charge: Charge) -> Loaded | None:
        """Take out the loaded version the byte budget evicted, unless it was replaced or dropped meanwhile."""
        loaded = self.loaded.get(charge.key)
        if loaded is None or loaded.charge is not charge:
            return None
        del self.loaded[charge.key]
        self._freed.notify_all()
        return loaded

    # --- disk ---------------------------------------------------------------------------------------------------

    def reserve_disk(self, key: Key, info: VersionInfo, user: Charge) -> tuple[bool, list[tuple[Key, Copy]]]:
        """Before materialising `key`: whether it must be downloaded (then a disk slot is held; otherwise its copy is
        pinned by `user`, the load's memory charge), and the copies to delete first (outdated or evicted), marked as
        being deleted until `deleted` is called for each."""
        while key in self._discarding:  # its evicted copy is still being deleted: never hand out that path
            self._freed.wait()
        doomed: list[tuple[Key, Copy]] = []
        copy = self.on_disk.get(key)
        if copy is not None and copy.info.signature == info.signature and budget.pin(copy.charge, user):
            return False, doomed
        if copy is not None:
            doomed.append((key, self.on_disk.pop(key)))  # an outdated copy of this version, or one being evicted
        while self.disk_cache_size is not None and len(self.on_disk) + self._downloading >= self.disk_cache_size:
            victim = next((k for k in self.on_disk if k not in self.loaded and k not in self._loading), None)
            if victim is None:
                log.warning("disk_cache_size %d: every downloaded model is in use", self.disk_cache_size)
                break
            doomed.append((victim, self.on_disk.pop(victim)))
            log.info("model %s of version %s evicted from disk (disk_cache_size %d)", *victim, self.disk_cache_size)
        self._downloading += 1
        self._discarding.update(doomed_key for doomed_key, _ in doomed)
        return True, doomed

    def downloaded(self, key: Key, copy: Copy | None, reserved: bool) -> None:
        """After materialising: free the disk slot, and record the copy when there is one."""
        if reserved:
            self._downloading -= 1
        if copy is not None:
            self.on_disk[key] = copy
            self.on_disk.move_to_end(key)

    def evict_copy(self, charge: Charge) -> Copy | None:
        """Take out the copy the byte budget evicted (marked as being deleted), unless it was replaced meanwhile."""
        copy = self.on_disk.get(charge.key)
        if copy is None or copy.charge is not charge:
            return None
        del self.on_disk[charge.key]
        self.deleting(charge.key)
        return copy

    def deleting(self, key: Key) -> None:
        """Mark a copy taken out of `on_disk` as being deleted."""
        self._discarding.add(key)

    def deleted(self, key: Key) -> None:
        """A copy marked as being deleted is gone."""
        self._discarding.discard(key)
        self._freed.notify_all()

    # --- removal ---------------------------------------------------------------------------------------------

    def drop(self, key: Key) -> tuple[Loaded | None, Copy | None]:
        """Forget a removed version: its loaded model and its copy on disk (now being deleted), to free."""
        copy = self.on_disk.pop(key, None)
        if copy is not None:
            self.deleting(key)
        return self.loaded.pop(key, None), copy

    def unload(self, key: Key) -> Loaded | None:
        """Take a version out of memory for an unload request (its slot is free at once; the caller frees it)."""
        loaded = self.loaded.pop(key, None)
        if loaded is not None:
            self._freed.notify_all()
        return loaded

    def clear(self) -> tuple[list[Loaded], list[Copy]]:
        """Forget everything, at shutdown: the loaded models and the copies on disk, to free."""
        loaded, self.loaded = list(self.loaded.values()), OrderedDict()
        copies, self.on_disk = list(self.on_disk.values()), OrderedDict()
        return loaded, copies
