"""One API's predictor and its request pipeline: arguments → predict (or a batch) → encode → post_predict.

The only copy of it: the front process runs it for an API with one process (it is then that API's Backend), and
each worker process runs it for the requests the front hands over.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from starlette.background import BackgroundTask, BackgroundTasks
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from engine import plugins, tracing
from engine.errors import ModelError, PayloadError
from engine.logformat import request_context
from engine.models import ModelRepository
from engine.plugin_api import DescribesModels, OperationContext
from engine.project.config import Api
from engine.serving import parsing, warmup
from engine.serving.backend import ApiRequest
from engine.serving.batching import (
    Arrivals,
    AsyncBatcher,
    Batching,
    concurrent_predicts,
)
from engine.serving.eventloop import PredictorLoop
from engine.serving.metrics import Metrics
from engine.serving.predictor import Predictor, attach_models, construct, open_models
from engine.serving.streams import END, is_stream, stream_response
from engine.tracebacks import public_text

log = logging.getLogger("engine")

GET_MESSAGE = "make a prediction by sending a post request to this endpoint with a json payload"
PARSE_ON_THREAD = 256 * 1024  # bodies longer than this are parsed off the event loop (it keeps answering meanwhile)

T = TypeVar("T")


def error_response(status_code: int, message: str, headers: Mapping[str, str] | None = None,
                   request_id: str | None = None) -> Response:
    """A JSON error body, {"error": message} (with no absolute path in it), and the request's id when given."""
    body = {"error": public_text(message)}
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=status_code, headers=headers)


class RequestThreads(ThreadPoolExecutor):
    """An API's thread pool: a ThreadPoolExecutor that, once all its threads have started, hands over work without
    asking its idle-thread semaphore whether to start another. That question (a Semaphore.acquire(timeout=0), which
    waits on a Condition for 0 s) cost each request handed to a busy pool several µs of CPU."""

    def _adjust_thread_count(self) -> None:
        # The semaphore counts idle threads only to decide whether to start one: with every thread started, it
        # decides nothing (its count, released after each item, then merely grows).
        if len(self._threads) < self._max_workers:
            super()._adjust_thread_count()


