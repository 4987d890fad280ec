"""The ASGI app: each API's routes through its admission layer to its backend, server and plugin routes through
Starlette, and the start and stop of the predictors."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from engine import openapi, plugin_routes, plugins, tempdirs, tracebacks
from engine import routes as server_routes
from engine.errors import EngineError
from engine.jobs.http import JobRoutes
from engine.jobs.launchers import ProcessLauncher, WorkerLauncher
from engine.jobs.service import JobService
from engine.jobs.store import JobStore
from engine.memory import settle_after_start_up
from engine.models import ModelRepository, budget
from engine.project.files import enter_view, remove_view
from engine.project.loading import LoadedProject, load_project
from engine.serving.admission import Admission, ClientGone, body_or_refusal, has_body
from engine.serving.backend import ApiRequest, Backend
from engine.serving.batching import concurrent_predicts
from engine.serving.metrics import Metrics
from engine.serving.pipeline import Pipeline, error_response
from engine.serving.security import Guard
from engine.serving.splitter import SplitterTarget, serve_here
from engine.serving.websocket import serve_websocket
from engine.serving.worker_pool import WorkerGroup
from engine.settings import ServeSettings

if TYPE_CHECKING:
    from engine.plugin_api import Served, Service
    from engine.project.config import Api

log = logging.getLogger("engine")


class AppState:
    """Everything one app serves; kept on `app.state.engine`."""

    def __init__(self, validated: LoadedProject, pm: plugins.PluginManager, on_fatal: Callable[[str], None],
                 settings: ServeSettings, targets: Mapping[str, SplitterTarget] | None = None,
                 job_launcher: WorkerLauncher | None = None) -> None:
        self.project = validated.project
        self.apis = validated.apis
        self.environment = validated.environment
        self.pm = pm
        self.metrics = Metrics()
        self.on_fatal = on_fatal
        self.settings = settings
        budget.configure(settings.model_memory, settings.model_disk)  # before any API's models are opened
        self.backends: list[Backend] = [self.make_backend(api) for api in validated.apis]
        self.admissions = [Admission(backend, self.metrics, settings, self) for backend in self.backends]
        self.targets = targets
        self.splitters = serve_here(validated.splitters, self.admissions, self.metrics, targets)
        self.job_store = JobStore(state_dir(settings, self.project.root)) if validated.batch_apis else None
        self.jobs = [JobService(api, self.job_store, job_launcher or ProcessLauncher(),
                                on_batch=self._job_batch_metrics(api.name)) for api in validated.batch_apis
                     if self.job_store is not None]
        self.loaded = validated
        self.base_environment: dict[str, str] = {}
        self.openapi: dict[str, Any] = {}  # the OpenAPI document of what is served (EngineApp.route makes it)
        self.guard = Guard(settings)
        self.services: list[Service] = []
        self.draining = False  # SIGTERM has come
        self.stopping_since: float | None = None
        self.stopped_cleanly = True  # False when stop() ran out of time with work still running
        self.started_at = time.monotonic()
        self.view: Path | None = None
        self.init_task: asyncio.Task[None] | None = None

    def make_backend(self, api: Api, models: ModelRepository | None = None) -> Backend:
        """The backend that serves `api`: its pipeline here, or worker processes (`models`: a pipeline's models to
        take over, when it replaces one)."""
        settings = self.settings
        if api.predictor.processes_per_replica == 1 and not settings.isolate:
            return Pipeline(api, self.pm, self.metrics, settings.model_poll_interval,
                            shows_errors=settings.shows_errors, models=models)
        return WorkerGroup(api, self.pm, capacity=concurrent_predicts(api), settings=settings,
                           on_fatal=lambda message: self.on_fatal(message))

    def _job_batch_metrics(self, api_name: str) -> Callable[[str, bool, float], None]:
        return lambda job_id, ok, seconds: self.metrics.job_batch(api_name, job_id, ok, seconds)

    @property
    def ready(self) -> bool:
        """True once every API's predictor has finished __init__."""
        return all(backend.ready for backend in self.backends)

    # --- engine.Served: what plugins' routes and services reach the APIs through ---------------------------------

    def is_ready(self, api_name: str | None = None) -> bool:
        """True when that API (or every API) can answer."""
        return self.ready if api_name is None else any(b.ready for b in self.backends if b.api.name == api_name)

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """True when these headers carry a valid API key, or when none is required."""
        return self.guard.key_allowed({name.lower(): value for name, value in headers})

    async def read_body(self, request: Request) -> bytes | Response:
        """A plugin route's request body, under --max-body-size and --body-timeout as an API's: the body, or the 400,
        408 or 413 response to send instead (its connection closes)."""
        try:
            return await body_or_refusal(request.scope, request.receive, self.settings.max_body_size,
                                         self.settings.body_timeout)
        except ClientGone:
            return error_response(400, "the client disconnected before its request body was complete")

    def render_metrics(self) -> tuple[bytes, str]:
        """Every metric in Prometheus' text format, and its media type."""
        return self.metrics.render(), self.metrics.content_type

    async def operate(self, api_name: str, operation: str, body: bytes,
                      headers: list[tuple[bytes, bytes]]) -> Response:
        """Run a plugin's operation for one of an API's requests, as that API's admission layer lets it."""
        admission = next((a for a in self.admissions if a.api.name == api_name), None)
        if admission is None:
            return error_response(404, f"no api named {api_name!r}")
        scope = {"type": "http", "method": "POST", "path": admission.api.endpoint,
                 "query_string": b"", "headers": [(name.lower(), value) for name, value in headers]}
        return await admission.operate(operation, ApiRequest(scope, body))

    async def start(self) -> None:
        """Prepare the process for the predictors, then initialise them in the background; start the plugins'
        services."""
        tempdirs.remove_stale()
        view = self.view = self.project.create_view()
        self.base_environment = dict(os.environ)  # before the project's variables (engine serve --reload undoes them)
        os.environ.update(self.environment)
        enter_view(view, [api.predictor.python_path or "" for api in self.apis])
        self.init_task = asyncio.create_task(self._initialise(view))
        portable = plugins.portable(self.pm) if self.jobs else []
        for jobs in self.jobs:
            await asyncio.to_thread(jobs.start, view, self.project.root, self.loaded.environment_for([jobs.api]),
                                    portable)
        self.services = [service for answer in self.pm.hook.engine_services(served=self, settings=self.settings)
                         for service in answer or ()]
        for service in self.services:
            await service.start()

    async def _initialise(self, view: Path) -> None:
        results = await asyncio.gather(*(self._start(backend, view) for backend in self.backends))
        if all(results):
            settle_after_start_up()
            log.info("ready in %.2f s: every predictor has finished __init__", time.monotonic() - self.started_at)
            await asyncio.get_running_loop().run_in_executor(None, lambda: self.pm.hook.engine_startup(apis=self.apis))

    async def _start(self, backend: Backend, view: Path) -> bool:
        try:
            await backend.start(view, self.project.root)
            return True
        except Exception as error:
            backend.failure = str(error) if isinstance(error, EngineError) else f"{type(error).__name__}: {error}"
            details = str(error) if isinstance(error, EngineError) else tracebacks.format_exception(error)
            class_name = plugins.predictor_type(self.pm, backend.api.predictor.type).class_name
            self.on_fatal(f"api '{backend.api.name}': {class_name} failed to start:\n{details}")
            return False

    def drain(self) -> None:
        """SIGTERM has come and the server accepts no more connections: answer what is in flight and every request
        still to come on an open connection, each response closing its connection."""
        self.draining = True
        self.stopping_since = time.monotonic()

    async def stop(self) -> None:
        """Stop initialising, wait for in-flight work and post_predicts until --graceful-timeout has passed since
        the drain began (then give up on them: stopped_cleanly is False), and remove the view."""
        for splitter in self.splitters:
            splitter.stop()
        if self.init_task:
            self.init_task.cancel()
        since = self.stopping_since or time.monotonic()
        left = max(1.0, self.settings.graceful_timeout - (time.monotonic() - since))
        await asyncio.gather(*(service.stop(grace=left) for service in self.services))
        await asyncio.gather(*(asyncio.to_thread(jobs.close) for jobs in self.jobs))
        if self.job_store is not None:
            self.job_store.close()
        stops = {asyncio.ensure_future(backend.stop()): backend for backend in self.backends}
        _, busy = await asyncio.wait(stops, timeout=left) if stops else (set(), set())
        for task in busy:
            task.cancel()
        if busy:
            self.stopped_cleanly = False
            log.error("stopped after --graceful-timeout (%g s) with work still running in api %s: a predict, "
                      "post_predict or __init__ that does not return", self.settings.graceful_timeout,
                      ", ".join(f"'{stops[task].api.name}'" for task in busy))
            await asyncio.wait(busy, timeout=5)  # worker processes are killed; threads cannot be, the exit ends them
        if self.view:
            remove_view(self.view)


