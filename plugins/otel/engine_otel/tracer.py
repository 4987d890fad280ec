"""engine's Tracer: the server span of a request and the spans of its phases, each recorded as it ends as a plain
record (engine_otel.wire) in the process's Outbox, which hands them to the exporter process.

No OpenTelemetry object is made for a span of engine's own but where a predictor may start spans of its own: while a
phase or a batch runs, a NonRecordingSpan with its ids is the current span in OpenTelemetry's context, so that the
predictor's spans (through the global provider) are its children. The span current in a task or thread is engine's
own context variable, `_current`: (trace id, span id, is remote, TraceState, the caller's OpenTelemetry context).
The sampler decides once per request, at its server span; the phases follow that decision.
"""
from __future__ import annotations

import random
import traceback
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar, Token
from time import time_ns
from types import TracebackType
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags, TraceState

from engine import Carrier
from engine_otel.outbox import Outbox
from engine_otel.wire import Record

TRACEPARENT = b"traceparent"
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
SAMPLE = Decision.RECORD_AND_SAMPLE
NO_STATE = TraceState()
SERVER = SpanKind.SERVER.value
ERROR = StatusCode.ERROR.value
SAMPLE_ROOTS = {"AlwaysOnSampler", ParentBased(ALWAYS_ON).get_description()}  # type: ignore[no-untyped-call]

# (trace id, span id, is remote, its TraceState, the caller's OpenTelemetry context (baggage) or None)
Current = tuple[int, int, bool, TraceState, Context | None]
_current: ContextVar[Current | None] = ContextVar("engine_otel_current", default=None)
_random_bits = random.getrandbits


class ServerSpan:
    """A traced request's server span, current in its task until end()."""

    __slots__ = ("add", "name", "current", "parent", "attributes", "token", "carrier")

    def __init__(self, add: Callable[[Record], None], name: str, current: Current, parent: SpanContext | None,
                 attributes: dict[str, Any], token: Token[Current | None], carrier: Carrier) -> None:
        self.add = add
        self.name = name
        self.current = current
        self.parent = parent
        self.attributes = attributes
        self.token = token
        self.carrier = carrier

    def end(self, status: int) -> None:
        """Say the response's status, end the span, and restore the task's context."""
        attributes = self.attributes
        attributes["http.response.status_code"] = status
        trace_id, span_id, _, trace_state, _ = self.current
        extra: dict[str, Any] = {"kind": SERVER, "attributes": attributes}
        if status >= 500:
            extra["status"] = (ERROR, None)
        if trace_state is not NO_STATE:
            extra["trace_state"] = trace_state.to_header()
        parent = self.parent
        self.add((trace_id, span_id, parent.span_id if parent is not None else 0, parent is not None, self.name,
                  self.carrier.arrived_ns, time_ns(), extra))
        try:
            _current.reset(self.token)
        except ValueError:  # ended in another context than the one it started in: nothing is current there now
            _current.set(None)


class Phase:
    """A span of engine's (a phase, a batch) current inside a `with`: in engine's context and in OpenTelemetry's;
    an exception leaving it is recorded on it."""

    __slots__ = ("add", "name", "parent", "current", "extra", "token", "otel_token", "started")

    def __init__(self, add: Callable[[Record], None], name: str, parent: Current, extra: dict[str, Any] | None = None,
                 span_id: int = 0, started: int = 0) -> None:
        self.add = add
        self.name = name
        self.parent = parent
        self.extra = extra
        self.current: Current = (0, span_id, False, NO_STATE, None)  # its span id when known before it is entered
        self.started = started

    def __enter__(self) -> None:
        trace_id, _, _, trace_state, caller = self.parent
        span_id = self.current[1] or _random_bits(64) or 1
        self.current = current = (trace_id, span_id, False, trace_state, caller)
        self.token = _current.set(current)
        self.otel_token = context.attach(trace.set_span_in_context(
            NonRecordingSpan(SpanContext(trace_id, span_id, False, SAMPLED, trace_state)), caller))
        if not self.started:
            self.started = time_ns()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 where: TracebackType | None) -> None:
        ended = time_ns()
        context.detach(self.otel_token)
        _current.reset(self.token)
        extra = self.extra
        if error is not None:
            extra = {**(extra or {}), "status": (ERROR, f"{type(error).__name__}: {error}"),
                     "events": (_exception_event(error, ended),)}
        trace_id, span_id, _, trace_state, _ = self.current
        if trace_state is not NO_STATE:
            extra = {**(extra or {}), "trace_state": trace_state.to_header()}
        parent = self.parent
        self.add((trace_id, span_id, parent[1], parent[2], self.name, self.started, ended, extra))


class Resumed:
    """Another process's server span current inside a `with`."""

    __slots__ = ("current", "token")

    def __init__(self, current: Current) -> None:
        self.current = current

    def __enter__(self) -> None:
        self.token = _current.set(self.current)

    def __exit__(self, *_: object) -> None:
        _current.reset(self.token)