class Pipeline:
    """Initialises one API's predictor on its thread pool, then answers its predictions and summaries."""

    def __init__(self, api: Api, pm: plugins.PluginManager, metrics: Metrics, model_poll_interval: float,
                 process_index: int = 0, shows_errors: bool = True, models: ModelRepository | None = None) -> None:
        self.api = api
        self.shows_errors = shows_errors  # a predictor exception's message in its 500 body (--expose-errors)
        self.pm = pm
        self.metrics = metrics
        self.model_poll_interval = model_poll_interval
        self.process_index = process_index
        self.ptype = plugins.predictor_type(pm, api.predictor.type)
        threads, batching = api.predictor.threads_per_process, api.predictor.server_side_batching
        # With a batching client every predict() holds a thread while its call waits for its batch; with lists, each
        # running batch holds one.
        self.arrivals: Arrivals | None = None  # a batching client's calls on their way to its batcher
        if batching is not None and self.ptype.client_batching:
            threads = concurrent_predicts(api)
            self.arrivals = Arrivals(threads)
        elif batching is not None:
            threads = max(threads, batching.max_concurrent_batches)
        self.pool = RequestThreads(threads, thread_name_prefix=f"api-{api.name}")
        self.parse_payload = parsing.payload_parser(pm)
        self.operations = plugins.operations(pm)
        self.encode_response = plugins.fast_caller(pm.hook.engine_encode_response)
        self.batcher: AsyncBatcher | None = None
        self._loop: PredictorLoop | None = None  # the event loop of the predictor's async methods, once needed
        self.predictor: Predictor  # set by _initialise, before `ready`: no request reaches it sooner
        self.ready = False  # True once the predictor's __init__ has returned and its warm-up requests have run
        self.client: Any = None  # what the predictor type's create_client returned (None without one)
        # `models`: the loaded models of the pipeline this one replaces (engine serve --reload), still that one's
        # to stop until the swap hands them over (owns_models)
        self.models: ModelRepository | None = models
        self.owns_models = models is None
        self.failure: str | None = None

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def start(self, view: Path, project_root: Path) -> None:
        """Initialise on the API's own pool (so __init__ runs on a request thread, as in Cortex), then replay the
        warm-up file's requests through this pipeline (on its pool, which _initialise no longer holds)."""
        await asyncio.get_running_loop().run_in_executor(self.pool, self._initialise, view, project_root)
        await warmup.replay(self, project_root)
        self.ready = True

    def _initialise(self, view: Path, project_root: Path) -> None:
        """Set up the device and models, build the client, run __init__, load the models."""
        api, ptype = self.api, self.ptype
        device = plugins.setup_device(self.pm, api, process_index=self.process_index)
        if self.models is None:
            self.models = open_models(api, self.pm, device, project_root, self.model_poll_interval,
                                      on_load=lambda model, reload, ok, seconds: self.metrics.model_loaded(
                                          api.name, model, reload, ok, seconds))
        batching = self._batching()
        client_batching = batching if batching and ptype.client_batching else None
        self.client, predictor = construct(api, self.pm, view, device, self.models, client_batching)
        if predictor.is_async:
            self._start_loop()  # now, rather than on the first request
        if self.models is not None:
            load_model: Callable[[str], Any] | None = getattr(predictor.instance, "load_model", None)
            if predictor.async_load_model:
                load_model = functools.partial(_load_on_loop, self.loop, predictor.instance.load_model)
            attach_models(api, self.pm, self.client, self.models, load_model)
            if self.owns_models:
                self.models.start_polling()
        if batching and not ptype.client_batching:
            # a batch is of several requests: its lines carry none's id
            run = (lambda items: self._on_loop(_attributed_async(None, predictor.predict_batch_async(items)))) \
                if predictor.async_predict else (lambda items: self._on_pool(_attributed, None, predictor.predict_batch,
                                                                              items))
            self.batcher = AsyncBatcher(run, batching)
        self.predictor = predictor

    def _batching(self) -> Batching | None:
        """The API's server_side_batching, with the metrics it feeds."""
        section, name = self.api.predictor.server_side_batching, self.api.name
        if section is None:
            return None
        return Batching(section.max_batch_size, section.batch_interval,
                        on_batch=self.metrics.child(self.metrics.batch_size, name).observe, dispatch=section.dispatch,
                        slots=section.max_concurrent_batches, arrivals=self.arrivals,
                        on_wait=self.metrics.child(self.metrics.batch_wait, name).observe)

    async def stop(self) -> None:
        """Wait for running predicts and pending post_predicts (off the event loop), then free the models."""
        await asyncio.get_running_loop().run_in_executor(None, self._drain)

    def _drain(self) -> None:
        self.pool.shutdown(wait=True)
        if self.models is not None and self.owns_models:
            self.models.stop()
        if self._loop is not None:
            self._loop.stop()

    # --- requests ---------------------------------------------------------------------------------------------

    async def summary(self, request: ApiRequest) -> Response:
        """Cortex's message, and its models' metadata when the client describes them."""
        body: dict[str, Any] = {"message": GET_MESSAGE}
        if isinstance(self.client, DescribesModels):
            body["model_metadata"] = metadata = self.client.metadata()
            for model in metadata.values():
                if isinstance(model, dict) and isinstance(model.get("errors"), dict):
                    model["errors"] = {version: public_text(error) for version, error in model["errors"].items()}
        return JSONResponse(body)

    async def operate(self, operation: str, request: ApiRequest) -> Response:
        """Run a plugin's operation on the pool, with the API's client and predictor at hand."""
        found = self.operations.get(operation)
        if found is None:
            return error_response(404, f"no installed plugin provides the operation {operation!r}")
        context = OperationContext(self.api, self.client, self.predictor.instance, request.headers, self.models)
        try:
            return await self._on_pool(tracing.within(operation, found.run, True), context, request.body)
        except (ModelError, PayloadError) as error:
            status = getattr(error, "status_code", 400)
            if _logged_with_traceback(status):
                log.exception("api '%s': %s failed (request_id=%s)", self.api.name, operation, request.request_id)
            return error_response(status, str(error), request_id=request.request_id if status >= 500 else None)
        except Exception as error:
            log.exception("api '%s': %s failed (request_id=%s)", self.api.name, operation, request.request_id)
            return error_response(500, self._shown(error), request_id=request.request_id)

    async def predict(self, request: ApiRequest) -> Response:
        """Parse what predict declares, run it (alone or in a batch) on the pool, encode its result."""
        # Log lines carry the request's id from here to the end of predict's task (each request has a task of its
        # own); _on_pool and _on_loop carry it to their threads. Its stream and post_predict are given it (_stream).
        request_context.set((request, self.api.name))
        predictor = self.predictor
        arguments: dict[str, Any] = {}
        try:
            arguments = await self._arguments(request, predictor)
            if self.batcher is not None:
                tracing.admitted()
                result = await self.batcher.submit(arguments)
            elif predictor.async_predict:
                result = await self._on_loop(tracing.within_async("predict", predictor.predict(arguments), True))
            elif self.arrivals is not None:
                self.arrivals.announce()
                result = await self._on_pool(tracing.within("predict", _predict_announced, True), self.arrivals,
                                             predictor, arguments, never_ran=self.arrivals.withdraw)
            else:
                result = await self._on_pool(tracing.within("predict", predictor.predict, True), arguments)
            if is_stream(result):
                return await self._stream(result, request, predictor, arguments)
            with tracing.span("encode"):
                response = self.encode_response(result=result, request_headers=request.headers, api=self.api)
        except PayloadError as error:
            return error_response(400, str(error))
        except asyncio.CancelledError:
            _close_uploads(arguments)
            raise
        except HTTPException as error:
            _close_uploads(arguments)
            return error_response(error.status_code, str(error.detail), headers=error.headers)
        except ModelError as error:
            _close_uploads(arguments)
            if _logged_with_traceback(error.status_code):
                log.exception("api '%s': predict failed (request_id=%s)", self.api.name, request.request_id)
            return error_response(error.status_code, str(error),
                                  request_id=request.request_id if error.status_code >= 500 else None)
        except Exception as error:
            _close_uploads(arguments)
            self.metrics.child(self.metrics.predictor_exceptions, self.api.name).inc()
            log.exception("api '%s': predict failed (request_id=%s)", self.api.name, request.request_id)
            return error_response(500, self._shown(error), request_id=request.request_id)
        if not isinstance(response, Response):
            log.error("api '%s': engine_encode_response answered %s, not a starlette Response: an installed plugin "
                      "breaks the hook's contract (engine plugins lists them)", self.api.name, type(response).__name__)
            return error_response(500, "internal error in engine: a plugin encoded the response wrongly")
        if predictor.post_predict_args is not None:
            _add_background(response, BackgroundTask(self._submit_post_predict, predictor, result, arguments,
                                                     request))
        elif isinstance(arguments.get("payload"), FormData):
            _add_background(response, BackgroundTask(_close_uploads, arguments))
        return response

    def _shown(self, error: BaseException) -> str:
        """What a client is told of a predictor's exception (--expose-errors)."""
        if self.shows_errors:
            return f"{type(error).__name__}: {error}"
        return "predict raised an exception; the server's log has it under this request id"

    async def _stream(self, result: Any, request: ApiRequest, predictor: Predictor,
                      arguments: dict[str, Any]) -> Response:
        """The response that streams what predict's generator yields; post_predict then gets the list of items."""
        attribution = (request, self.api.name)  # items are pulled by the response, in a task other than predict's
        if inspect.isasyncgen(result):
            pull = lambda: self._on_loop(_attributed_async(attribution, _next_async(result)))  # noqa: E731
            close = lambda: self._on_loop(_attributed_async(attribution, result.aclose()))  # noqa: E731
        else:
            pull = lambda: self._on_pool(_attributed, attribution, next, result, END)  # noqa: E731
            close = lambda: self._on_pool(_attributed, attribution, result.close)  # noqa: E731

        async def on_end(items: list[Any]) -> None:
            if predictor.post_predict_args is not None:
                await self._submit_post_predict(predictor, items, arguments, request)
            else:
                _close_uploads(arguments)

        return await stream_response(pull, close, request.headers.get("accept", ""), self.api.name,
                                     request.request_id, self._shown, on_end)

    @property
    def loop(self) -> PredictorLoop:
        """The event loop of the predictor's async methods (and of async generators a sync predict returns)."""
        return self._loop or self._start_loop()

    def _start_loop(self) -> PredictorLoop:
        self._loop = PredictorLoop(self.api.name, self.api.predictor.threads_per_process,
                                   self.metrics.child(self.metrics.loop_lag, self.api.name).set)
        return self._loop

    async def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Await one of the predictor's coroutines on its own event loop, threads_per_process at once; cancelling
        this cancels it there."""
        return await asyncio.wrap_future(self.loop.submit(coroutine))

    async def _on_pool(self, function: Callable[..., T], *arguments: Any,
                       never_ran: Callable[[], None] | None = None) -> T:
        """Run function(*arguments) on the API's pool. Cancelled while it waits for a thread, it never runs (and
        `never_ran` is called); cancelled while it runs, it cannot be stopped: this waits for it (its slot stays
        taken) and counts the overrun."""
        future = self.pool.submit(contextvars.copy_context().run, function, *arguments)
        # asyncio.wrap_future's work, for this one case: a future of the loop woken once the thread's is done
        waiter = asyncio.get_running_loop().create_future()
        future.add_done_callback(functools.partial(_wake, waiter))
        try:
            await waiter
            return future.result()
        except asyncio.CancelledError:
            if not future.cancel():
                self.metrics.child(self.metrics.overruns, self.api.name).inc()
                await _finished(future)
            elif never_ran is not None:
                never_ran()
            raise

    async def _arguments(self, request: ApiRequest, predictor: Predictor) -> dict[str, Any]:
        arguments: dict[str, Any] = {}
        if predictor.wants_payload:
            headers = request.headers

            def parse() -> object:
                return self.parse_payload(body=request.body, content_type=headers.get("content-type", ""),
                                          headers=headers, api=self.api)
            payload = await asyncio.to_thread(parse) if len(request.body) > PARSE_ON_THREAD else parse()
            arguments["payload"] = payload if type(payload) in _PLAIN or not inspect.isawaitable(payload) \
                else await payload
        if predictor.wants_query_params:
            arguments["query_params"] = request.query_params
        if predictor.wants_headers:
            arguments["headers"] = request.headers
        return arguments

    async def _submit_post_predict(self, predictor: Predictor, result: Any, arguments: dict[str, Any],
                                   request: ApiRequest) -> None:
        # Submitted, not awaited: the connection is free for its next request while post_predict runs; stop()
        # waits for it, and so does a worker before it says it is done with the request.
        attribution = (request, self.api.name)  # its log lines carry the request's id
        if predictor.async_post_predict:
            work = _attributed_async(attribution, tracing.within_async(
                "post_predict", self._run_post_predict_async(predictor, result, arguments)))
            request.after.append(self.loop.submit(work, limited=False))
        else:
            # in this context's copy: a traced request's span is the parent of post_predict's
            request.after.append(self.pool.submit(contextvars.copy_context().run, _attributed, attribution,
                                                  tracing.within("post_predict", self._run_post_predict), predictor,
                                                  result, arguments))

    def _run_post_predict(self, predictor: Predictor, result: Any, arguments: dict[str, Any]) -> None:
        try:
            predictor.post_predict(result, arguments)
        except Exception:
            log.exception("api '%s': post_predict failed", self.api.name)
        finally:
            _close_uploads(arguments)

    async def _run_post_predict_async(self, predictor: Predictor, result: Any, arguments: dict[str, Any]) -> None:
        try:
            await predictor.post_predict(result, arguments)
        except Exception:
            log.exception("api '%s': post_predict failed", self.api.name)
        finally:
            _close_uploads(arguments)


def _logged_with_traceback(status: int) -> bool:
    """A ModelError worth its traceback in the log: a 5xx but a 503, which says "not now" (a model unloaded by
    request, or no room for it in a byte budget yet) and is logged where it is decided."""
    return status >= 500 and status != 503


def _load_on_loop(loop: PredictorLoop, load_model: Callable[[str], Any], path: str) -> Any:
    """An async load_model, run to its end on the predictor's event loop."""
    return loop.call(load_model(path))