def create_app(project_dir: str | Path = ".", config_file: str | Path | None = None, *,
               settings: ServeSettings | None = None, pm: plugins.PluginManager | None = None,
               on_fatal: Callable[[str], None] | None = None, apis: list[str] | None = None,
               project: LoadedProject | None = None,
               targets: Mapping[str, SplitterTarget] | None = None,
               job_launcher: WorkerLauncher | None = None) -> EngineApp:
    """Validate the project and build its app, which any ASGI server can host.

    For example: `hypercorn "engine.app:create_app('.')"`. Without `settings`, the ENGINE_* environment variables
    and the defaults apply (see engine.settings). `apis` serves only the APIs named (each replica of a distributed
    engine serves one API), at the same routes as the whole project would (/ and /predict with a single API).
    `project`, one that engine.load_project has loaded (its warnings are the caller's to say), is served instead of
    loading PROJECT_DIR (then project_dir, config_file and apis are not used). `targets` are the APIs served
    elsewhere that the project's TrafficSplitters may hand requests to (a distributed engine's, by API name); the
    app serves each splitter whose APIs it has, here or there. `job_launcher` starts the workers of BatchAPI jobs
    (local processes by default; a distributed engine's own, such as engine-ray's actors).
    """
    pm = pm or plugins.make_plugin_manager()
    settings = (settings or ServeSettings.load()).with_plugins(plugins.settings(pm))
    plugins.install_tracer(pm)
    if project is None:
        project = load_project(project_dir, config_file, pm=pm, cpu=settings.cpu, apis=apis)
        for warning in project.warnings:
            log.warning("%s", warning)
    state = AppState(project, pm, on_fatal or _stop_process, settings, targets, job_launcher)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.start()
        yield
        await state.stop()

    routes = _routes(state)
    if not settings.no_docs:
        routes.append(Route(server_routes.OPENAPI_PATH, lambda request: JSONResponse(state.openapi),
                            methods=["GET"]))
    starlette = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    starlette.state.engine = state
    return EngineApp(starlette, state, state.guard)


