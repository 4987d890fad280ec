"""The serving side of engine-otel's export: a serving process's finished spans, as records (engine_otel.wire),
queue in its Outbox, which a background thread hands in batches to the exporter process over a Unix socket. The
first serving process starts the exporter process (ExporterProcess) and names its socket in ENGINE_OTEL_EXPORTER for
its worker processes, which send to the same one.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections import deque
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import StatusCode

from engine import PluginError
from engine_otel.wire import ADDRESS_ENV, DONE, FLUSH, HELLO, SPANS, Record, send

log = logging.getLogger("engine_otel")

QUEUE_LIMIT = 65_536  # spans a serving process keeps for the exporter at most; more are dropped (one warning)
HOP_S = 0.1  # how often the outbox hands its spans over, at most (OTEL_BSP_SCHEDULE_DELAY when that is shorter)
EXIT_S = 5.0  # how long a stopping server waits for its exporter process to exit once it has exported everything


class ExporterProcess:
    """The exporter process this serving process started (python -m engine_otel.exporter), listening on `path`.
    A thread of this process starts it, forwards its log lines to this process's logging, and says when it exits
    unasked (it is the thread the exporter is bound to by PR_SET_PDEATHSIG, so it lives as long as the process)."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="engine-otel-")
        self.path = os.path.join(self.folder, "spans.sock")
        self.stopping = False
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)
        except OSError as error:
            listener.close()
            shutil.rmtree(self.folder, ignore_errors=True)
            raise PluginError(f"engine-otel: cannot listen on {self.path} for its exporter process: {error} (the "
                              f"folder is TMPDIR's; a Unix socket's path is at most 107 bytes long)") from None
        listener.listen(128)  # connections wait here until the exporter accepts them: no one waits for it to start
        started: queue.Queue[subprocess.Popen[bytes] | OSError] = queue.Queue(1)
        self._thread = threading.Thread(target=self._run, args=(listener, started), name="engine-otel exporter",
                                        daemon=True)
        self._thread.start()
        process = started.get()
        if isinstance(process, OSError):
            shutil.rmtree(self.folder, ignore_errors=True)
            raise PluginError(f"engine-otel: could not start its exporter process: {process}")
        self.process = process

    def _run(self, listener: socket.socket, started: queue.Queue[subprocess.Popen[bytes] | OSError]) -> None:
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "engine_otel.exporter", f"--listen-fd={listener.fileno()}",
                 f"--parent={os.getpid()}", f"--log-level={logging.getLogger().getEffectiveLevel()}"],
                pass_fds=(listener.fileno(),), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as error:
            started.put(error)
            return
        finally:
            listener.close()  # the exporter's now: once it is gone, connecting fails at once
        started.put(process)
        assert process.stderr is not None
        for line in process.stderr:
            relog(line)
        code = process.wait()
        if not self.stopping:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            log.warning("engine-otel: its exporter process (pid %d) %s: the spans of this server are dropped from "
                        "now on (requests are served and answer their traceparent as before)", process.pid, how)

    def wait(self) -> None:
        """Wait for the exporter to exit (it has been asked to), and for its last log lines."""
        try:
            self.process.wait(EXIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._thread.join(EXIT_S)
        shutil.rmtree(self.folder, ignore_errors=True)


def relog(line: bytes) -> None:
    """A line from the exporter process's standard error, logged here: its log records come as JSON objects (level,
    logger, message); anything else (a fatal error of the interpreter) as a warning."""
    try:
        entry = json.loads(line)
        level, logger, message = int(entry["level"]), str(entry["logger"]), str(entry["message"])
    except (ValueError, KeyError, TypeError):
        level, logger, message = logging.WARNING, "engine_otel.exporter", line.decode(errors="replace").rstrip()
    logging.getLogger(logger).log(level, "%s", message)


class Outbox:
    """A serving process's finished spans on their way to the exporter process at `address` (None: nowhere; they are
    dropped): serving threads append records to `add`; a background thread sends what has queued every `interval`
    seconds, as one message. At exit (or a flush) it sends the rest and waits until the exporter has exported it."""

    def __init__(self, address: str | None, hello: tuple[Any, ...], interval: float, timeout: float,
                 exporter: ExporterProcess | None = None) -> None:
        self.queue: deque[Record] = deque(maxlen=QUEUE_LIMIT if address else 0)
        self.add = self.queue.append  # what the tracer calls: a C method, bounded (the oldest go first)
        self.interval = interval
        self.timeout = timeout
        self.exporter = exporter
        self._lock = threading.Lock()  # one sender at a time: the thread, a flush
        self._connection: socket.socket | None = None
        self._stop = threading.Event()
        self._closed = False
        self._warned_full = False
        if address is None:
            return
        try:
            self._connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._connection.connect(address)
            send(self._connection, hello)
        except OSError as error:
            self._lost(error)
        self.thread = threading.Thread(target=self._run, name="engine-otel outbox", daemon=True)
        self.thread.start()
        atexit.register(self.close)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                self._send_queued()

    def _send_queued(self) -> bool:
        """Send the queued records (with the lock held); False when the exporter is gone."""
        records = self.queue
        count = len(records)
        if count == QUEUE_LIMIT and not self._warned_full:
            self._warned_full = True
            log.warning("engine-otel: more than %d spans waited for the exporter process: the oldest were dropped",
                        QUEUE_LIMIT)
        taken = [records.popleft() for _ in range(count)]
        return not taken or self._send((SPANS, taken))

    def _send(self, message: tuple[Any, ...]) -> bool:
        if self._connection is None:
            return False
        try:
            send(self._connection, message)
            return True
        except OSError as error:
            self._lost(error)
            return False
        except ValueError as error:  # marshal's: an attribute value of a predictor's that is no OpenTelemetry type
            log.warning("engine-otel: %d spans were dropped: %s", len(message[1]) if message[0] == SPANS else 0,
                        error)
            return True

    def _lost(self, error: OSError) -> None:
        """The exporter is gone: spans are dropped from now on (the process that started it has said so)."""
        log.debug("engine-otel: the exporter process cannot be reached (%s): spans are dropped", error)
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def flush(self, final: bool = False) -> bool:
        """Send what has queued and wait until the exporter has exported it (final: then it exits); False when it
        could not be done (the exporter gone, or longer than the timeout)."""
        with self._lock:
            if not self._send_queued() or not self._send((FLUSH, final)):
                return False
            assert self._connection is not None
            try:
                self._connection.settimeout(self.timeout)
                answer = self._connection.recv(len(DONE), socket.MSG_WAITALL)
                self._connection.settimeout(None)
            except OSError as error:
                self._lost(error)
                return False
            return answer == DONE

    def close(self) -> None:
        """At exit: hand over the last spans and wait until they are exported; the process that started the exporter
        then waits for it to exit."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self.thread.join()
        if self.exporter is not None:
            self.exporter.stopping = True
        self.flush(final=self.exporter is not None)
        if self._connection is not None:
            self._connection.close()
        if self.exporter is not None:
            self.exporter.wait()


def join_or_start(resource_attributes: dict[str, Any], schema_url: str, interval: float,
                  timeout: float) -> Outbox:
    """This process's outbox: to the exporter its parent started (ENGINE_OTEL_EXPORTER names the parent), else to
    one it starts now (and names for its own worker processes)."""
    owner, _, path = os.environ.get(ADDRESS_ENV, "").partition(":")
    hello = (HELLO, os.getpid(), resource_attributes, schema_url)
    if owner == str(os.getppid()) and path:
        return Outbox(path, hello, interval, timeout)
    exporter = ExporterProcess()
    os.environ[ADDRESS_ENV] = f"{os.getpid()}:{exporter.path}"
    return Outbox(exporter.path, hello, interval, timeout, exporter)


class Forwarding(SpanProcessor):
    """The span processor of engine-otel's provider (the global one, a predictor's own spans'): each sampled span
    that ends goes to the outbox as a record, like engine's."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        parent = span.parent
        scope = span.instrumentation_scope
        extra: dict[str, Any] = {"kind": span.kind.value}
        if scope is not None:
            extra["scope"] = (scope.name, scope.version, scope.schema_url)
        if span.attributes:
            extra["attributes"] = dict(span.attributes)
        if span.status.status_code is not StatusCode.UNSET:
            extra["status"] = (span.status.status_code.value, span.status.description)
        if span.events:
            extra["events"] = tuple((event.name, event.timestamp, dict(event.attributes or {}))
                                    for event in span.events)
        if span.links:
            extra["links"] = tuple((link.context.trace_id, link.context.span_id, link.context.is_remote,
                                    link.context.trace_state.to_header(), dict(link.attributes or {}))
                                   for link in span.links)
        if context.trace_state:
            extra["trace_state"] = context.trace_state.to_header()
        self.outbox.add((context.trace_id, context.span_id, parent.span_id if parent is not None else 0,
                         parent is not None and parent.is_remote, span.name, span.start_time or 0,
                         span.end_time or 0, extra))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.outbox.flush()
