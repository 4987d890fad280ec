"""Every model of one API: versions, lazy loading under per-version locks, LRU limits and live reloading."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import tempdirs
from engine.config import DEFAULT_MODEL_NAME, Models
from engine.errors import ModelError
from engine.models.layout import ModelFormat, VersionInfo, check_layout, group_versions
from engine.models.stores import Store, store_for

log = logging.getLogger("engine.models")

Key = tuple[str, int]


@dataclass
class Loaded:
    """A loaded version and the content signature it was loaded from."""

    model: Any
    signature: tuple


class ModelRepository:
    """Finds, loads, reloads and evicts the models of one API; shared by every client type."""

    def __init__(self, models: Models, project_root: Path, fmt: ModelFormat, type_name: str, *,
                 poll_interval: float = 10.0, cache_root: Path | None = None,
                 on_load: Callable[[str, bool, bool, float], None] | None = None) -> None:
        self.fmt = fmt
        self.on_load = on_load  # (model name, reload, ok, seconds) after every load attempt, for metrics
        self._ever_loaded: set[Key] = set()
        self.type_name = type_name
        self.poll_interval = poll_interval
        self.settle = min(1.0, poll_interval / 2)  # a version whose files changed this recently may be half-written
        self.cache_size = models.cache_size
        self.disk_cache_size = models.disk_cache_size
        self.single = models.path is not None
        self._owns_cache_root = cache_root is None
        self.cache_root = cache_root or tempdirs.make("models")

        def resolve(path: str) -> str:
            """Absolute, with symlinks kept: a `models -> releases/v5` link switched while serving is followed."""
            return path if path.startswith("s3://") else os.path.abspath(project_root / path)

        self.dir_location = resolve(models.dir) if models.dir else None
        self.locations = {DEFAULT_MODEL_NAME: resolve(models.path)} if models.path else \
            {entry.name: resolve(entry.path) for entry in models.paths or ()}
        self._stores: dict[bool, Store] = {}
        self._lock = threading.RLock()
        self._slot_freed = threading.Condition(self._lock)
        self._versions: dict[str, dict[int, VersionInfo]] = {}
        self._loaded: OrderedDict[Key, Loaded] = OrderedDict()  # least recently used first
        self._reserved = 0  # memory slots held by loads in progress
        self._on_disk: OrderedDict[Key, VersionInfo] = OrderedDict()  # downloaded copies, least recently used first
        self._downloading = 0  # disk slots held by downloads in progress
        self._discarding: set[Key] = set()  # versions whose downloaded copy is being deleted
        self._loading: set[Key] = set()
        self._load_locks: dict[Key, threading.Lock] = {}
        # failed version → (signature that failed, or None when worth retrying (a failed download), why)
        self._errors: dict[Key, tuple[tuple | None, str]] = {}
        self._pending: dict[Key, tuple[tuple, float, float]] = {}  # unsettled version → (signature, activity, since)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # --- start-up and shutdown --------------------------------------------------------------------

    def scan(self) -> None:
        """Find every model and version; raise ModelError for a missing model or a layout the type cannot load."""
        try:
            tree = self._list_tree()
        except ModelError:
            raise
        except Exception as error:
            where = self.dir_location or ", ".join(self.locations.values())
            raise ModelError(f"cannot list the models at {where}: {type(error).__name__}: {error}") from None
        problems = []
        for name, versions in list(tree.items()):
            if not versions and self.dir_location:  # an empty sub-directory: maybe a model still being copied
                log.warning("models.dir: %s has no files yet; it becomes a model when it has", self._location(name))
                del tree[name]
            elif not versions:
                problems.append(f"model '{name}': nothing found at {self._location(name)}")
            for info in versions.values():
                try:
                    check_layout(name, self._location(name), info, self.fmt, self.type_name)
                except ModelError as error:
                    problems.append(str(error))
        if problems:
            raise ModelError("\n".join(problems))
        if self.dir_location and not tree:
            log.warning("models.dir %s has no models yet; new sub-directories are picked up while serving",
                        self.dir_location)
        self._versions = tree

    def preload(self) -> None:
        """Load every version now (used when caching is off); fail if a model has no version that loads.

        As for versions found later, one that fails is not published (not in `versions`, not served by "latest")
        and is reported under `errors` until its files change."""
        for name, versions in list(self._versions.items()):
            failed = []
            for version in sorted(versions, reverse=True):
                try:
                    self._get_version(name, version)
                except ModelError:
                    failed.append(version)  # logged by _load
            if versions and len(failed) == len(versions):
                reasons = [message for (model, _), (_, message) in self._errors.items() if model == name]
                raise ModelError(f"model '{name}': no version could be loaded: {'; '.join(reasons)}")
            with self._lock:
                for version in failed:
                    if (name, version) not in self._loaded:
                        self._versions.get(name, {}).pop(version, None)

    def start_polling(self) -> None:
        """Watch the model locations for new, changed and removed versions."""
        self._poller = threading.Thread(target=self._poll, name="engine-model-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        """Stop watching, free every loaded model and delete downloaded copies."""
        self._stop.set()
        if self._poller:
            self._poller.join()
        with self._lock:
            loaded, self._loaded = list(self._loaded.values()), OrderedDict()
            copies, self._on_disk = list(self._on_disk.values()), OrderedDict()
        for entry in loaded:
            self._unload(entry.model)
        for copy in copies:
            self._store(copy.location).discard(copy)
        if self._owns_cache_root:
            tempdirs.remove(self.cache_root)

    # --- requests ------------------------------------------------------------------------------------

    def get(self, model_name: str | None = None, model_version: str | int | None = "latest") -> Any:
        """The loaded model for a name and a version ("latest", or digits); ModelError (4xx/500) otherwise."""
        name = self._check_name(model_name)
        version = self._check_version(model_version)
        with self._lock:
            versions = self._versions.get(name)
            if versions is None:
                raise ModelError(f"model '{name}' wasn't found in the list of available models: "
                                 f"{sorted(self._versions)}", 404)
            if version is not None and version not in versions:
                failed = self._errors.get((name, version))
                if failed is not None:  # on disk, but it never loaded
                    raise ModelError(failed[1])
                raise ModelError(f"model {name} of version {version} wasn't found; available versions: "
                                 f"{sorted(versions, reverse=True)}", 404)
            candidates = [version] if version is not None else sorted(versions, reverse=True)
        first_error: ModelError | None = None
        for candidate in candidates:  # "latest" falls back to the newest version that loads
            try:
                return self._get_version(name, candidate)
            except ModelError as error:
                first_error = first_error or error
        raise first_error or ModelError(f"model {name} has no versions available", 404)

    def model_names(self) -> list[str]:
        """The names of the models currently available."""
        with self._lock:
            return sorted(self._versions)

    def metadata(self) -> dict[str, Any]:
        """Per model: versions (newest first), their timestamps, which are loaded, load errors, format details."""
        with self._lock:
            summary: dict[str, Any] = {}
            for name in sorted(set(self._versions) | {key[0] for key in self._errors}):
                versions = self._versions.get(name, {})
                newest_first = sorted(versions, reverse=True)
                entry: dict[str, Any] = {
                    "versions": [str(v) for v in newest_first],
                    "timestamps": [int(versions[v].timestamp) for v in newest_first],
                    "loaded": [str(v) for v in newest_first if (name, v) in self._loaded],
                }
                errors = {str(v): message for (model, v), (_, message) in self._errors.items() if model == name}
                if errors:
                    entry["errors"] = errors
                details = {str(v): self.fmt.describe(self._loaded[(name, v)].model)
                           for v in newest_first if (name, v) in self._loaded}
                if any(details.values()):
                    entry["details"] = details
                summary[name] = entry
            return summary

    def memory_usage(self) -> tuple[int, int]:
        """(models loaded in memory, versions downloaded on disk), for tests and logs."""
        with self._lock:
            return len(self._loaded), len(self._on_disk)

    # --- loading and eviction --------------------------------------------------------------------------

    def _get_version(self, name: str, version: int) -> Any:
        key = (name, version)
        with self._lock:
            info = self._current(key)
            fresh = self._fresh(key, info)
            if fresh is not None:
                return fresh
            lock = self._load_locks.setdefault(key, threading.Lock())
        with lock:  # one load per version; concurrent callers wait here and then find it loaded
            with self._lock:
                info = self._current(key)
                fresh = self._fresh(key, info)
                if fresh is not None:
                    return fresh
                failed = self._errors.get(key)
                if failed and failed[0] == info.signature:  # known broken until its files change
                    if key in self._loaded:  # rewritten in place and broken: keep serving the old copy
                        return self._loaded[key].model
                    raise ModelError(failed[1])
            try:
                return self._load(key, info)
            except ModelError:
                with self._lock:
                    if key in self._loaded:
                        log.warning("model %s of version %s: keeping the previously loaded copy", *key)
                        return self._loaded[key].model
                raise

    def _load(self, key: Key, info: VersionInfo) -> Any:
        """Load one version into a reserved memory slot (call holding the version's load lock)."""
        name, version = key
        with self._lock:
            evicted = self._reserve_slot(key)
            self._loading.add(key)
        self._unload_all(evicted)
        started = time.monotonic()
        step = "download"
        try:
            path = self._materialise(key, info)
            step = "load"
            model = self.fmt.load(path)
        except Exception as error:
            message = f"model {name} of version {version} failed to {step}: {type(error).__name__}: {error}"
            log.exception("%s", message)
            self._report_load(key, False, started)
            with self._lock:
                self._release_slot(key)
                # a load failure sticks until the files change; a failed download is tried again next time
                self._errors[key] = (info.signature if step == "load" else None, message)
            raise ModelError(message) from None
        except BaseException:  # KeyboardInterrupt, SystemExit: give the slot back all the same
            with self._lock:
                self._release_slot(key)
            raise
        with self._lock:
            self._release_slot(key)
            replaced = self._loaded.pop(key, None)
            self._loaded[key] = Loaded(model, info.signature)
            self._errors.pop(key, None)
        if replaced is not None:
            self._unload(replaced.model)
        log.info("model %s of version %s loaded in %.2f s", name, version, time.monotonic() - started)
        self._report_load(key, True, started)
        return model

    def _report_load(self, key: Key, ok: bool, started: float) -> None:
        reload = key in self._ever_loaded  # after an eviction or a change in place
        if ok:
            self._ever_loaded.add(key)
        if self.on_load is not None:
            self.on_load(key[0], reload, ok, time.monotonic() - started)

    def _current(self, key: Key) -> VersionInfo:
        info = self._versions.get(key[0], {}).get(key[1])
        if info is None:
            raise ModelError(f"model {key[0]} of version {key[1]} wasn't found (it was removed)", 404)
        return info

    def _fresh(self, key: Key, info: VersionInfo) -> Any | None:
        loaded = self._loaded.get(key)
        if loaded is None or loaded.signature != info.signature:
            return None
        self._loaded.move_to_end(key)
        if key in self._on_disk:
            self._on_disk.move_to_end(key)
        return loaded.model

    def _reserve_slot(self, key: Key) -> list[Any]:
        """Make room for one more model in memory (evicting least recently used ones); wait if all slots are loading."""
        evicted = []
        while self.cache_size is not None and len(self._loaded) + self._reserved >= self.cache_size:
            victim = next((k for k in self._loaded if k != key), None)
            if victim is None and key in self._loaded:
                victim = key  # only the outdated copy of this very version is left to make room
            if victim is None:
                self._slot_freed.wait()
                continue
            evicted.append(self._loaded.pop(victim).model)
            log.info("model %s of version %s evicted from memory (cache_size %d)", *victim, self.cache_size)
        self._reserved += 1
        return evicted

    def _release_slot(self, key: Key) -> None:
        self._reserved -= 1
        self._loading.discard(key)
        self._slot_freed.notify_all()

    def _materialise(self, key: Key, info: VersionInfo) -> Path:
        """A local path of the version; downloads hold a disk slot from before they start (disk_cache_size)."""
        store = self._store(info.location)
        if not store.keeps_copies:
            return store.materialise(info)
        doomed: list[tuple[Key, VersionInfo]] = []
        with self._lock:
            while key in self._discarding:  # its evicted copy is still being deleted: never hand out that path
                self._slot_freed.wait()
            copy = self._on_disk.get(key)
            reserved = copy is None or copy.signature != info.signature
            if reserved:
                if copy is not None:
                    doomed.append((key, self._on_disk.pop(key)))  # an outdated copy of this version
                while self.disk_cache_size is not None \
                        and len(self._on_disk) + self._downloading >= self.disk_cache_size:
                    victim = next((k for k in self._on_disk if k not in self._loaded and k not in self._loading), None)
                    if victim is None:
                        log.warning("disk_cache_size %d: every downloaded model is in use", self.disk_cache_size)
                        break
                    doomed.append((victim, self._on_disk.pop(victim)))
                    log.info("model %s of version %s evicted from disk (disk_cache_size %d)", *victim,
                             self.disk_cache_size)
                self._downloading += 1
            self._discarding.update(doomed_key for doomed_key, _ in doomed)
        self._discard(doomed)
        try:
            path = store.materialise(info)
        except BaseException:
            if reserved:
                with self._lock:
                    self._downloading -= 1
            raise
        with self._lock:
            if reserved:
                self._downloading -= 1
            self._on_disk[key] = info
            self._on_disk.move_to_end(key)
        return path

    def _discard(self, copies: list[tuple[Key, VersionInfo]]) -> None:
        """Delete downloaded copies marked in `_discarding` (outside the lock: it may take a while), then unmark."""
        for key, info in copies:
            try:
                self._store(info.location).discard(info)
            finally:
                with self._lock:
                    self._discarding.discard(key)
                    self._slot_freed.notify_all()

    def _unload(self, model: Any) -> None:
        try:
            self.fmt.unload(model)
        except Exception:
            log.exception("failed to unload a model")

    def _unload_all(self, models: list[Any]) -> None:
        for model in models:
            self._unload(model)

    # --- names, versions, locations --------------------------------------------------------------------

    def _check_name(self, name: str | None) -> str:
        if self.single:
            return DEFAULT_MODEL_NAME  # Cortex ignored model_name for a single model
        with self._lock:
            available = sorted(self._versions)
        if name is None:
            raise ModelError(f"model_name was not specified, choose one of the following: {available}", 400)
        if not isinstance(name, str):
            raise ModelError(f"model_name must be a string, not {type(name).__name__}", 400)
        if name not in available:
            raise ModelError(f"'{name}' model wasn't found in the list of available models: {available}", 404)
        return name

    @staticmethod
    def _check_version(version: str | int | None) -> int | None:
        if version is None or version == "latest":
            return None
        if isinstance(version, int) and not isinstance(version, bool) and version >= 0:
            return version
        if isinstance(version, str) and version.isascii() and version.isdigit() and len(version) <= 100:
            return int(version)
        raise ModelError(f"model_version must be either a parse-able numeric value or 'latest', not {version!r}", 400)

    def _location(self, name: str) -> str:
        if self.dir_location:
            return f"{self.dir_location.rstrip('/')}/{name}"
        return self.locations[name]

    def _store(self, location: str) -> Store:
        s3 = location.startswith("s3://")
        if s3 not in self._stores:
            self._stores[s3] = store_for(location, self.cache_root)
        return self._stores[s3]

    def _list_tree(self) -> dict[str, dict[int, VersionInfo]]:
        names = self._store(self.dir_location).subdirectories(self.dir_location) if self.dir_location \
            else list(self.locations)
        tree = {}
        for name in names:
            location = self._location(name)
            listing = self._store(location).listing(location)
            tree[name] = group_versions(location, *listing) if listing else {}
        return tree

    # --- live reloading ----------------------------------------------------------------------------------

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                while self.refresh() and not self._stop.wait(self.settle):
                    pass  # something was still being written: look again soon
            except Exception:  # never let one bad pass end live reloading
                log.exception("model reloading failed; trying again in %s s", self.poll_interval)

    def refresh(self) -> bool:
        """Apply what changed in the model locations; True while some version still looks half-written."""
        try:
            tree = self._list_tree()
        except Exception:
            log.exception("could not list the models; keeping the current ones")
            return False
        now, clock, unsettled, accepted, pending = time.time(), time.monotonic(), False, [], {}
        with self._lock:
            for name, versions in tree.items():
                for version, info in versions.items():
                    known = self._versions.get(name, {}).get(version)
                    if known is not None and known.signature == info.signature:
                        continue
                    failed = self._errors.get((name, version))
                    if failed is not None and failed[0] == info.signature:
                        continue  # known broken until its files change
                    if not self._settled((name, version), info, now, clock, pending):
                        unsettled = True
                        continue
                    accepted.append((name, info))
            self._pending = pending
            removed = [(name, v) for name, versions in self._versions.items() for v in versions
                       if v not in tree.get(name, {})]
            for key, (signature, _) in list(self._errors.items()):
                info = tree.get(key[0], {}).get(key[1])
                if info is None or signature not in (None, info.signature):
                    del self._errors[key]  # gone or changed since it failed: no longer worth reporting
        for name, info in accepted:
            self._accept(name, info)
        for key in removed:
            self._remove(key)
        return unsettled

    def _settled(self, key: Key, info: VersionInfo, now: float, clock: float, pending: dict) -> bool:
        """Nothing under the version was written for `settle` seconds: by its modification times, or, where those
        are ahead of our clock (another machine's, S3's), by listing it unchanged for that long."""
        if now - info.activity >= self.settle:
            return True
        seen = self._pending.get(key)
        since = seen[2] if seen is not None and seen[:2] == (info.signature, info.activity) else clock
        pending[key] = (info.signature, info.activity, since)
        return clock - since >= self.settle

    def _accept(self, name: str, info: VersionInfo) -> None:
        key = (name, info.version)
        try:
            check_layout(name, self._location(name), info, self.fmt, self.type_name)
        except ModelError as error:
            log.error("%s", error)
            with self._lock:
                self._errors[key] = (info.signature, str(error))
            return
        with self._lock:
            is_new = info.version not in self._versions.get(name, {})
            lock = self._load_locks.setdefault(key, threading.Lock())
        with lock:
            if self.cache_size is None:  # without caching, a version is published only once it has loaded
                try:
                    self._load(key, info)
                except ModelError:
                    return
            with self._lock:
                self._versions.setdefault(name, {})[info.version] = info
        log.info("model %s of version %s %s", name, info.version, "is available" if is_new else "was updated")

    def _remove(self, key: Key) -> None:
        with self._lock:
            lock = self._load_locks.setdefault(key, threading.Lock())
        with lock, self._lock:  # after any load of it in progress, so that nothing it loads outlives it
            versions = self._versions.get(key[0], {})
            info = versions.pop(key[1], None)
            if not versions:
                self._versions.pop(key[0], None)
            loaded = self._loaded.pop(key, None)
            on_disk = self._on_disk.pop(key, None)
            self._errors.pop(key, None)
            if on_disk is not None:
                self._discarding.add(key)
        if loaded is not None:
            self._unload(loaded.model)
        if on_disk is not None:
            self._discard([(key, on_disk)])
        if info is not None:
            log.info("model %s of version %s was removed", *key)
