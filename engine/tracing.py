"""Request tracing: the points of a request's path where engine tells a tracing plugin (one that answers
engine_tracer, such as engine-otel) what happens. Without one, or for a request its sampler leaves out, each call
here costs a lookup and does nothing.

A traced request has a server span (started by the admission layer, current in its task), and under it the spans of
its phases: `admission` (from its arrival until its predictor starts on it: body, concurrency slot, the wait for a
thread or a worker), `batch wait` (linked to the `batch` span it joined), `predict`, `encode` and `post_predict`.
The phases run wherever the predictor runs: the request crosses to a worker process as a Carrier in its scope.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Iterator, MutableMapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

TRACE_KEY = "engine.trace"  # in a traced request's scope: its Carrier (it goes with the scope to a worker process)


@dataclass(frozen=True, slots=True)
class Carrier:
    """A traced request as another process continues it: its server span's W3C trace context, and when it arrived
    (time.time_ns(), the clock every process of a machine shares)."""

    traceparent: str
    tracestate: str
    arrived_ns: int


class RequestSpan(Protocol):
    """A traced request's server span, as its tracer started it."""

    carrier: Carrier

    def end(self, status: int) -> None:
        """The response (of this HTTP status) has been sent: end the span; called in the task that started it."""


class Tracer(Protocol):
    """What a tracing plugin gives engine (engine_tracer): one per process. Spans it is asked for while a request
    is traced are children of the span current then; its context follows the request to threads and processes."""

    def start_request(self, headers: list[tuple[bytes, bytes]], name: str, attributes: dict[str, Any],
                      arrived_ns: int) -> RequestSpan | None:
        """Start a request's server span (continuing a `traceparent` among `headers`), current in this task until
        its end(); None when the sampler leaves the request out (nothing else is then asked for it)."""

    def resume(self, carrier: Carrier) -> AbstractContextManager[None]:
        """Make a request's server span (from another process) the current span inside the `with`."""

    def span(self, name: str) -> AbstractContextManager[None]:
        """A child of the current span, itself current inside the `with` (so a predictor's own spans nest in it)."""

    def record(self, name: str, start_ns: int, end_ns: int) -> None:
        """A child of the current span that has already happened (such as the wait for admission)."""

    def capture(self) -> object:
        """The current span's context, for a batch to link to (opaque to engine)."""

    def batch(self, waits: Sequence[tuple[object, int]]) -> AbstractContextManager[None]:
        """A batch of requests runs inside the `with`: its own span, current there, linked to each request; and for
        each (captured context, waiting since in time.time_ns()) a `batch wait` span in that request, linked to it."""

    def ids(self) -> tuple[str, str] | None:
        """The current span's (trace id, span id) in hex, for log lines; None outside a traced request."""


active: Tracer | None = None  # this process's tracer (install), None without a tracing plugin
_traced: ContextVar[Carrier | None] = ContextVar("engine_traced", default=None)  # the request traced here, if any
_NOTHING: AbstractContextManager[None] = nullcontext()


def install(tracer: Tracer | None) -> None:
    """Make `tracer` this process's (engine.plugins.install_tracer finds it among the plugins)."""
    global active
    active = tracer


def start_request(scope: MutableMapping[str, Any], name: str, api: str, request_id: str) -> RequestSpan | None:
    """A request's server span, current in this task until end_request(), its Carrier put in `scope`; None when the
    request is not traced."""
    if active is None:
        return None
    attributes = {"http.request.method": scope.get("method", ""), "url.path": scope.get("path", ""),
                  "engine.api": api, "engine.request_id": request_id}
    span = active.start_request(scope["headers"], name, attributes, time.time_ns())
    if span is not None:
        _traced.set(span.carrier)
        scope[TRACE_KEY] = span.carrier
    return span


def end_request(span: RequestSpan, status: int) -> None:
    """The traced request's response (of this HTTP status) has been sent: end its server span."""
    _traced.set(None)
    span.end(status)


def carrier() -> Carrier | None:
    """The request traced in this task or thread (None when there is none)."""
    return _traced.get()


@contextmanager
def _resumed(tracer: Tracer, carrier: Carrier) -> Iterator[None]:
    token = _traced.set(carrier)
    try:
        with tracer.resume(carrier):
            yield
    finally:
        _traced.reset(token)


def resumed(carrier: Carrier | None) -> AbstractContextManager[None]:
    """The request of `carrier` (another process's) traced inside the `with`, here."""
    if carrier is None or active is None:
        return _NOTHING
    return _resumed(active, carrier)


def span(name: str) -> AbstractContextManager[None]:
    """A phase of the request traced here, as a span current inside the `with`; nothing when none is."""
    if active is None or _traced.get() is None:
        return _NOTHING
    return active.span(name)


def admitted() -> None:
    """The predictor starts on the request traced here: record its `admission` span, from its arrival until now."""
    traced = _traced.get()
    if active is not None and traced is not None:
        active.record("admission", traced.arrived_ns, time.time_ns())


def capture() -> object:
    """The request traced here, for a batch to link to (None when there is none)."""
    if active is None or _traced.get() is None:
        return None
    return active.capture()


def within(name: str, function: Callable[..., T], admission: bool = False) -> Callable[..., T]:
    """`function`, run in a span `name` when the request calling within() is traced (with `admission`, after its
    admission span); `function` itself when it is not."""
    if active is None or _traced.get() is None:
        return function
    tracer = active

    def traced(*arguments: Any) -> T:
        if admission:
            admitted()
        with tracer.span(name):
            return function(*arguments)
    return traced


def within_async(name: str, coroutine: Coroutine[Any, Any, T], admission: bool = False) -> Coroutine[Any, Any, T]:
    """The same for a coroutine (run on the predictor's event loop, in the context it was made in): `coroutine` itself
    when the request is not traced; otherwise one that awaits it in a span, under its name (the event loop's warnings
    about a blocking step name it)."""
    if active is None or _traced.get() is None:
        return coroutine
    traced = _within_async(active, name, coroutine, admission)
    traced.__qualname__ = coroutine.__qualname__  # type: ignore[attr-defined]  # (coroutine objects have it)
    return traced


async def _within_async(tracer: Tracer, name: str, coroutine: Coroutine[Any, Any, T], admission: bool) -> T:
    if admission:
        admitted()
    with tracer.span(name):
        return await coroutine


def batch(waits: Sequence[tuple[object, int]]) -> AbstractContextManager[None]:
    """A batch runs inside the `with`: traced when any of its requests is (each wait: capture(), since when)."""
    if active is None or not any(context is not None for context, _ in waits):
        return _NOTHING
    return active.batch([(context, since) for context, since in waits if context is not None])


def ids() -> tuple[str, str] | None:
    """The (trace id, span id) of what is traced here, for log lines; None when nothing is."""
    if active is None or _traced.get() is None:
        return None
    return active.ids()
