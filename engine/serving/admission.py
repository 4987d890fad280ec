"""The front door of every API, in the front process: request ids, readiness, the body (its size and its time), the
concurrency limit, the deadline, client disconnects, metrics and the access log — for in-process and worker-backed
APIs alike. What passes is handed to the API's Backend.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Protocol

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from engine import tracing
from engine.serving.accesslog import access_log
from engine.serving.backend import ApiRequest, Backend
from engine.serving.metrics import Metrics
from engine.serving.pipeline import error_response
from engine.settings import ServeSettings

log = logging.getLogger("engine")

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID = 200  # longer ids, or ids with characters outside visible ASCII, are replaced
API_METHODS = ("GET", "HEAD", "POST")
RETRY_AFTER = "1"  # seconds a client told 503 should wait before it tries again
WATCH_AFTER = 0.02  # seconds an admitted request waits for its answer before its client is watched for a disconnect
_ALLOW = ", ".join(API_METHODS)


ROUTED_KEY = "engine.routed"  # in a request's scope: the Routed of a request a TrafficSplitter handed over


@dataclass(frozen=True, slots=True)
class Routed:
    """How a request came through a TrafficSplitter (engine.serving.splitter): which one, and whether as a shadow."""

    splitter: str
    shadow: bool = False

    @property
    def shown(self) -> str:
        """How the access log names it."""
        return f"splitter={self.splitter}{' shadow' if self.shadow else ''}"


class ServerState(Protocol):
    """What the admission layer asks of the server as a whole."""

    draining: bool  # SIGTERM has come: responses say Connection: close


class ClientGone(Exception):
    """The client disconnected before its request was complete."""


class BodyTooLarge(Exception):
    """The body is longer than max_body_size."""


class Admission:
    """One API's requests: checked, counted and logged here, answered by its backend. An ASGI app of its routes."""

    def __init__(self, backend: Backend, metrics: Metrics, settings: ServeSettings, server: ServerState) -> None:
        self.backend = backend
        self.api = backend.api
        self.metrics = metrics
        self.server = server
        self.request_timeout = settings.request_timeout
        self.body_timeout = settings.body_timeout
        self.max_body_size = settings.max_body_size
        self.max_in_flight = backend.api.autoscaling.max_replica_concurrency
        self.in_flight = 0
        # Requests under way by the backend generation they began in: a replaced backend (engine serve --reload)
        # stops once every request that may have reached it has ended.
        self._generation = 0
        self._under_way: dict[int, int] = {0: 0}
        self._gauge = metrics.child(metrics.in_flight, self.api.name)
        self._rejected = metrics.child(metrics.rejected, self.api.name)
        self._timeouts = metrics.child(metrics.timeouts, self.api.name)
        self._disconnects = metrics.child(metrics.disconnects, self.api.name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method = scope["method"]
        request_id = ensure_request_id(scope)
        traced = tracing.start_request(scope, f"{method} {self.api.endpoint}", self.api.name, request_id)
        held = [False]  # set while this request holds a concurrency slot to give back after its response
        generation = self.begin()
        status = 499  # what the server span says of a request whose client left first
        try:
            try:
                response = await self._answer(method, scope, receive, held)
            except ClientGone:
                self._disconnects.inc()
                routed = scope.get(ROUTED_KEY)
                access_log.request(self.api.name, method, scope["path"], "client disconnected",
                                   time.perf_counter() - started, request_id, routed.shown if routed else "")
                return
            status = response.status_code
            set_header(response, REQUEST_ID_HEADER, request_id.encode())
            if traced is not None:
                response.headers["traceparent"] = traced.carrier.traceparent
            if self.server.draining:
                response.headers["connection"] = "close"  # no keep-alive request may arrive as the server goes
            try:
                await response(scope, receive, send)  # a stream is sent for as long as it lasts: its slot with it
            finally:
                if held[0]:
                    self._release()
            # while the request's trace is current: the access line names its server span
            self._observe(method, scope["path"], response.status_code, started, request_id, scope.get(ROUTED_KEY))
        finally:
            self.end(generation)
            if traced is not None:
                tracing.end_request(traced, status)

    def begin(self) -> int:
        """Count a request (or a WebSocket message) under way in the current backend generation; that generation."""
        generation = self._generation
        self._under_way[generation] += 1
        return generation

    def end(self, generation: int) -> None:
        """The request counted by begin() is over, its answer sent."""
        self._under_way[generation] -= 1

    def swap(self, backend: Backend) -> tuple[Backend, int]:
        """Send new requests to `backend` (ready); the backend replaced, and the generation whose requests may still
        reach it (drained() waits for them)."""
        old, before = self.backend, self._generation
        self._generation += 1
        self._under_way[self._generation] = 0
        self.backend, self.api = backend, backend.api
        self.max_in_flight = backend.api.autoscaling.max_replica_concurrency
        return old, before

    async def drained(self, generation: int, poll: float = 0.02) -> None:
        """Wait until no request that began in `generation` or before is under way."""
        while any(count for begun, count in self._under_way.items() if begun <= generation):
            await asyncio.sleep(poll)
        for begun in [begun for begun in self._under_way if begun <= generation]:
            del self._under_way[begun]

    async def _answer(self, method: str, scope: Scope, receive: Receive, held: list[bool]) -> Response:
        if method == "POST" and self.backend.ready:
            try:
                return await self._predict(scope, receive, held)
            except TimeoutError:
                return self._timed_out()
            except (ClientGone, asyncio.CancelledError):
                raise
            except Exception as error:  # the backends answer every predictor error; this is a bug in engine itself
                return self._engine_error(error, method, scope["path"])
        # Answered without reading a body the request may carry: the server cannot read the next request of this
        # connection, so the answer says it closes (a client reusing it would otherwise meet a closed socket).
        response = await self._answer_unread(method, scope)
        return _closing(response) if has_body(scope) else response

    async def _answer_unread(self, method: str, scope: Scope) -> Response:
        """405, 503 while not ready, or the summary (GET and HEAD)."""
        if method not in API_METHODS:
            return error_response(405, "Method Not Allowed", headers={"Allow": _ALLOW})
        backend = self.backend
        if not backend.ready:
            reason = f"failed to start: {backend.failure}" if backend.failure else "its predictor is still initialising"
            return error_response(503, f"api '{self.api.name}' is not ready: {reason}",
                                  headers={"Retry-After": RETRY_AFTER})
        try:
            async with asyncio.timeout(self.request_timeout):
                return await backend.summary(ApiRequest(scope, b""))
        except TimeoutError:
            return self._timed_out()
        except (ClientGone, asyncio.CancelledError):
            raise
        except Exception as error:  # the backends answer every predictor error; this is a bug in engine itself
            return self._engine_error(error, method, scope["path"])

    def _timed_out(self) -> Response:
        self._timeouts.inc()
        return error_response(504, f"api '{self.api.name}' did not answer within the request timeout "
                                   f"({self.request_timeout:g} s)")

    def _engine_error(self, error: Exception, method: str, path: str) -> Response:
        log.exception("unexpected error while serving %s %s", method, path)
        return error_response(500, f"internal error in engine: {type(error).__name__}: {error}")

    async def _predict(self, scope: Scope, receive: Receive, held: list[bool]) -> Response:
        body = await body_or_refusal(scope, receive, self.max_body_size, self.body_timeout)
        if isinstance(body, Response):
            return body
        return await self._admitted(ApiRequest(scope, body), receive, held)

    async def _admitted(self, request: ApiRequest, receive: Receive | None, held: list[bool],
                        operation: str | None = None) -> Response:
        """The backend's answer (its prediction, or the plugin operation named) within the deadline, if a concurrency
        slot is free; with `receive`, a disconnect gives the request up (ClientGone)."""
        if self.in_flight >= self.max_in_flight:  # taken after the body: a slow client holds no slot
            self._rejected.inc()
            return error_response(503, f"api '{self.api.name}' already has {self.in_flight} requests in flight, its "
                                       "max_replica_concurrency; retry later", headers={"Retry-After": RETRY_AFTER})
        self.in_flight += 1
        self._gauge.inc()
        loop = asyncio.get_running_loop()
        work = loop.create_task(self.backend.predict(request) if operation is None
                                else self.backend.operate(operation, request))
        wait = _Wait(loop, work, receive, self.request_timeout)
        try:
            await wait.ended
        finally:
            wait.close()
            if not work.done():  # the deadline, the client, or the server's own stop: the backend drops it
                work.cancel()
                work.add_done_callback(self._release)  # the slot stays taken until the work stops, past a 504
        if work.done():  # its answer (even one that came in the same step as the deadline)
            held[0] = True
            return work.result()
        if wait.ended.result() is _GONE:
            raise ClientGone
        raise TimeoutError

    # --- for plugins' operations (engine.Operation) ----------------------------------------------------------------

    async def operate(self, operation: str, request: ApiRequest) -> Response:
        """A plugin's operation for one request, under the API's readiness, concurrency limit and deadline."""
        started = time.perf_counter()
        request_id = ensure_request_id(request.scope)
        traced = tracing.start_request(request.scope, operation, self.api.name, request_id)
        generation = self.begin()
        status = 500
        try:
            response = await self._operate(operation, request, started, request_id)
            status = response.status_code
            if traced is not None:
                response.headers["traceparent"] = traced.carrier.traceparent
            return response
        finally:
            self.end(generation)
            if traced is not None:
                tracing.end_request(traced, status)

    async def _operate(self, operation: str, request: ApiRequest, started: float, request_id: str) -> Response:
        if not self.backend.ready:
            response = error_response(503, f"api '{self.api.name}' is not ready", headers={"Retry-After": RETRY_AFTER})
        else:
            held = [False]
            try:
                response = await self._admitted(request, None, held, operation)
            except TimeoutError:
                response = self._timed_out()
            except Exception as error:
                response = self._engine_error(error, operation, request.scope["path"])
            if held[0]:
                self._release()
        response.headers["x-request-id"] = request_id
        self._observe(operation, request.scope["path"], response.status_code, started, request_id)
        return response

    # --- for the WebSocket messages of engine.serving.websocket ----------------------------------------------------

    async def answer_message(self, request: ApiRequest) -> tuple[Response, bool]:
        """The answer to one WebSocket message (a POST in all but name), and whether it holds a slot to release."""
        held = [False]
        try:
            return await self._admitted(request, None, held), held[0]
        except TimeoutError:
            return self._timed_out(), held[0]
        except Exception as error:
            return self._engine_error(error, "WEBSOCKET", request.scope["path"]), held[0]

    def finished_message(self, held: bool, status: int, started: float, request_id: str, path: str,
                         routed: Routed | None = None) -> None:
        """A WebSocket message's answer is sent: give its slot back, count and log it."""
        if held:
            self._release()
        self._observe("WEBSOCKET", path, status, started, request_id, routed)

    def count_disconnect(self) -> None:
        """A client left before its answer."""
        self._disconnects.inc()

    def _release(self, work: asyncio.Future[Response] | None = None) -> None:
        self.in_flight -= 1
        self._gauge.dec()

    def _observe(self, method: str, path: str, status: int, started: float, request_id: str,
                 routed: Routed | None = None) -> None:
        seconds = time.perf_counter() - started
        metrics, api = self.metrics, self.api.name
        metrics.child(metrics.requests, api, method, str(status)).inc()
        metrics.child(metrics.latency, api).observe(seconds)
        if routed is None:
            access_log.request(api, method, path, status, seconds, request_id)
            return
        if not routed.shadow:
            metrics.child(metrics.split_requests, routed.splitter, api, method, str(status)).inc()
            metrics.child(metrics.split_latency, routed.splitter, api).observe(seconds)
        access_log.request(api, method, path, status, seconds, request_id, routed.shown)


_ANSWERED, _LATE, _GONE = "answered", "late", "gone"  # how a _Wait ends


class _Wait:
    """An admitted request's wait for its backend's answer, which ends (`ended`) with the answer, the deadline or the
    client's disconnect. The client is watched (a task waiting in receive(), which after the whole body answers only
    a disconnect) once the answer has taken WATCH_AFTER: for a quick answer, the watcher would be a large part of the
    request's own cost, and a client that leaves sooner costs little."""

    __slots__ = ("deadline", "ended", "loop", "receive", "timer", "watcher")

    def __init__(self, loop: asyncio.AbstractEventLoop, work: asyncio.Task[Response], receive: Receive | None,
                 timeout: float | None) -> None:
        self.loop = loop
        self.ended: asyncio.Future[str] = loop.create_future()
        self.receive = receive
        self.watcher: asyncio.Task[None] | None = None
        now = loop.time()
        self.deadline = None if timeout is None else now + timeout
        work.add_done_callback(self._answered)
        self.timer: asyncio.TimerHandle | None = None
        if receive is not None and (self.deadline is None or now + WATCH_AFTER < self.deadline):
            self.timer = loop.call_at(now + WATCH_AFTER, self._watch)
        elif self.deadline is not None:
            self.timer = loop.call_at(self.deadline, self._end, _LATE)

    def close(self) -> None:
        """The wait is over: stop the timer and the watcher."""
        if self.timer is not None:
            self.timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()

    def _answered(self, work: asyncio.Task[Response]) -> None:
        self._end(_ANSWERED)

    def _end(self, how: str) -> None:
        if not self.ended.done():
            self.ended.set_result(how)

    def _watch(self) -> None:
        if self.ended.done():
            return
        self.watcher = self.loop.create_task(self._listen())
        self.timer = None if self.deadline is None else self.loop.call_at(self.deadline, self._end, _LATE)

    async def _listen(self) -> None:
        assert self.receive is not None
        with contextlib.suppress(Exception):  # a server whose receive() fails has lost the connection too
            await self.receive()
        self._end(_GONE)


async def body_or_refusal(scope: Scope, receive: Receive, max_body_size: int | None,
                          body_timeout: float | None) -> bytes | Response:
    """The request's whole body, or the 400, 408 or 413 to answer instead (closing the connection); ClientGone if the
    client disconnects first."""
    problem = framing_problem(scope, max_body_size)
    if problem is not None:
        return problem
    # asyncio.timeout's work, done by hand: it cost a fast request a sizeable part of its own CPU
    task = asyncio.current_task()
    expired: list[bool] = []  # the timer's, once it has fired
    timer = None
    if body_timeout is not None and task is not None:
        cancelling = task.cancelling()
        loop = asyncio.get_running_loop()
        timer = loop.call_at(loop.time() + body_timeout, _expire, task, expired)
    try:
        return await read_body(receive, max_body_size)
    except asyncio.CancelledError:
        if not expired or task is None or task.uncancel() > cancelling:
            raise
        return _closing(error_response(408, f"the request body did not arrive within {body_timeout:g} s"))
    except BodyTooLarge:
        return _closing(error_response(413, f"the request body is larger than {max_body_size} bytes "
                                            "(--max-body-size)"))
    finally:
        if timer is not None:
            timer.cancel()


def _expire(task: asyncio.Task[object], expired: list[bool]) -> None:
    """A request body's time is up: cancel its task (body_or_refusal makes a 408 of it)."""
    expired.append(True)
    task.cancel()


def framing_problem(scope: Scope, max_body_size: int | None) -> Response | None:
    """A 4xx for a request whose framing is wrong (RFC 9112: Content-Length with chunked) or too long by its
    Content-Length; both close the connection, since the body is not read."""
    length = None
    chunked = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            chunked = True
    if length is not None and chunked:
        return _closing(error_response(400, "a request with both Content-Length and Transfer-Encoding is ambiguous "
                                            "(RFC 9112); send one of them"))
    if length is not None and max_body_size is not None and length.isdigit() and int(length) > max_body_size:
        return _closing(error_response(413, f"the request body ({int(length)} bytes) is larger than {max_body_size} "
                                            "bytes (--max-body-size)"))
    return None


async def read_body(receive: Receive, max_body_size: int | None) -> bytes:
    """The whole request body; ClientGone if the client disconnects first, BodyTooLarge past the limit."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if max_body_size is not None and size > max_body_size:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def ensure_request_id(scope: Scope) -> str:
    """The request's X-Request-ID when it is a sane one, or a new one put in its headers (the predictor and the
    workers see it too)."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for index, (name, value) in enumerate(headers):
        if name == REQUEST_ID_HEADER:
            if 0 < len(value) <= MAX_REQUEST_ID and value.isascii() and all(33 <= byte <= 126 for byte in value):
                return value.decode("ascii")
            headers = headers[:index] + headers[index + 1:]  # replaced: never logged or echoed as sent
            break
    # unique enough, and far cheaper than uuid4's os.urandom; "%" formats it faster than an f-string
    request_id = "%032x" % random.getrandbits(128)  # noqa: UP031
    scope["headers"] = [*headers, (REQUEST_ID_HEADER, request_id.encode())]
    return request_id


def has_body(scope: Scope) -> bool:
    """True when the request announces a body (a non-zero Content-Length, or chunked)."""
    for name, value in scope["headers"]:
        if (name == b"content-length" and value not in (b"0", b"")) or name == b"transfer-encoding":
            return True
    return False


def _closing(response: Response) -> Response:
    response.headers["connection"] = "close"
    return response


def set_header(response: Response, name: bytes, value: bytes) -> None:
    """response.headers[name] = value, without the MutableHeaders it would build (`name` in lower case)."""
    headers = response.raw_headers
    for index, (present, _) in enumerate(headers):
        if present == name:
            headers[index] = (name, value)
            headers[index + 1:] = [header for header in headers[index + 1:] if header[0] != name]
            return
    headers.append((name, value))
