"""engine's Tracer on the OpenTelemetry SDK: the server span of a request and the spans of its phases."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from time import time_ns
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode

from engine import Carrier
from engine_otel.provider import ChosenIds, instrumentation_version

TRACEPARENT = b"traceparent"


class ServerSpan:
    """A traced request's server span, current in its task until end()."""

    __slots__ = ("span", "token", "carrier")

    def __init__(self, span: trace.Span, token: object, carrier: Carrier) -> None:
        self.span = span
        self.token = token
        self.carrier = carrier

    def end(self, status: int) -> None:
        """Say the response's status, end the span, and restore the task's context."""
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()
        context.detach(self.token)  # type: ignore[arg-type]  # (attach's token)


class OtelTracer:
    """engine.Tracer on an SDK tracer provider."""

    def __init__(self, provider: TracerProvider, ids: ChosenIds | None) -> None:
        self.tracer = provider.get_tracer("engine", instrumentation_version())
        self.sampler = provider.sampler
        self.chosen = ids  # engine's own provider: the sampler is asked before any span is made

    def start_request(self, headers: list[tuple[bytes, bytes]], name: str, attributes: dict[str, Any],
                      arrived_ns: int) -> ServerSpan | None:
        """The server span of a request, continuing its traceparent; None when the sampler leaves it out."""
        parent = None
        for header, _ in headers:
            if header == TRACEPARENT:
                parent = propagate.extract({key.decode("latin-1"): value.decode("latin-1") for key, value in headers})
                break
        if self.chosen is not None and not self._sampled(parent, name, attributes):
            return None  # no span made: an unsampled request costs a sampler call
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes,
                                      start_time=arrived_ns)
        if not span.is_recording():
            return None
        token = context.attach(trace.set_span_in_context(span, parent))
        return ServerSpan(span, token, _carrier(span.get_span_context(), arrived_ns))

    def _sampled(self, parent: context.Context | None, name: str, attributes: dict[str, Any]) -> bool:
        """Ask the sampler about a request; a root span's trace id is chosen here, and its span gets it."""
        assert self.chosen is not None
        remote = trace.get_current_span(parent).get_span_context() if parent is not None else None
        root = remote is None or not remote.is_valid
        trace_id = self.chosen.choose() if root or remote is None else remote.trace_id
        decision = self.sampler.should_sample(parent, trace_id, name, SpanKind.SERVER, attributes).decision
        if not decision.is_recording() and root:
            self.chosen.generate_trace_id()  # the choice is not used: forget it
        return decision.is_recording()

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
        with self.tracer.start_as_current_span(name):
            yield

    def record(self, name: str, start_ns: int, end_ns: int) -> None:
        """A child span of the current one that began and ended at these times."""
        self.tracer.start_span(name, start_time=start_ns).end(end_time=end_ns)

    def capture(self) -> object:
        """The current span's context."""
        return trace.get_current_span().get_span_context()

    @contextmanager
    def batch(self, waits: Sequence[tuple[object, int]]) -> Iterator[None]:
        """The `batch` span (in the trace of the request that opened the batch, linked to every request), current
        inside; each request's `batch wait`, from when it began waiting until now, linked to it."""
        requests = [request for request, _ in waits if isinstance(request, SpanContext)]
        opener = trace.set_span_in_context(NonRecordingSpan(requests[0]))
        span = self.tracer.start_span("batch", context=opener, links=[Link(request) for request in requests],
                                      attributes={"engine.batch_size": len(waits)})
        joined = [Link(span.get_span_context())]
        now = time_ns()
        for request, since in waits:
            if isinstance(request, SpanContext):
                self.tracer.start_span("batch wait", context=trace.set_span_in_context(NonRecordingSpan(request)),
                                       links=joined, start_time=since).end(end_time=now)
        with trace.use_span(span, end_on_exit=True):
            yield

    def ids(self) -> tuple[str, str] | None:
        """The current span's trace and span ids, in hex."""
        current = trace.get_current_span().get_span_context()
        if not current.is_valid:
            return None
        return f"{current.trace_id:032x}", f"{current.span_id:016x}"


def _carrier(span: SpanContext, arrived_ns: int) -> Carrier:
    """What a worker process needs to continue the trace."""
    return Carrier(f"00-{span.trace_id:032x}-{span.span_id:016x}-{int(span.trace_flags) & 0xff:02x}",
                   span.trace_state.to_header(), arrived_ns)
