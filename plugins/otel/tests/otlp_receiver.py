"""A real OTLP receiver for the tests: ExportTraceServiceRequest messages (the protocol's own protobuf) over OTLP/HTTP
(POST /v1/traces, gzip or deflate as the exporter chooses) and, where grpcio is installed, over gRPC; the spans it has
received, and a wait for the ones a test expects that wakes on each export.

Run as a script (`python otlp_receiver.py PORT FILE`) it serves OTLP/HTTP on 127.0.0.1:PORT and appends each span to
FILE as a JSON line (read back with spans_in), for servers the test process cannot reach (a network namespace)."""
from __future__ import annotations

import dataclasses
import json
import signal
import sys
import threading
import zlib
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status

T = TypeVar("T")
TRACES_PATH = "/v1/traces"
PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class Span:
    """One received span; ids in lowercase hex ("" for a root span's parent), kind and status as their enum names."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: str  # SERVER, INTERNAL, ...
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace_id, span_id) of each linked span
    events: tuple[tuple[str, dict[str, Any]], ...]  # (name, attributes) of each event, such as "exception"
    resource: dict[str, Any]  # service.name, process.pid, ...
    scope: str  # the instrumentation scope's name: "engine" for engine's own spans
    start_ns: int
    end_ns: int
    status: str  # UNSET, OK, ERROR

    @property
    def pid(self) -> int:
        """The process that made the span (engine-otel's resource says it)."""
        return int(self.resource["process.pid"])

    @property
    def service(self) -> str:
        """The resource's service.name."""
        return str(self.resource.get("service.name", ""))


def value(any_value: AnyValue) -> Any:
    """An OTLP attribute value as Python: str, bool, int, float, bytes, list or dict."""
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(item) for item in any_value.array_value.values]
    if kind == "kvlist_value":
        return attributes(any_value.kvlist_value.values)
    return getattr(any_value, kind) if kind else None


def attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    """OTLP key-values as a dict."""
    return {pair.key: value(pair.value) for pair in pairs}


def spans_of(request: ExportTraceServiceRequest) -> list[Span]:
    """Every span an export holds, with its resource's and scope's names."""
    found = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found.append(Span(
                    name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(), kind=ProtoSpan.SpanKind.Name(span.kind).removeprefix(
                        "SPAN_KIND_"), attributes=attributes(span.attributes),
                    links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                    events=tuple((event.name, attributes(event.attributes)) for event in span.events),
                    resource=resource, scope=scope_spans.scope.name, start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    status=Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_")))
    return found


class Collected:
    """The spans received so far, and a condition that each export notifies."""

    def __init__(self) -> None:
        self._spans: list[Span] = []
        self._changed = threading.Condition()
        self.exports = 0  # export requests received

    def add(self, spans: list[Span]) -> None:
        with self._changed:
            self._spans.extend(spans)
            self.exports += 1
            self._changed.notify_all()

    @property
    def spans(self) -> list[Span]:
        """A copy of every span received so far."""
        with self._changed:
            return list(self._spans)

    def wait_for_spans(self, predicate: Callable[[list[Span]], T], timeout: float = 20) -> T:
        """Wait until predicate(every span received) is true (woken by each export) and return what it returned;
        fail the test, listing what came, after `timeout` seconds."""
        with self._changed:
            result = self._changed.wait_for(lambda: predicate(list(self._spans)), timeout)
            if not result:
                shown = "\n".join(f"  {span.name} {span.trace_id}/{span.span_id} <- {span.parent_span_id or '-'} "
                                  f"pid {span.resource.get('process.pid')}" for span in self._spans)
                raise AssertionError(f"the spans expected never came ({len(self._spans)} received):\n{shown}")
            return result

    def trace(self, trace_id: str, names: Iterable[str], timeout: float = 20) -> dict[str, Span]:
        """Wait until the trace holds a span of each name; the trace's spans by name (each name once)."""
        wanted = set(names)

        def complete(spans: list[Span]) -> dict[str, Span] | None:
            found = {span.name: span for span in spans if span.trace_id == trace_id}
            return found if wanted <= found.keys() else None
        return self.wait_for_spans(complete, timeout)


class _Handler(BaseHTTPRequestHandler):
    server: HttpReceiver

    def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
        if self.path != TRACES_PATH:
            self._answer(404, b"only /v1/traces is received here", "text/plain")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        encoding = self.headers.get("Content-Encoding", "").lower()
        try:
            if encoding == "gzip":
                body = zlib.decompress(body, zlib.MAX_WBITS | 16)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding not in ("", "identity"):
                raise ValueError(f"Content-Encoding {encoding} is not received here")
            if self.headers.get("Content-Type", "").split(";")[0].strip() != PROTOBUF:
                raise ValueError(f"Content-Type {self.headers.get('Content-Type')} is not {PROTOBUF}")
            request = ExportTraceServiceRequest.FromString(body)
        except (DecodeError, ValueError, zlib.error) as error:
            self.server.errors.append(str(error))
            self._answer(400, str(error).encode(), "text/plain")
            return
        self.server.collected.add(spans_of(request))
        self.server.encodings.add(encoding or "identity")
        self._answer(200, ExportTraceServiceResponse().SerializeToString(), PROTOBUF)

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        pass  # quiet: pytest shows the test's own output


class HttpReceiver(ThreadingHTTPServer):
    """OTLP/HTTP on 127.0.0.1 (a free port unless given), in a thread of its own until close()."""

    daemon_threads = True

    def __init__(self, port: int = 0, collected: Collected | None = None) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.collected = collected or Collected()
        self.errors: list[str] = []  # why exports were refused (400)
        self.encodings: set[str] = set()  # the Content-Encodings exports came with
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"  # OTEL_EXPORTER_OTLP_ENDPOINT
        self._thread = threading.Thread(target=self.serve_forever, name="otlp-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()


def grpc_available() -> bool:
    """True when engine-otel can export over gRPC here (its optional exporter is installed)."""
    try:
        import opentelemetry.exporter.otlp.proto.grpc.trace_exporter  # noqa: F401
    except ImportError:
        return False
    return True


class GrpcReceiver:
    """OTLP over gRPC (TraceService/Export) on 127.0.0.1, a free port, until close()."""

    def __init__(self, collected: Collected | None = None) -> None:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as service

        self.collected = collected or Collected()
        receiver = self

        class TraceService(service.TraceServiceServicer):  # type: ignore[misc]
            def Export(self, request: ExportTraceServiceRequest, context: Any) -> ExportTraceServiceResponse:  # noqa: N802
                receiver.collected.add(spans_of(request))
                return ExportTraceServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        service.add_TraceServiceServicer_to_server(TraceService(), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{port}"
        self._server.start()

    def close(self) -> None:
        self._server.stop(grace=None)


def spans_in(path: Path) -> list[Span]:
    """The spans a receiver run as a script has written to `path` so far."""
    if not path.exists():
        return []
    return [Span(**{**entry, "links": tuple(map(tuple, entry["links"])), "events": tuple(map(tuple, entry["events"]))})
            for entry in map(json.loads, path.read_text().splitlines())]


class _FileCollected(Collected):
    """Each span also appended to a file, as one JSON line."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def add(self, spans: list[Span]) -> None:
        with open(self.path, "a") as file:
            file.writelines(json.dumps(dataclasses.asdict(span)) + "\n" for span in spans)
        super().add(spans)


def main(port: int, path: Path) -> None:
    receiver = HttpReceiver(port, _FileCollected(path))
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    print(f"receiving OTLP/HTTP at {receiver.endpoint}", flush=True)
    stopped.wait()
    receiver.close()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
