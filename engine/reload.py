"""engine serve --reload, for development: watch the project and, on a change, rebuild the APIs whose files or
configuration changed beside the running ones. New requests go to a new predictor once it is ready; requests in
flight finish on the old one, which is then stopped. A project that no longer validates, or a predictor that fails
to import or to __init__, leaves everything serving as it was, and the error is said once."""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import watchfiles

from engine import tracebacks
from engine.errors import EngineError
from engine.models import ModelRepository
from engine.project.config import Api
from engine.project.files import ENV_FILE, enter_view, remove_view
from engine.project.loading import LoadedProject, load_project
from engine.project.validate import model_locations
from engine.serving.admission import Admission
from engine.serving.pipeline import Pipeline
from engine.serving.splitter import serve_here

if TYPE_CHECKING:
    from engine.app import AppState, EngineApp
    from engine.serving.backend import Backend

log = logging.getLogger("engine")

DEBOUNCE_MS = 30  # changes this close together are one change (an editor's save is often several writes)
logging.getLogger("watchfiles").setLevel(logging.WARNING)  # its "N changes detected": engine says which


class Reloader:
    """Watches one served project and rebuilds what its changes touch."""

    def __init__(self, app: EngineApp, apis: list[str] | None = None) -> None:
        self.app = app
        self.state: AppState = app.state.engine
        self.apis = apis  # the APIs engine serve was asked to serve (None: all)
        self.views: list[Path] = []  # views made by reloads, removed when the server stops
        self.retiring: set[asyncio.Task[None]] = set()  # replaced backends waiting for their requests to end

    async def run(self, stop: asyncio.Event) -> None:
        """Apply each change until `stop` is set."""
        project = self.state.project
        paths = {project.root, project.config_file.parent}
        async for changes in watchfiles.awatch(*paths, watch_filter=self._watched, debounce=DEBOUNCE_MS, step=10,
                                               stop_event=stop, recursive=True):
            try:
                changed = {Path(path) for _, path in changes}
                log.info("reload: changed: %s", ", ".join(sorted(_shown(path, project.root) for path in changed)))
                await self.apply(changed)
            except Exception as error:  # a bug of engine's own: say it, keep serving and watching
                log.error("reload failed:\n%s", tracebacks.format_exception(error))

    async def close(self) -> None:
        """Stop the backends still being retired, and remove the views the reloads made."""
        if self.retiring:
            await asyncio.wait(set(self.retiring), timeout=self.state.settings.graceful_timeout)
        for view in self.views:
            remove_view(view)

    def _watched(self, change: watchfiles.Change, path: str) -> bool:
        return self.state.project.watches(Path(path))

    async def apply(self, changed: set[Path]) -> None:
        """Validate the project again, start new predictors for what changed, then swap them in."""
        state = self.state
        started = time.monotonic()
        try:
            loaded = await asyncio.to_thread(load_project, state.project.root, state.project.config_file, pm=state.pm,
                                             cpu=state.settings.cpu, apis=self.apis)
        except EngineError as error:
            log.error("reload: the project was not reloaded; still serving it as it was:\n%s", error)
            return
        rebuilt = self._to_rebuild(loaded, changed)
        served = {api.name: api for api in state.apis}
        removed = [name for name in served if name not in {api.name for api in loaded.apis}]
        if not rebuilt and not removed and _same_splitters(state, loaded):
            self._update_jobs(loaded, None)
            log.info("reload: nothing served changed")
            return
        undo = self._set_environment(loaded)
        view = loaded.project.create_view()
        previous_view = Path.cwd()
        _forget_project_modules(state.project.root, [state.view, *self.views])
        enter_view(view, [api.predictor.python_path or "" for api in rebuilt])
        new = {api.name: state.make_backend(api, self._models_to_keep(api, served.get(api.name)))
               for api in rebuilt}
        failures = await self._start(new, view)
        if failures:
            sys.path[:] = [entry for entry in sys.path if entry != str(view) and not entry.startswith(f"{view}/")]
            enter_view(previous_view, [])
            remove_view(view)
            _put_environment(undo)
            log.error("reload: %s; still serving the previous version\n%s",
                      "; ".join(f"api '{name}' failed to start" for name in failures), "\n".join(failures.values()))
            await asyncio.gather(*(backend.stop() for backend in new.values()))
            return
        self.views.append(view)
        state.project, state.loaded = loaded.project, loaded
        self._swap(loaded, new, removed)
        self._update_jobs(loaded, view)
        names = ", ".join(f"'{name}'" for name in new) or "none"
        log.info("reload: rebuilt api %s%s in %.2f s", names,
                 f"; removed {', '.join(repr(name) for name in removed)}" if removed else "",
                 time.monotonic() - started)

    def _to_rebuild(self, loaded: LoadedProject, changed: set[Path]) -> list[Api]:
        """The APIs of `loaded` that are new, whose configuration changed, or whose files changed (a file that is no
        API's own, a shared module or .env, touches them all); changes under model directories are the model
        poller's, not a reason to rebuild."""
        root = loaded.project.root
        relative = {path.relative_to(root).as_posix() for path in changed if path.is_relative_to(root)}
        relative -= {loaded.config_file.relative_to(root).as_posix()} if loaded.config_file.is_relative_to(root) \
            else set()
        served = {api.name: api for api in self.state.apis}
        rebuilt = []
        for api in loaded.apis:
            before = served.get(api.name)
            if before is None or before.model_dump() != api.model_dump():
                rebuilt.append(api)
                continue
            models = [location.rstrip("/") + "/" for location in model_locations(api)]
            code = {path for path in relative if not any(path.startswith(model) or path + "/" == model
                                                          for model in models)}
            if ENV_FILE in code or any(not _owned_by_other(path, api, loaded.apis) for path in code):
                rebuilt.append(api)
        return rebuilt

    def _models_to_keep(self, api: Api, before: Api | None) -> ModelRepository | None:
        """The loaded models of the pipeline an API's new one replaces, when its models section is unchanged."""
        if before is None or api.predictor.models is None or before.predictor.models != api.predictor.models:
            return None
        backend = next((b for b in self.state.backends if b.api.name == api.name), None)
        return backend.models if isinstance(backend, Pipeline) else None

    async def _start(self, new: dict[str, Backend], view: Path) -> dict[str, str]:
        """Start every new backend; why each that failed did."""
        root = self.state.project.root
        results = await asyncio.gather(*(backend.start(view, root) for backend in new.values()),
                                       return_exceptions=True)
        failures = {}
        for name, result in zip(new, results, strict=True):
            if isinstance(result, BaseException):
                failures[name] = str(result) if isinstance(result, EngineError) \
                    else tracebacks.format_exception(result)
        return failures

    def _swap(self, loaded: LoadedProject, new: dict[str, Backend], removed: list[str]) -> None:
        """Send new requests to the new backends and the new routes now; stop what they replaced once the requests
        that may reach it have ended (in the background: later changes need not wait for a long stream)."""
        state = self.state
        admissions = {admission.api.name: admission for admission in state.admissions}
        replaced: list[tuple[Admission, Backend, int]] = []
        for name, backend in new.items():
            if name not in admissions:
                admissions[name] = Admission(backend, state.metrics, state.settings, state)
                continue
            old, generation = admissions[name].swap(backend)
            if isinstance(old, Pipeline) and isinstance(backend, Pipeline) and backend.models is not None \
                    and backend.models is old.models:
                old.owns_models, backend.owns_models = False, True
            replaced.append((admissions[name], old, generation))
        for name in removed:
            admission = admissions.pop(name)
            replaced.append((admission, admission.backend, admission.swap(admission.backend)[1]))
        state.admissions = [admissions[api.name] for api in loaded.apis]
        state.backends = [admission.backend for admission in state.admissions]
        state.apis = [admission.api for admission in state.admissions]
        state.splitters[:] = serve_here(loaded.splitters, state.admissions, state.metrics, state.targets)
        self.app.route(state)
        for admission, old, generation in replaced:
            task = asyncio.create_task(_retire(admission, old, generation))
            self.retiring.add(task)
            task.add_done_callback(self.retiring.discard)

    def _set_environment(self, loaded: LoadedProject) -> dict[str, str | None]:
        """Make the process's environment the new project's: variables it sets changed, those it no longer sets back
        to what they were before engine set them; what each changed variable was (None: unset), to undo."""
        before, after = self.state.loaded.environment, loaded.environment
        undo: dict[str, str | None] = {}
        for name in set(before) | set(after):
            value = after.get(name, self.state.base_environment.get(name))
            if os.environ.get(name) != value:
                undo[name] = os.environ.get(name)
                _put_environment({name: value})
        return undo

    def _update_jobs(self, loaded: LoadedProject, view: Path | None) -> None:
        """New jobs of each BatchAPI run its new configuration and code; BatchAPIs added or removed wait for a
        restart."""
        batch = {api.name: api for api in loaded.batch_apis}
        for service in self.state.jobs:
            if service.api.name in batch:
                service.update(batch[service.api.name], view)
        added = sorted(set(batch) - {service.api.name for service in self.state.jobs})
        gone = sorted({service.api.name for service in self.state.jobs} - set(batch))
        if added or gone:
            log.warning("reload: BatchAPIs added (%s) or removed (%s) are served after a restart",
                        ", ".join(added) or "none", ", ".join(gone) or "none")


