"""engine's Tracer on the OpenTelemetry SDK: the server span of a request and the spans of its phases.

engine's own spans are handed to the span processors whole, as the SDK's ReadableSpan, when they end: the SDK's live
span objects (locks, bounded attributes, a sampler call and the processors' start hooks for each) cost five times as
much, and a request has four or more. The sampler decides once per request, at its server span; the phases follow
that decision. While a phase runs, a NonRecordingSpan with its ids is the current span in OpenTelemetry's context,
so that spans a predictor makes itself (with the SDK, through the global provider) are its children.
"""
from __future__ import annotations

import random
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from time import time_ns
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from engine import Carrier

TRACEPARENT = b"traceparent"
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
UNSET = Status(StatusCode.UNSET)
ERROR = Status(StatusCode.ERROR)


class Spans:
    """Where engine's finished spans go: the span processors of engine-otel's provider."""

    def __init__(self, processors: Sequence[SpanProcessor], resource: Resource, scope: InstrumentationScope) -> None:
        self.processors = list(processors)
        self.resource = resource
        self.scope = scope

    def finish(self, name: str, span: SpanContext, parent: SpanContext | None, start_ns: int, end_ns: int,
               kind: SpanKind = SpanKind.INTERNAL, attributes: dict[str, Any] | None = None,
               links: Sequence[Link] = (), status: Status = UNSET, events: Sequence[Event] = ()) -> None:
        """Hand a span that has ended to every processor (which export it)."""
        finished = ReadableSpan(name=name, context=span, parent=parent, resource=self.resource, attributes=attributes,
                                events=events, links=links, kind=kind, status=status, start_time=start_ns,
                                end_time=end_ns, instrumentation_scope=self.scope)
        for processor in self.processors:
            processor.on_end(finished)


class ServerSpan:
    """A traced request's server span, current in its task until end()."""

    __slots__ = ("spans", "name", "span", "parent", "attributes", "token", "carrier")

    def __init__(self, spans: Spans, name: str, span: SpanContext, parent: SpanContext | None,
                 attributes: dict[str, Any], token: object, carrier: Carrier) -> None:
        self.spans = spans
        self.name = name
        self.span = span
        self.parent = parent
        self.attributes = attributes
        self.token = token
        self.carrier = carrier

    def end(self, status: int) -> None:
        """Say the response's status, end the span, and restore the task's context."""
        self.attributes["http.response.status_code"] = status
        self.spans.finish(self.name, self.span, self.parent, self.carrier.arrived_ns, time_ns(), SpanKind.SERVER,
                          self.attributes, status=ERROR if status >= 500 else UNSET)
        context.detach(self.token)  # type: ignore[arg-type]  # (attach's token)


class OtelTracer:
    """engine.Tracer: spans decided by `sampler`, handed whole to `spans`."""

    def __init__(self, sampler: Sampler, spans: Spans) -> None:
        self.sampler = sampler
        self.spans = spans
        # Samplers that say no before they are asked (always_off; parentbased_always_off without a caller's trace):
        # the request costs no more than this check
        description = sampler.get_description()
        self.drops_all = description == "AlwaysOffSampler"
        self.drops_roots = self.drops_all or description.startswith("ParentBased{root:AlwaysOffSampler,")

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
        if incoming is None and self.drops_roots:
            return None
        remote = trace.get_current_span(incoming).get_span_context() if incoming is not None else None
        parent = remote if remote is not None and remote.is_valid else None
        trace_id = parent.trace_id if parent is not None else random.getrandbits(128) or 1
        sampling = self.sampler.should_sample(incoming, trace_id, name, SpanKind.SERVER, attributes)
        if not sampling.decision.is_sampled():  # recorded but not sampled would be exported by no processor
            return None
        span = SpanContext(trace_id, _span_id(), False, SAMPLED, sampling.trace_state)
        token = context.attach(trace.set_span_in_context(NonRecordingSpan(span), incoming))
        return ServerSpan(self.spans, name, span, parent, {**attributes, **dict(sampling.attributes or {})}, token,
                          _carrier(span, arrived_ns))

    @contextmanager
    def resume(self, carrier: Carrier) -> Iterator[None]:
        """The server span of `carrier` (another process's) current inside."""
        token = context.attach(propagate.extract({"traceparent": carrier.traceparent,
                                                  "tracestate": carrier.tracestate}))
        try:
            yield
        finally:
            context.detach(token)

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        """A child span of the current one, current inside; an exception leaving it is recorded on it."""
        parent = trace.get_current_span().get_span_context()
        span = SpanContext(parent.trace_id, _span_id(), False, parent.trace_flags, parent.trace_state)
        token = context.attach(trace.set_span_in_context(NonRecordingSpan(span)))
        started = time_ns()
        try:
            yield
        except BaseException as error:
            self.spans.finish(name, span, parent, started, time_ns(), status=Status(
                StatusCode.ERROR, f"{type(error).__name__}: {error}"), events=[_exception_event(error)])
            raise
        finally:
            context.detach(token)
        self.spans.finish(name, span, parent, started, time_ns())

    def record(self, name: str, start_ns: int, end_ns: int) -> None:
        """A child span of the current one that began and ended at these times."""
        parent = trace.get_current_span().get_span_context()
        span = SpanContext(parent.trace_id, _span_id(), False, parent.trace_flags, parent.trace_state)
        self.spans.finish(name, span, parent, start_ns, end_ns)

    def capture(self) -> object:
        """The current span's context."""
        return trace.get_current_span().get_span_context()

    @contextmanager
    def batch(self, waits: Sequence[tuple[object, int]]) -> Iterator[None]:
        """The `batch` span (in the trace of the request that opened the batch, linked to every request), current
        inside; each request's `batch wait`, from when it began waiting until now, linked to it."""
        requests = [(request, since) for request, since in waits if isinstance(request, SpanContext)]
        opener = requests[0][0]
        span = SpanContext(opener.trace_id, _span_id(), False, opener.trace_flags, opener.trace_state)
        joined = [Link(span)]
        now = time_ns()
        for request, since in requests:
            wait = SpanContext(request.trace_id, _span_id(), False, request.trace_flags, request.trace_state)
            self.spans.finish("batch wait", wait, request, since, now, links=joined)
        token = context.attach(trace.set_span_in_context(NonRecordingSpan(span)))
        status = UNSET
        try:
            yield
        except BaseException as error:
            status = Status(StatusCode.ERROR, f"{type(error).__name__}: {error}")
            raise
        finally:
            context.detach(token)
            self.spans.finish("batch", span, opener, now, time_ns(), links=[Link(request) for request, _ in requests],
                              attributes={"engine.batch_size": len(waits)}, status=status)

    def ids(self) -> tuple[str, str] | None:
        """The current span's trace and span ids, in hex."""
        current = trace.get_current_span().get_span_context()
        if not current.is_valid:
            return None
        return f"{current.trace_id:032x}", f"{current.span_id:016x}"


def _span_id() -> int:
    return random.getrandbits(64) or 1


def _exception_event(error: BaseException) -> Event:
    """The `exception` event OpenTelemetry's semantic conventions describe."""
    return Event("exception", {"exception.type": type(error).__qualname__, "exception.message": str(error),
                               "exception.stacktrace": "".join(traceback.format_exception(error))})


def _carrier(span: SpanContext, arrived_ns: int) -> Carrier:
    """What a worker process needs to continue the trace."""
    return Carrier(f"00-{span.trace_id:032x}-{span.span_id:016x}-{int(span.trace_flags) & 0xff:02x}",
                   span.trace_state.to_header(), arrived_ns)
