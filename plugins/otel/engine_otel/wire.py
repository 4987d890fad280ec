"""What serving processes send engine-otel's exporter process over its Unix socket: length-prefixed messages, each
one marshal dump.

A finished span travels as a record, a plain tuple that is cheap to make on a serving thread:

    (trace_id, span_id, parent_span_id (0: none), parent_is_remote, name, start_ns, end_ns, extra)

`extra` is None for an INTERNAL span with nothing more to say (most of engine's), else a dict of what the span has:
`kind` (SpanKind's value), `attributes`, `status` ((code, description)), `events` (((name, time_ns, attributes),
...)), `links` (((trace_id, span_id, is_remote, tracestate header, attributes), ...)), `trace_state` (a header) and
`scope` ((name, version, schema_url); absent: engine's own). Every span sent is sampled.

A connection's messages: (HELLO, pid, resource attributes, schema_url) first, then (SPANS, [record, ...]) and
(FLUSH, final), which the exporter answers with DONE once all it has received is exported (final: the process that
started it is stopping, and so does the exporter).
"""
from __future__ import annotations

import marshal
import socket
import struct
from typing import Any, BinaryIO

HELLO, SPANS, FLUSH = 0, 1, 2
DONE = b"done"
ADDRESS_ENV = "ENGINE_OTEL_EXPORTER"  # "PID:PATH": the exporter process PID's children send to (its socket's path)
_LENGTH = struct.Struct("!I")

Record = tuple[int, int, int, bool, str, int, int, "dict[str, Any] | None"]


def send(connection: socket.socket, message: tuple[Any, ...]) -> None:
    """Send one message (blocking until the socket has taken all of it)."""
    data = marshal.dumps(message)
    connection.sendall(_LENGTH.pack(len(data)) + data)


def receive(stream: BinaryIO) -> tuple[Any, ...] | None:
    """The next message from a connection's stream; None when it has ended (a message cut short included)."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    message: tuple[Any, ...] = marshal.loads(data)
    return message
