"""One API being served: its predictor, thread pool, concurrency limit and request pipeline."""
from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pluggy
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine import plugins
from engine.batching import AsyncBatcher, concurrent_predicts
from engine.config import Api
from engine.errors import MissingPluginError, ModelError, PayloadError
from engine.metrics import Metrics
from engine.models import ModelRepository
from engine.predictor import Predictor, load_class

log = logging.getLogger("engine")

GET_MESSAGE = "make a prediction by sending a post request to this endpoint with a json payload"


def error_response(status_code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A JSON error body: {"error": message}."""
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


def too_many_in_flight(api: str, in_flight: int, metrics: Metrics) -> Response:
    """The immediate 503 for a request beyond max_replica_concurrency, counted."""
    metrics.child(metrics.rejected, api).inc()
    return error_response(503, f"api '{api}' already has {in_flight} requests in flight, its "
                               "max_replica_concurrency; retry later")


class ApiRuntime:
    """Serves one API: initialises its predictor on the pool, then answers its POST and GET requests."""

    def __init__(self, api: Api, pm: pluggy.PluginManager, metrics: Metrics, model_poll_interval: float = 10.0,
                 process_index: int = 0, observe_requests: bool = True) -> None:
        self.api = api
        self.observe_requests = observe_requests  # False in worker processes: the front process counts and logs
        self.model_poll_interval = model_poll_interval
        self.process_index = process_index
        self.pm = pm
        self.metrics = metrics
        self.ptype = plugins.predictor_type(pm, api.predictor.type)
        threads = api.predictor.threads_per_process
        if self.ptype.client_batching and api.predictor.server_side_batching:
            threads = concurrent_predicts(api, client_batching=True)  # concurrent calls are what the client merges
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=f"api-{api.name}")
        self.parse_payload = plugins.fast_caller(pm.hook.engine_parse_payload)
        self.encode_response = plugins.fast_caller(pm.hook.engine_encode_response)
        self.batcher: AsyncBatcher | None = None
        self.max_in_flight = api.autoscaling.max_replica_concurrency
        self.in_flight = 0
        self.predictor: Predictor | None = None
        self.client: Any = None
        self.models: ModelRepository | None = None
        self.failure: str | None = None

    @property
    def ready(self) -> bool:
        """True once the predictor's __init__ has returned."""
        return self.predictor is not None

    def initialise(self, view: Path, project_root: Path) -> None:
        """Set up the device and models, build the client, run __init__, load the models (call on the API's pool)."""
        api, ptype = self.api, self.ptype
        device = plugins.setup_device(self.pm, api, process_index=self.process_index)
        if api.predictor.models is not None:
            if ptype.model_format is None:
                raise MissingPluginError(f"the {ptype.name} predictor type does not support models")
            self.models = ModelRepository(
                api.predictor.models, project_root, ptype.model_format(api, device), ptype.name,
                poll_interval=self.model_poll_interval,
                on_load=lambda model, reload, ok, seconds: self.metrics.model_loaded(api.name, model, reload, ok,
                                                                                     seconds))
            self.models.scan()
        self.client = plugins.create_client(self.pm, api, device, self.models)
        if getattr(self.client, "batcher", None) is not None:  # a client that batches inference calls itself
            self.client.batcher.on_batch = self.metrics.child(self.metrics.batch_size, api.name).observe
        predictor_class, methods = load_class(view, api, ptype)
        predictor = Predictor.construct(predictor_class, methods, api.predictor.config, ptype.client_arg, self.client)
        if self.models is not None:
            if ptype.user_loads_models:
                self.client.set_load_method(predictor.instance.load_model)
            if self.models.cache_size is None:
                self.models.preload()
            self.models.start_polling()
        batching = api.predictor.server_side_batching
        if batching and not ptype.client_batching:
            self.batcher = AsyncBatcher(predictor.predict_batch, self.pool, batching.max_batch_size,
                                        batching.batch_interval,
                                        on_batch=self.metrics.child(self.metrics.batch_size, api.name).observe)
        self.predictor = predictor

    async def start(self, view: Path, project_root: Path) -> None:
        """Initialise on the API's own pool (so __init__ runs on a request thread, as in Cortex)."""
        await asyncio.get_running_loop().run_in_executor(self.pool, self.initialise, view, project_root)

    async def stop(self) -> None:
        """Drain without blocking the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, self.drain)

    async def handle_post(self, request: Request) -> Response:
        """Run predict for one request."""
        return await self._observed(request, self._predict)

    async def handle_get(self, request: Request) -> Response:
        """The API's summary: Cortex's message, and its models' metadata when it has a model client."""
        return await self._observed(request, self._summary)

    async def _observed(self, request: Request, answer: Callable[[Request], Awaitable[Response]]) -> Response:
        if not self.observe_requests:
            return await answer(request)
        return await self.metrics.observed(self.api.name, request, answer)

    async def _summary(self, request: Request) -> Response:
        if not self.ready:
            return self._not_ready()
        body: dict[str, Any] = {"message": GET_MESSAGE}
        if self.client is not None and hasattr(self.client, "metadata"):
            body["model_metadata"] = self.client.metadata()
        return JSONResponse(body)

    def _not_ready(self) -> Response:
        reason = f"failed to start: {self.failure}" if self.failure else "its predictor is still initialising"
        return error_response(503, f"api '{self.api.name}' is not ready: {reason}")

    async def _predict(self, request: Request) -> Response:
        if self.in_flight >= self.max_in_flight:
            return too_many_in_flight(self.api.name, self.in_flight, self.metrics)
        predictor = self.predictor
        if predictor is None:
            return self._not_ready()
        self.in_flight += 1
        if self.observe_requests:
            self.metrics.child(self.metrics.in_flight, self.api.name).inc()
        arguments: dict[str, Any] = {}
        try:
            arguments = await self._arguments(request, predictor)
            if self.batcher is not None:
                result = await self.batcher.submit(arguments)
            else:
                result = await asyncio.get_running_loop().run_in_executor(self.pool, predictor.predict, arguments)
            response = self.encode_response(result=result, request_headers=request.headers, api=self.api)
        except PayloadError as error:
            return error_response(400, str(error))
        except HTTPException as error:
            _close_uploads(arguments)
            return error_response(error.status_code, str(error.detail), headers=error.headers)
        except ModelError as error:
            _close_uploads(arguments)
            if error.status_code >= 500:
                log.exception("api '%s': predict failed", self.api.name)
            return error_response(error.status_code, str(error))
        except Exception as error:
            _close_uploads(arguments)
            self.metrics.child(self.metrics.predictor_exceptions, self.api.name).inc()
            log.exception("api '%s': predict failed", self.api.name)
            return error_response(500, f"{type(error).__name__}: {error}")
        finally:
            self.in_flight -= 1
            if self.observe_requests:
                self.metrics.child(self.metrics.in_flight, self.api.name).dec()
        if predictor.post_predict_args is not None:
            _add_background(response, BackgroundTask(self._submit_post_predict, predictor, result, arguments))
        elif isinstance(arguments.get("payload"), FormData):
            _add_background(response, BackgroundTask(_close_uploads, arguments))
        return response

    async def _arguments(self, request: Request, predictor: Predictor) -> dict[str, Any]:
        arguments: dict[str, Any] = {}
        if predictor.wants_payload:
            payload = self.parse_payload(body=await request.body(),
                                         content_type=request.headers.get("content-type", ""),
                                         headers=request.headers, api=self.api)
            arguments["payload"] = await payload if inspect.isawaitable(payload) else payload
        if predictor.wants_query_params:
            arguments["query_params"] = request.query_params
        if predictor.wants_headers:
            arguments["headers"] = request.headers
        return arguments

    async def _submit_post_predict(self, predictor: Predictor, result: Any, arguments: dict[str, Any]) -> None:
        # Submitted, not awaited: the connection is free for its next request while post_predict runs; drain()
        # waits for it at shutdown.
        self.pool.submit(self._run_post_predict, predictor, result, arguments)

    def _run_post_predict(self, predictor: Predictor, result: Any, arguments: dict[str, Any]) -> None:
        try:
            predictor.post_predict(result, arguments)
        except Exception:
            log.exception("api '%s': post_predict failed", self.api.name)
        finally:
            _close_uploads(arguments)

    def drain(self) -> None:
        """Wait for running predicts and pending post_predicts, stop the pool, then free the models."""
        self.pool.shutdown(wait=True)
        if self.models is not None:
            self.models.stop()


def _add_background(response: Response, task: BackgroundTask) -> None:
    if response.background is None:
        response.background = task
        return
    tasks = BackgroundTasks()
    tasks.add_task(response.background)
    tasks.add_task(task)
    response.background = tasks


def _close_uploads(arguments: dict[str, Any]) -> None:
    payload = arguments.get("payload")
    if isinstance(payload, FormData):
        for value in payload.values():
            if isinstance(value, UploadFile):
                value.file.close()
