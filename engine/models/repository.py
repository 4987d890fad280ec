"""Every model of one API: its versions, loaded on demand under per-version locks (engine.models.cache holds the
LRU limits, engine.models.budget the byte budgets, engine.models.reloading watches for new versions), and loaded or
unloaded by request (`load`, `unload`: the model repository API of engine-oip and `engine models`)."""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import engine.models.budget as budget
import engine.models.events as events
from engine import tempdirs
from engine.errors import ModelError
from engine.models.budget import BudgetError, Charge, Ledger
from engine.models.cache import Copy, Key, Limits, Loaded
from engine.models.layout import ModelFormat, Signature, VersionInfo, check_layout, group_versions
from engine.models.reloading import Reloader
from engine.models.stores import Store, store_for
from engine.project.config import DEFAULT_MODEL_NAME, Models
from engine.settings import ServeSettings

log = logging.getLogger("engine.models")


class ModelRepository:
    """Finds, loads, reloads and evicts the models of one API; shared by every client type."""

    def __init__(self, models: Models, project_root: Path, fmt: ModelFormat, type_name: str, *,
                 poll_interval: float = ServeSettings.model_poll_interval, cache_root: Path | None = None,
                 on_load: Callable[[str, bool, bool, float], None] | None = None, api_name: str = "",
                 ledgers: tuple[Ledger, Ledger] | None = None) -> None:
        self.fmt = fmt
        self.on_load = on_load  # (model name, reload, ok, seconds) after every load attempt, for metrics
        self._ever_loaded: set[Key] = set()
        self.type_name = type_name
        self.api_name = api_name
        self.cache_size = models.cache_size
        # the byte budgets a version counts in: the API's own (models.memory_budget, disk_budget), then the
        # process's (--model-memory, --model-disk; `ledgers` replaces those, for tests)
        memory, disk = ledgers or (budget.process_ledger("memory"), budget.process_ledger("disk"))
        where = f"api '{api_name}': models" if api_name else "models"
        self.memory_ledgers = (Ledger(models.memory_budget, f"{where}.memory_budget", "memory"), memory) \
            if models.memory_budget is not None else (memory,)
        self.disk_ledgers = (Ledger(models.disk_budget, f"{where}.disk_budget", "disk"), disk) \
            if models.disk_budget is not None else (disk,)
        # loaded when asked for (and evicted) rather than all before the API is ready: with a cache or a budget
        self.on_demand = models.cache_size is not None or any(
            ledger.limit is not None for ledger in self.memory_ledgers + self.disk_ledgers)
        self._sizes: dict[Key, tuple[Signature, int]] = {}  # each version's measured size, for its content
        if any(ledger.limit is not None for ledger in self.memory_ledgers):
            budget.return_freed_memory()
        self.single = models.path is not None
        self._owns_cache_root = cache_root is None
        self.cache_root = cache_root or tempdirs.make("models")

        def resolve(path: str) -> str:
            """Absolute, with symlinks kept: a `models -> releases/v5` link switched while serving is followed."""
            return path if path.startswith("s3://") else os.path.abspath(project_root / path)

        self.dir_location = resolve(models.dir) if models.dir else None
        self.locations = {DEFAULT_MODEL_NAME: resolve(models.path)} if models.path else \
            {entry.name: resolve(entry.path) for entry in models.paths or () if entry.path}  # path: set when validated
        self._stores: dict[bool, Store] = {}
        self.lock = threading.RLock()
        self.limits = Limits(self.lock, models.cache_size, models.disk_cache_size)
        self.reloader = Reloader(self, poll_interval)
        self._versions: dict[str, dict[int, VersionInfo]] = {}
        self._load_locks: dict[Key, threading.Lock] = {}
        # failed version → (signature that failed, or None when worth retrying (a failed download), why)
        self._errors: dict[Key, tuple[Signature | None, str]] = {}
        self._unloaded: set[str] = set()  # models unloaded by request: unavailable until loaded again
        self._managing = threading.Lock()  # one load or unload request, or one new version, at a time

    @property
    def settle(self) -> float:
        """Seconds a version's files must stay unchanged before it is taken (see engine.models.reloading)."""
        return self.reloader.settle

    @settle.setter
    def settle(self, seconds: float) -> None:
        self.reloader.settle = seconds

    def refresh(self) -> bool:
        """Apply what changed in the model locations now; True while some version still looks half-written."""
        return self.reloader.refresh()

    # --- start-up and shutdown --------------------------------------------------------------------

    def scan(self) -> None:
        """Find every model and version; raise ModelError for a missing model or a layout the type cannot load."""
        try:
            tree = self.list_tree()
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
        for name in list(self._versions):
            self._preload_model(name)

    def _preload_model(self, name: str) -> None:
        with self.lock:
            versions = sorted(self._versions.get(name, {}), reverse=True)
        failed = []
        for version in versions:
            try:
                self._get_version(name, version)
            except ModelError:
                failed.append(version)  # logged by _load
        if versions and len(failed) == len(versions):
            reasons = [message for (model, _), (_, message) in self._errors.items() if model == name]
            raise ModelError(f"model '{name}': no version could be loaded: {'; '.join(reasons)}")
        with self.lock:
            for version in failed:
                if (name, version) not in self.limits.loaded:
                    self._versions.get(name, {}).pop(version, None)

    def start_polling(self) -> None:
        """Watch the model locations for new, changed and removed versions."""
        self.reloader.start()

    def stop(self) -> None:
        """Stop watching, free every loaded model and delete downloaded copies."""
        self.reloader.stop()
        with self.lock:
            loaded, copies = self.limits.clear()
        self._drop_loaded(loaded)
        for copy in copies:
            self._forget_copy(copy)
            self._store(copy.info.location).discard(copy.info)
        if self._owns_cache_root:
            tempdirs.remove(self.cache_root)

    # --- requests ------------------------------------------------------------------------------------

    def get(self, model_name: str | None = None, model_version: str | int | None = "latest") -> Any:
        """The loaded model for a name and a version ("latest", or digits); ModelError (4xx/500) otherwise."""
        name = self._check_name(model_name)
        version = self._check_version(model_version)
        with self.lock:
            versions = self._versions.get(name)
            if versions is None:
                raise ModelError(f"model '{name}' wasn't found in the list of available models: "
                                 f"{sorted(self._versions)}", 404)
            if name in self._unloaded:
                raise self._unavailable(name)
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
            except BudgetError:
                raise  # it loads, but not now or not here: never an older version in its place
            except ModelError as error:
                first_error = first_error or error
        raise first_error or ModelError(f"model {name} has no versions available", 404)

    @contextmanager
    def use(self, model_name: str | None = None, model_version: str | int | None = "latest") -> Iterator[Any]:
        """`get`, the model held loaded (never evicted by a byte budget) until the block ends."""
        with budget.holding():
            yield self.get(model_name, model_version)

    def model_names(self) -> list[str]:
        """The names of the models currently available."""
        with self.lock:
            return sorted(self._versions)

    # --- load and unload by request -----------------------------------------------------------------------------

    def load(self, name: str) -> None:
        """Make a model available again and load it now, so that its next request does not wait: its latest version
        (the newest that loads), or, when models are not loaded on demand (no cache, no byte budget), every version
        as at start-up. ModelError: 404 for an unknown model; the load's own error otherwise, and then a model that
        was unloaded stays unloaded."""
        with self._managing:
            name = self._known(name)
            with self.lock:
                was_unloaded = name in self._unloaded
                self._unloaded.discard(name)  # requests that come meanwhile wait for the load rather than fail
            try:
                if self.on_demand:
                    self.get(name, "latest")
                else:
                    self._preload_model(name)
            except ModelError:
                if was_unloaded:
                    self._take_out(name)
                raise
        log.info("%s is loaded%s", self._model_label(name), " again" if was_unloaded else "")

    def unload(self, name: str) -> None:
        """Make a model unavailable (its requests get 503 until `load`) and free its loaded versions: at once those
        no request holds, each of the others as soon as the last request holding it ends (engine.models.budget).
        A load of it in progress ends first. New versions of it found meanwhile are published, not loaded.
        ModelError 404 for an unknown model."""
        with self._managing:
            name = self._known(name)
            self._take_out(name)
        log.info("%s is unloaded", self._model_label(name))

    def unloaded(self) -> list[str]:
        """The models unloaded by request, which answer 503 until loaded again."""
        with self.lock:
            return sorted(self._unloaded)

    def _take_out(self, name: str) -> None:
        """Mark a model unloaded and free its loaded versions (each after any load of it in progress)."""
        with self.lock:
            self._unloaded.add(name)
            versions = set(self._versions.get(name, {})) | {v for (model, v) in self.limits.loaded if model == name}
            locks = [(version, self._load_locks.setdefault((name, version), threading.Lock()))
                     for version in sorted(versions)]
        for version, lock in locks:
            with lock, self.lock:
                loaded = self.limits.unload((name, version))
            if loaded is not None:
                budget.free_when_unused(loaded.charge, functools.partial(self._drop_loaded, [loaded]))

    def _known(self, name: str) -> str:
        """The model `name` names (any name, for the single model); ModelError 404 when there is none."""
        if self.single:
            return DEFAULT_MODEL_NAME
        with self.lock:
            if name not in self._versions:
                raise ModelError(f"model '{name}' wasn't found in the list of available models: "
                                 f"{sorted(self._versions)}", 404)
        return name

    def _unavailable(self, name: str) -> ModelError:
        """The 503 of a request for an unloaded model, saying how to load it again."""
        api = self.api_name or "<api>"
        public = api if self.single else f"{api}.{name}"  # what `engine models` and the OIP call it
        return ModelError(f"{self._model_label(name)} is unloaded; load it again with `engine models load {public}` "
                          f"(or POST /v2/repository/models/{public}/load)", 503)

    def _model_label(self, name: str) -> str:
        where = f" of api '{self.api_name}'" if self.api_name else ""
        return f"the model{where}" if self.single else f"model {name}{where}"

    def metadata(self) -> dict[str, Any]:
        """Per model: versions (newest first), their timestamps, which are loaded, load errors, format details."""
        with self.lock:
            summary: dict[str, Any] = {}
            for name in sorted(set(self._versions) | {key[0] for key in self._errors}):
                versions = self._versions.get(name, {})
                newest_first = sorted(versions, reverse=True)
                entry: dict[str, Any] = {
                    "versions": [str(v) for v in newest_first],
                    "timestamps": [int(versions[v].timestamp) for v in newest_first],
                    "loaded": [str(v) for v in newest_first if (name, v) in self.limits.loaded],
                }
                if name in self._unloaded:
                    entry["unloaded"] = True
                errors = {str(v): message for (model, v), (_, message) in self._errors.items() if model == name}
                if errors:
                    entry["errors"] = errors
                details = {str(v): self.fmt.describe(self.limits.loaded[(name, v)].model)
                           for v in newest_first if (name, v) in self.limits.loaded}
                if any(details.values()):
                    entry["details"] = details
                summary[name] = entry
            return summary

    def memory_usage(self) -> tuple[int, int]:
        """(models loaded in memory, versions downloaded on disk), for tests and logs."""
        with self.lock:
            return len(self.limits.loaded), len(self.limits.on_disk)

    def bytes_usage(self) -> tuple[int, int]:
        """(bytes the loaded models hold, bytes of their downloaded copies), as the byte budgets count them."""
        with self.lock:
            return (sum(entry.charge.size for entry in self.limits.loaded.values()),
                    sum(copy.charge.size for copy in self.limits.on_disk.values()))

    # --- loading and eviction --------------------------------------------------------------------------

    def _get_version(self, name: str, version: int) -> Any:
        key = (name, version)
        with self.lock:
            info = self._current(key)
            fresh = self.limits.fresh(key, info.signature)
            if fresh is not None:
                events.report(self.api_name, name, "hit")
                return fresh
            lock = self._load_locks.setdefault(key, threading.Lock())
        events.report(self.api_name, name, "miss")
        with lock:  # one load per version; concurrent callers wait here and then find it loaded
            with self.lock:
                if name in self._unloaded:  # unloaded since get() looked: never loaded back behind unload's back
                    raise self._unavailable(name)
                info = self._current(key)
                fresh = self.limits.fresh(key, info.signature)
                if fresh is not None:
                    return fresh
                failed = self._errors.get(key)
                if failed and failed[0] == info.signature:  # known broken until its files change
                    previous = self.limits.fresh(key)  # rewritten in place and broken: keep serving the old copy
                    if previous is not None:
                        return previous
                    raise ModelError(failed[1])
            try:
                return self._load(key, info)
            except ModelError:
                with self.lock:
                    previous = self.limits.fresh(key)
                    if previous is not None:
                        log.warning("model %s of version %s: keeping the previously loaded copy", *key)
                        return previous
                raise

    def _load(self, key: Key, info: VersionInfo) -> Any:
        """Load one version into a reserved memory slot and budget (call holding the version's load lock)."""
        name, version = key
        with self.lock:
            evicted = self.limits.reserve_memory(key)
        self._drop_loaded(evicted, "eviction")
        try:
            charge, victims = budget.admit(self, key, self._label(key), self._estimate(key, info), self.memory_ledgers)
        except BudgetError as error:
            with self.lock:
                self.limits.release_memory(key)
            self._refused(name, error)
            raise
        self._evict(victims)
        started = time.monotonic()
        step = "download"
        try:
            path = self._materialise(key, info, charge)
            step = "load"
            before = budget.resident_bytes()
            model = self.fmt.load(path)
            size = self._measure(key, model, before, info)
        except BudgetError as error:  # no room on disk for its copy: the version itself is fine
            self._abandon(key, charge)
            self._refused(name, error)
            raise
        except Exception as error:
            message = f"model {name} of version {version} failed to {step}: {type(error).__name__}: {error}"
            log.exception("%s", message)
            self._report_load(key, False, started)
            self._abandon(key, charge)
            with self.lock:
                # a load failure sticks until the files change; a failed download is tried again next time
                self._errors[key] = (info.signature if step == "load" else None, message)
            raise ModelError(message) from None
        except BaseException:  # KeyboardInterrupt, SystemExit: give the slot back all the same
            self._abandon(key, charge)
            raise
        self._sizes[key] = (info.signature, size)
        try:
            self._evict(budget.resize(charge, size))
        except BudgetError as error:  # measured only once loaded, and larger than a whole budget
            self._abandon(key, charge)
            self._unload(model)
            self._refused(name, error)
            raise
        with self.lock:
            replaced = self.limits.keep(key, Loaded(model, info.signature, charge))
            budget.keep(charge, held=True)
            self._errors.pop(key, None)
        events.report(self.api_name, name, "memory_bytes", size)
        if replaced is not None:
            self._drop_loaded([replaced])
        log.info("model %s of version %s loaded in %.2f s (%s)", name, version, time.monotonic() - started,
                 budget.shown(size))
        self._report_load(key, True, started)
        return model

    def _abandon(self, key: Key, charge: Charge) -> None:
        """Give back the slot and the bytes of a load that did not keep its model."""
        budget.discharge(charge)
        with self.lock:
            self.limits.release_memory(key)

    def _estimate(self, key: Key, info: VersionInfo) -> int:
        """The bytes to reserve before loading: the size measured at its last load, else its files' size."""
        known = self._sizes.get(key)
        return known[1] if known and known[0] == info.signature else sum(entry.size for entry in info.files)

    def _measure(self, key: Key, model: Any, before: int | None, info: VersionInfo) -> int:
        """A loaded version's size: as its format reports it, else the growth of resident memory while it loaded."""
        reported = getattr(self.fmt, "size", None)
        if callable(reported):
            try:
                size = reported(model)
            except Exception:
                log.exception("%s: its format could not tell its size; counting its load's memory instead",
                              self._label(key))
                size = None
            if size is not None:
                return int(size)
        after = budget.resident_bytes()
        if before is None or after is None:
            return sum(entry.size for entry in info.files)
        return max(0, after - before)

    def _label(self, key: Key) -> str:
        name = "the model" if self.single else f"model {key[0]}"
        where = f" of api '{self.api_name}'" if self.api_name else ""
        return f"{name} of version {key[1]}{where}"

    def _refused(self, name: str, error: BudgetError) -> None:
        log.warning("%s", error)
        events.report(self.api_name, name, "too_large" if error.status_code == 507 else "no_room")

    # --- the byte budgets' evictions (engine.models.budget.Owner) ------------------------------------------------

    def evicted(self, charge: Charge) -> None:
        """Drop a loaded version or a downloaded copy that a byte budget evicted."""
        events.report(self.api_name, charge.key[0], "eviction" if charge.what == "memory" else "disk_eviction")
        log.info("%s evicted from %s to make room within the model %s budget", charge.label, charge.what, charge.what)
        with self.lock:
            if charge.what == "memory":
                loaded, copy = self.limits.evict_loaded(charge), None
            else:
                loaded, copy = None, self.limits.evict_copy(charge)
        if loaded is not None:
            self._drop_loaded([loaded])
        if copy is not None:
            self._delete_copies([(charge.key, copy)])

    def _evict(self, victims: list[Charge]) -> None:
        for victim in victims:
            victim.owner.evicted(victim)

    def _drop_loaded(self, entries: list[Loaded], event: str | None = None) -> None:
        """Free loaded versions taken out of `limits.loaded` (`event`: what to count for each, e.g. an eviction)."""
        for entry in entries:
            budget.discharge(entry.charge)
            events.report(self.api_name, entry.charge.key[0], "memory_bytes", -entry.charge.size)
            if event:
                events.report(self.api_name, entry.charge.key[0], event)
            self._unload(entry.model)

    def _forget_copy(self, copy: Copy) -> None:
        budget.discharge(copy.charge)
        events.report(self.api_name, copy.charge.key[0], "disk_bytes", -copy.charge.size)

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

    def _materialise(self, key: Key, info: VersionInfo, user: Charge) -> Path:
        """A local path of the version; a download holds a disk slot (disk_cache_size) and its bytes in the disk
        budgets from before it starts. The copy is pinned by `user`, the load's memory charge."""
        store = self._store(info.location)
        if not store.keeps_copies:
            return store.materialise(info)
        with self.lock:
            reserved, doomed = self.limits.reserve_disk(key, info, user)
        for doomed_key, _ in doomed:
            if doomed_key != key:  # evicted by disk_cache_size (key's own: an outdated copy)
                events.report(self.api_name, doomed_key[0], "disk_eviction")
        self._delete_copies(doomed)
        if not reserved:
            return store.materialise(info)
        size = sum(entry.size for entry in info.files)
        try:
            charge, victims = budget.admit(self, key, self._label(key), size, self.disk_ledgers)
        except BudgetError:
            with self.lock:
                self.limits.downloaded(key, None, reserved)
            raise
        self._evict(victims)
        path = None
        try:
            path = store.materialise(info)
        finally:
            with self.lock:
                self.limits.downloaded(key, Copy(info, charge) if path is not None else None, reserved)
                if path is not None:  # pinned before it is kept: never evictable in between
                    budget.pin(charge, user)
                    budget.keep(charge, held=False)
            if path is None:
                budget.discharge(charge)
        events.report(self.api_name, key[0], "disk_bytes", size)
        return path

    def _delete_copies(self, copies: list[tuple[Key, Copy]]) -> None:
        """Delete copies marked as being deleted (outside the lock: it may take a while)."""
        for key, copy in copies:
            self._forget_copy(copy)
            try:
                self._store(copy.info.location).discard(copy.info)
            finally:
                with self.lock:
                    self.limits.deleted(key)

    def _unload(self, model: Any) -> None:
        try:
            self.fmt.unload(model)
        except Exception:
            log.exception("failed to unload a model")

    # --- names, versions, locations --------------------------------------------------------------------

    def _check_name(self, name: str | None) -> str:
        if self.single:
            return DEFAULT_MODEL_NAME  # Cortex ignored model_name for a single model
        with self.lock:
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

    def list_tree(self) -> dict[str, dict[int, VersionInfo]]:
        names = self._store(self.dir_location).subdirectories(self.dir_location) if self.dir_location \
            else list(self.locations)
        tree = {}
        for name in names:
            location = self._location(name)
            listing = self._store(location).listing(location)
            tree[name] = group_versions(location, *listing) if listing else {}
        return tree

    # --- what the reloader applies ---------------------------------------------------------------------------------

    def is_new(self, name: str, info: VersionInfo) -> bool:
        """True for a version not known with this content, unless it is known broken with it (call holding lock)."""
        known = self._versions.get(name, {}).get(info.version)
        if known is not None and known.signature == info.signature:
            return False
        failed = self._errors.get((name, info.version))
        return failed is None or failed[0] != info.signature  # known broken until its files change

    def forget_missing(self, tree: dict[str, dict[int, VersionInfo]]) -> list[Key]:
        """The known versions that `tree` lacks (to remove); drops the errors of versions gone or changed since
        (call holding the lock)."""
        for key, (signature, _) in list(self._errors.items()):
            info = tree.get(key[0], {}).get(key[1])
            if info is None or signature not in (None, info.signature):
                del self._errors[key]  # no longer worth reporting
        return [(name, v) for name, versions in self._versions.items() for v in versions
                if v not in tree.get(name, {})]

    def accept(self, name: str, info: VersionInfo) -> None:
        """Publish a new or changed version (without caching, only once it has loaded)."""
        key = (name, info.version)
        try:
            check_layout(name, self._location(name), info, self.fmt, self.type_name)
        except ModelError as error:
            log.error("%s", error)
            with self.lock:
                self._errors[key] = (info.signature, str(error))
            return
        with self.lock:
            is_new = info.version not in self._versions.get(name, {})
            lock = self._load_locks.setdefault(key, threading.Lock())
        with self._managing, lock:
            with self.lock:
                unloaded = name in self._unloaded  # published unloaded: loaded with the model, by `load`
            if not self.on_demand and not unloaded:  # without caching, a version is published once it has loaded
                try:
                    self._load(key, info)
                except ModelError:
                    return
            with self.lock:
                self._versions.setdefault(name, {})[info.version] = info
        log.info("model %s of version %s %s", name, info.version, "is available" if is_new else "was updated")

    def remove(self, key: Key) -> None:
        """Unpublish a version whose files are gone, and free what it held."""
        with self.lock:
            lock = self._load_locks.setdefault(key, threading.Lock())
        with lock, self.lock:  # after any load of it in progress, so that nothing it loads outlives it
            versions = self._versions.get(key[0], {})
            info = versions.pop(key[1], None)
            if not versions:
                self._versions.pop(key[0], None)
                self._unloaded.discard(key[0])  # gone: if it comes back, it comes back available
            loaded, copy = self.limits.drop(key)
            self._errors.pop(key, None)
            self._sizes.pop(key, None)
        if loaded is not None:
            self._drop_loaded([loaded])
        if copy is not None:
            self._delete_copies([(key, copy)])
        if info is not None:
            log.info("model %s of version %s was removed", *key)