class OtelTracer:
    """engine.Tracer: spans decided by `sampler`, handed as records to `outbox`."""

    def __init__(self, sampler: Sampler, outbox: Outbox) -> None:
        self.sampler = sampler
        self.outbox = outbox
        self.add = outbox.add
        # Samplers that say no before they are asked (always_off; parentbased_always_off without a caller's trace):
        # the request costs no more than this check
        description = sampler.get_description()
        self.drops_all = description == "AlwaysOffSampler"
        self.drops_roots = self.drops_all or description.startswith("ParentBased{root:AlwaysOffSampler,")
        # Samplers that take every request without a caller's trace, adding no attribute and no trace state
        self.samples_roots = description in SAMPLE_ROOTS

    def start_request(self, headers: list[tuple[bytes, bytes]], name: str, attributes: dict[str, Any],
                      arrived_ns: int) -> ServerSpan | None:
        """The server span of a request, continuing its traceparent; None when the sampler leaves it out."""
        if self.drops_all:
            return None
        incoming = None
        for header, _ in headers:
            if header == TRACEPARENT:
                incoming = propagate.extract({key.decode("latin-1"): value.decode("latin-1") for key, value in headers})
                break
        parent = None
        if incoming is not None:
            remote = trace.get_current_span(incoming).get_span_context()
            parent = remote if remote.is_valid else None
        elif self.drops_roots:
            return None
        if parent is None and self.samples_roots:  # what the sampler would answer, without asking it
            trace_id = _random_bits(128) or 1
            trace_state = NO_STATE
        else:
            trace_id = parent.trace_id if parent is not None else _random_bits(128) or 1
            sampling = self.sampler.should_sample(incoming, trace_id, name, SpanKind.SERVER, attributes)
            if sampling.decision is not SAMPLE:  # recorded but not sampled would be exported by no processor
                return None
            if sampling.attributes and sampling.attributes is not attributes:
                attributes = {**attributes, **sampling.attributes}
            trace_state = sampling.trace_state or NO_STATE  # (NO_STATE: the empty one, known by its identity)
        span_id = _random_bits(64) or 1
        current = (trace_id, span_id, False, trace_state, incoming)
        carrier = Carrier(f"00-{trace_id:032x}-{span_id:016x}-01", _header(trace_state), arrived_ns)
        return ServerSpan(self.add, name, current, parent, attributes, _current.set(current), carrier)

    def resume(self, carrier: Carrier) -> Resumed:
        """The server span of `carrier` (another process's) current inside."""
        _, trace_id, span_id, _ = carrier.traceparent.split("-")
        trace_state = (TraceState.from_header([carrier.tracestate]) or NO_STATE) if carrier.tracestate else NO_STATE
        return Resumed((int(trace_id, 16), int(span_id, 16), True, trace_state, None))

    def span(self, name: str) -> AbstractContextManager[None]:
        """A child span of the current one, current inside; an exception leaving it is recorded on it."""
        parent = _current.get()
        if parent is None:  # (engine asks only in a traced request)
            return nullcontext()
        return Phase(self.add, name, parent)

    def record(self, name: str, start_ns: int, end_ns: int) -> None:
        """A child span of the current one that began and ended at these times."""
        parent = _current.get()
        if parent is None:
            return
        trace_id, parent_id, remote, trace_state, _ = parent
        self.add((trace_id, _random_bits(64) or 1, parent_id, remote, name, start_ns, end_ns,
                  {"trace_state": trace_state.to_header()} if trace_state is not NO_STATE else None))

    def capture(self) -> Current | None:
        """The current span (opaque to engine), for a batch to link to."""
        return _current.get()

    def batch(self, waits: Sequence[tuple[object, int]]) -> Phase:
        """The `batch` span (in the trace of the request that opened the batch, linked to every request), current
        inside; each request's `batch wait`, from when it began waiting until now, linked to it."""
        requests: list[tuple[Current, int]] = [(request, since) for request, since in waits
                                               if isinstance(request, tuple)]
        opener = requests[0][0]
        trace_id, _, _, trace_state, _ = opener
        span_id = _random_bits(64) or 1
        now = time_ns()
        joined = ((trace_id, span_id, False, _header(trace_state), None),)
        for (request_trace, request_span, remote, request_state, _), since in requests:
            extra: dict[str, Any] = {"links": joined}
            if request_state is not NO_STATE:
                extra["trace_state"] = request_state.to_header()
            self.add((request_trace, _random_bits(64) or 1, request_span, remote, "batch wait", since, now, extra))
        links = tuple((request[0], request[1], request[2], _header(request[3]), None) for request, _ in requests)
        return Phase(self.add, "batch", opener, {"attributes": {"engine.batch_size": len(waits)}, "links": links},
                     span_id, now)

    def ids(self) -> tuple[str, str] | None:
        """The current span's trace and span ids, in hex: a predictor's own span's where one is current."""
        own = trace.get_current_span().get_span_context()
        if own.is_valid:
            return f"{own.trace_id:032x}", f"{own.span_id:016x}"
        current = _current.get()
        if current is None:
            return None
        return f"{current[0]:032x}", f"{current[1]:016x}"


def _header(trace_state: TraceState) -> str:
    return "" if trace_state is NO_STATE else trace_state.to_header()


def _exception_event(error: BaseException, at_ns: int) -> tuple[str, int, dict[str, str]]:
    """The `exception` event OpenTelemetry's semantic conventions describe."""
    return ("exception", at_ns, {"exception.type": type(error).__qualname__, "exception.message": str(error),
                                 "exception.stacktrace": "".join(traceback.format_exception(error))})