def _predict_announced(arrivals: Arrivals, predictor: Predictor, arguments: dict[str, Any]) -> Any:
    """predict() for a batching client, its arrival at the batcher counted (see engine.serving.batching.Arrivals)."""
    with arrivals.carried():
        return predictor.predict(arguments)


def _attributed(attribution: tuple[ApiRequest, str] | None, function: Callable[..., T], *arguments: Any) -> T:
    """function(*arguments), its log lines carrying the request of `attribution` (request, API name), or none's."""
    context = contextvars.copy_context()
    context.run(request_context.set, attribution)
    return context.run(function, *arguments)


async def _attributed_async(attribution: tuple[ApiRequest, str] | None, coroutine: Coroutine[Any, Any, T]) -> T:
    """The same for a coroutine (set in its task's own context)."""
    request_context.set(attribution)
    return await coroutine


async def _next_async(stream: Any) -> Any:
    """An async generator's next item, or END."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return END


_PLAIN = frozenset({dict, list, str, bytes, int, float, bool, type(None)})  # payloads that are not awaitables


def _wake(waiter: asyncio.Future[None], future: Future[Any]) -> None:
    """`future` (a thread's) is done: wake the event loop's `waiter` (called in the thread, or in the loop when the
    future is cancelled there)."""
    loop = waiter.get_loop()
    try:
        loop.call_soon_threadsafe(_settle, waiter)
    except RuntimeError:  # the loop is closed: nobody waits any more
        pass


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _finished(future: Future[Any]) -> None:
    """Wait until a running thread's work ends, whatever cancels the waiter meanwhile."""
    while not future.done():
        try:
            await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            continue
        except Exception:
            return


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
