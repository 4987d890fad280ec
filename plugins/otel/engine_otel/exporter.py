"""engine-otel's exporter process: `python -m engine_otel.exporter`, started by the first serving process of a host
(engine_otel.outbox.ExporterProcess). It takes the records (engine_otel.wire) of every serving process that connects
to its socket, turns them into the SDK's ReadableSpans (each process's resource its own) and hands them to the span
processors the OTEL_* variables configure (BatchSpanProcessor and the exporters OTEL_TRACES_EXPORTER names), as a
serving process's SDK would. It dies with the process that started it, and exits when that one, stopping, asks.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from engine import die_with
from engine_otel.provider import HashedOnce, engine_scope, exporters
from engine_otel.wire import DONE, FLUSH, HELLO, SPANS, Record, receive

SAMPLED = TraceFlags(TraceFlags.SAMPLED)
UNSET = Status(StatusCode.UNSET)
KINDS = {kind.value: kind for kind in SpanKind}
STATUS_CODES = {code.value: code for code in StatusCode}
OTHERS_S = 10.0  # how long the last flush waits for the other serving processes' connections to end

log = logging.getLogger("engine_otel.exporter")


class Spans:
    """Records made ReadableSpans, to the processors."""

    def __init__(self, processors: Sequence[SpanProcessor]) -> None:
        self.processors = list(processors)
        self.engine = engine_scope()
        self.scopes: dict[tuple[str, str | None, str | None], InstrumentationScope] = {}
        self.states: dict[str, TraceState] = {"": TraceState()}

    def take(self, records: list[Record], resource: Resource) -> None:
        """Hand the spans of `records` (from a process of this `resource`) to every processor."""
        processors = self.processors
        engine = self.engine
        empty = self.states[""]
        for trace_id, span_id, parent_id, remote, name, start, end, extra in records:
            if extra is None:
                span = ReadableSpan(name=name, context=SpanContext(trace_id, span_id, False, SAMPLED, empty),
                                    parent=SpanContext(trace_id, parent_id, remote, SAMPLED, empty) if parent_id
                                    else None, resource=resource, start_time=start, end_time=end,
                                    instrumentation_scope=engine)
            else:
                span = self._span(trace_id, span_id, parent_id, remote, name, start, end, extra, resource)
            for processor in processors:
                processor.on_end(span)

    def _span(self, trace_id: int, span_id: int, parent_id: int, remote: bool, name: str, start: int, end: int,
              extra: dict[str, Any], resource: Resource) -> ReadableSpan:
        state = self._state(extra.get("trace_state", ""))
        status = extra.get("status")
        scope = extra.get("scope")
        return ReadableSpan(
            name=name, context=SpanContext(trace_id, span_id, False, SAMPLED, state),
            parent=SpanContext(trace_id, parent_id, remote, SAMPLED, state) if parent_id else None,
            resource=resource, attributes=extra.get("attributes"),
            events=[Event(event_name, attributes, timestamp) for event_name, timestamp, attributes
                    in extra.get("events", ())],
            links=[Link(SpanContext(link_trace, link_span, link_remote, SAMPLED, self._state(link_state)),
                        attributes or None) for link_trace, link_span, link_remote, link_state, attributes
                   in extra.get("links", ())],
            kind=KINDS[extra.get("kind", 0)], status=Status(STATUS_CODES[status[0]], status[1]) if status else UNSET,
            start_time=start, end_time=end,
            instrumentation_scope=self.engine if scope is None else self._scope(scope))

    def _state(self, header: str) -> TraceState:
        found = self.states.get(header)
        if found is None:
            found = self.states[header] = TraceState.from_header([header])
        return found

    def _scope(self, scope: tuple[str, str | None, str | None]) -> InstrumentationScope:
        found = self.scopes.get(scope)
        if found is None:
            found = self.scopes[scope] = InstrumentationScope(*scope)
        return found


class Exporter:
    """Serves the connections of the serving processes until the one that started it says it is stopping (or goes)."""

    def __init__(self, spans: Spans, parent: int) -> None:
        self.spans = spans
        self.parent = parent
        self.finished = threading.Event()
        self.lock = threading.Lock()  # the connection threads, for the last flush to wait on
        self.others: list[threading.Thread] = []

    def accept(self, listener: socket.socket) -> None:
        while True:
            connection, _ = listener.accept()
            thread = threading.Thread(target=self.serve, args=(connection,), daemon=True)
            with self.lock:
                self.others.append(thread)
            thread.start()

    def serve(self, connection: socket.socket) -> None:
        """One serving process's messages, in order."""
        stream = connection.makefile("rb")
        hello = receive(stream)
        if hello is None or hello[0] != HELLO:
            connection.close()
            return
        _, pid, attributes, schema_url = hello
        resource = HashedOnce(attributes, schema_url)
        owner = pid == self.parent
        if owner:
            with self.lock:
                self.others.remove(threading.current_thread())
        while (message := receive(stream)) is not None:
            if message[0] == SPANS:
                try:
                    self.spans.take(message[1], resource)
                except Exception:  # a span the SDK refuses: the others of the message are lost, not the connection
                    log.exception("engine-otel: spans of process %d could not be exported", pid)
            elif message[0] == FLUSH:
                if message[1] and owner:
                    break
                for processor in self.spans.processors:
                    processor.force_flush()
                connection.sendall(DONE)
        if owner:  # stopping, or gone (then nobody reads the answer)
            self.finish(connection)
        connection.close()

    def finish(self, connection: socket.socket) -> None:
        """The last flush: once the other serving processes' connections have ended (they have exited), export what
        is left, answer, and end."""
        deadline = time.monotonic() + OTHERS_S
        with self.lock:
            others = list(self.others)
        for thread in others:
            thread.join(max(0.0, deadline - time.monotonic()))
        for processor in self.spans.processors:
            processor.shutdown()
        try:
            connection.sendall(DONE)
        except OSError:
            pass
        self.finished.set()


class ToParent(logging.Handler):
    """Log records as JSON objects on standard error, which the process that started this one logs as its own."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(json.dumps({"level": record.levelno, "logger": record.name,
                                         "message": self.format(record)}) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 (logging's own rule: a handler never raises)
            self.handleError(record)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine_otel.exporter")
    parser.add_argument("--listen-fd", type=int, required=True, help="the listening Unix socket, inherited")
    parser.add_argument("--parent", type=int, required=True, help="the serving process that started this one")
    parser.add_argument("--log-level", type=int, default=logging.WARNING, help="the parent's, as a number")
    args = parser.parse_args(argv)
    die_with(args.parent)
    # signals for the server (Ctrl+C, a SIGTERM to its process group): this process ends when its parent says so
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    root = logging.getLogger()
    root.handlers[:] = [ToParent()]
    root.setLevel(args.log_level)
    listener = socket.socket(fileno=args.listen_fd)
    try:
        processors = [BatchSpanProcessor(exporter) for exporter in exporters()]
    except Exception:
        log.exception("engine-otel: the exporter process could not set up its exporters")
        return 1
    exporter = Exporter(Spans(processors), args.parent)
    threading.Thread(target=exporter.accept, args=(listener,), daemon=True).start()
    exporter.finished.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