def _owned_by_other(path: str, api: Api, apis: Iterable[Api]) -> bool:
    """True when `path` is another API's predictor file (or inside another API's python_path) and not this one's."""
    def owns(owner: Api) -> bool:
        python_path = owner.predictor.python_path
        return path == owner.predictor.path or bool(python_path and path.startswith(python_path.rstrip("/") + "/"))
    return not owns(api) and any(owns(other) for other in apis if other.name != api.name)


def _same_splitters(state: AppState, loaded: LoadedProject) -> bool:
    return [splitter.config.model_dump() for splitter in state.splitters] == \
        [config.model_dump() for config in loaded.splitters]


def _forget_project_modules(root: Path, views: list[Path | None]) -> None:
    """Drop the project's own modules from sys.modules, so that the new predictors import them afresh (the old
    predictors keep the modules they hold)."""
    places = [str(place) for place in (root, *views) if place is not None]
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and any(file.startswith(place + os.sep) for place in places):
            del sys.modules[name]
    sys.path[:] = [entry for entry in sys.path if not any(entry == place or entry.startswith(place + os.sep)
                                                          for place in places[1:])]


def _shown(path: Path, root: Path) -> str:
    """A changed path as the user knows it: relative to the project when inside it."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


async def _retire(admission: Admission, backend: Backend, generation: int) -> None:
    """Stop a replaced backend once no request that may reach it is under way."""
    await admission.drained(generation)
    await backend.stop()
    log.info("reload: api '%s': the predictor it replaced has stopped", backend.api.name)


def _put_environment(values: dict[str, str | None]) -> None:
    """Set each variable (None: unset it)."""
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