class EngineApp:
    """The ASGI app: every request past the guard (engine.serving.security); API paths then go straight to their
    admission layer, everything else (server and plugin routes, 404s, the lifespan) through Starlette."""

    def __init__(self, starlette: Starlette, state: AppState, guard: Guard) -> None:
        self.starlette = starlette
        self.state = starlette.state
        self.guard = guard
        self.route(state)

    def route(self, state: AppState) -> None:
        """Map the paths of the APIs and splitters served now (again after engine serve --reload changed them), and
        describe them in the OpenAPI document."""
        aliases = len(state.loaded.every_api) == 1
        paths_of = {admission.api.name: _api_paths(admission.api, aliases) for admission in state.admissions}
        self._api_paths = {path: admission for admission in state.admissions for path in paths_of[admission.api.name]}
        self._splitters = {splitter.endpoint: splitter for splitter in state.splitters}
        state.openapi = openapi.document([admission.api for admission in state.admissions], paths_of, state.pm,
                                         state.settings, state.project.root, bool(self.guard.keys),
                                         [splitter.config for splitter in state.splitters])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.starlette(scope, receive, send)
            return
        refusal, origin = self.guard.check(scope)
        if refusal is not None:
            if scope["type"] == "websocket":  # closed before it is accepted: the client gets 403
                await send({"type": "websocket.close", "code": 1008})
            else:
                await refusal(scope, receive, send)
            return
        if origin is not None:
            send = _adding_headers(send, self.guard.cors_headers(origin))
        admission = self._api_paths.get(scope["path"])
        if admission is None:
            splitter = self._splitters.get(scope["path"])
            if splitter is not None:
                await splitter(scope, receive, send)
            else:
                if scope["type"] == "http" and self.state.engine.draining:  # as an API's admission layer does
                    send = _adding_headers(send, {"connection": "close"})
                await self.starlette(scope, *_closing_unless_read(scope, receive, send))
        elif scope["type"] == "websocket":
            await serve_websocket(admission, scope, receive, send)
        else:
            await admission(scope, receive, send)


def _closing_unless_read(scope: Scope, receive: Receive, send: Send) -> tuple[Receive, Send]:
    """`receive` and `send` for a route that may answer without reading the request's body: its response then says
    that the connection closes (the server cannot read the next request after an unread body)."""
    if scope["type"] != "http" or not has_body(scope):
        return receive, send
    read = [False]

    async def receiving() -> Message:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            read[0] = True
        return message

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and not read[0]:
            message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await send(message)
    return receiving, sending


def _adding_headers(send: Send, headers: dict[str, str]) -> Send:
    """`send`, adding headers to the response's start."""
    extra = [(name.encode(), value.encode()) for name, value in headers.items()]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)
    return sending


def served(request: Request) -> Served:
    """The running APIs (an engine.Served), from a request to one of a plugin's routes."""
    state: AppState = request.app.state.engine
    return state


def _api_paths(api: Api, aliases: bool) -> list[str]:
    """An API's endpoint, and / and /predict when it is the project's only API (Cortex's local and cluster routes)."""
    return [api.endpoint] + (["/", "/predict"] if aliases else [])


def _routes(state: AppState) -> list[BaseRoute]:
    return [Route(server_routes.HEALTHZ_PATH, _healthz, methods=["GET"]),
            Route(server_routes.READYZ_PATH, _readyz, methods=["GET"]), *plugin_routes.starlette_routes(state.pm),
            *(route for service in state.jobs for route in JobRoutes(service).routes())]


def state_dir(settings: ServeSettings, project_root: Path) -> Path:
    """Where BatchAPI jobs are kept: --state-dir, or PROJECT_DIR/.engine."""
    return Path(settings.state_dir).resolve() if settings.state_dir else project_root / ".engine"


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def _readyz(request: Request) -> Response:
    state: AppState = request.app.state.engine
    apis = {backend.api.name: "ready" if backend.ready else f"failed: {backend.failure}" if backend.failure
            else "initialising" for backend in state.backends}
    return JSONResponse({"ready": state.ready, "apis": apis}, status_code=200 if state.ready else 503)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return error_response(error.status_code, str(error.detail), headers=error.headers)


def _stop_process(message: str) -> None:
    """When hosted by another ASGI server: log why, then ask the server to stop."""
    log.error(message)
    os.kill(os.getpid(), signal.SIGTERM)
