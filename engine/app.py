"""The Starlette app: one route per API, server routes, start-up of the predictors and a graceful stop."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import traceback
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pluggy
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine import plugins
from engine.errors import EngineError
from engine.metrics import Metrics
from engine.project import enter_view, remove_view
from engine.runtime import ApiRuntime, error_response
from engine.validate import ValidatedProject, validate_project

log = logging.getLogger("engine")

DEFAULT_MODEL_POLL_INTERVAL = 10.0


class AppState:
    """Everything one app serves; kept on `app.state.engine`."""

    def __init__(self, validated: ValidatedProject, pm: pluggy.PluginManager, on_fatal: Callable[[str], None],
                 model_poll_interval: float) -> None:
        self.project = validated.project
        self.apis = validated.apis
        self.pm = pm
        self.metrics = Metrics()
        self.runtimes = [ApiRuntime(api, pm, self.metrics, model_poll_interval) for api in validated.apis]
        self.on_fatal = on_fatal
        self.started_at = time.monotonic()
        self.view: Path | None = None
        self.init_task: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        """True once every API's predictor has finished __init__."""
        return all(runtime.ready for runtime in self.runtimes)

    async def start(self) -> None:
        """Prepare the process for the predictors, then initialise them in the background."""
        self.view = self.project.create_view()
        self.project.apply_environment({api.name: api.predictor.env for api in self.apis})
        enter_view(self.view, [api.predictor.python_path or "" for api in self.apis])
        self.init_task = asyncio.create_task(self._initialise())

    async def _initialise(self) -> None:
        loop = asyncio.get_running_loop()
        for runtime in self.runtimes:
            try:
                await loop.run_in_executor(runtime.pool, runtime.initialise, self.view, self.project.root)
            except Exception as error:
                runtime.failure = str(error) if isinstance(error, EngineError) else f"{type(error).__name__}: {error}"
                details = str(error) if isinstance(error, EngineError) else "".join(traceback.format_exception(error))
                self.on_fatal(f"api '{runtime.api.name}': {runtime.ptype.class_name} failed to start:\n{details}")
                return
        log.info("ready in %.2f s: every predictor has finished __init__", time.monotonic() - self.started_at)
        await loop.run_in_executor(None, lambda: self.pm.hook.engine_startup(apis=self.apis))

    async def stop(self) -> None:
        """Stop initialising, wait for in-flight work and post_predicts, then remove the view."""
        if self.init_task:
            self.init_task.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self._drain)
        if self.view:
            remove_view(self.view)

    def _drain(self) -> None:
        for runtime in self.runtimes:
            runtime.drain()


def create_app(project_dir: str | Path = ".", config_file: str | Path | None = None, *,
               pm: pluggy.PluginManager | None = None, on_fatal: Callable[[str], None] | None = None,
               model_poll_interval: float | None = None) -> Starlette:
    """Validate the project and build its app; hostable by any ASGI server, e.g. `hypercorn "engine.app:create_app('.')"`.

    `model_poll_interval` (seconds between looks for new model versions) defaults to $ENGINE_MODEL_POLL_INTERVAL or 10.
    """
    pm = pm or plugins.make_plugin_manager()
    validated = validate_project(project_dir, config_file, pm)
    for warning in validated.warnings:
        log.warning(warning)
    if model_poll_interval is None:
        model_poll_interval = float(os.environ.get("ENGINE_MODEL_POLL_INTERVAL", DEFAULT_MODEL_POLL_INTERVAL))
    state = AppState(validated, pm, on_fatal or _stop_process, model_poll_interval)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.start()
        yield
        await state.stop()

    app = Starlette(routes=_routes(state), lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error})
    app.state.engine = state
    app.state.metrics = state.metrics
    return app


def _routes(state: AppState) -> list[Route]:
    routes = [Route("/healthz", _healthz, methods=["GET"]), Route("/readyz", _readyz, methods=["GET"])]
    for runtime in state.runtimes:
        paths = [runtime.api.endpoint] + (["/", "/predict"] if len(state.runtimes) == 1 else [])
        for path in paths:
            routes.append(Route(path, runtime.handle_post, methods=["POST"], name=f"{runtime.api.name}:{path}:post"))
            routes.append(Route(path, runtime.handle_get, methods=["GET"], name=f"{runtime.api.name}:{path}:get"))
    for contributed in state.pm.hook.engine_routes():
        routes += contributed or []
    return routes


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


async def _readyz(request: Request) -> Response:
    state: AppState = request.app.state.engine
    apis = {runtime.api.name: "ready" if runtime.ready else f"failed: {runtime.failure}" if runtime.failure
            else "initialising" for runtime in state.runtimes}
    return JSONResponse({"ready": state.ready, "apis": apis}, status_code=200 if state.ready else 503)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return error_response(error.status_code, str(error.detail), headers=error.headers)


def _stop_process(message: str) -> None:
    """When hosted by another ASGI server: log why, then ask the server to stop."""
    log.error(message)
    os.kill(os.getpid(), signal.SIGTERM)
