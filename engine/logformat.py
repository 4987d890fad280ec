"""`--log-format json`: every line engine writes, one JSON object (fields in docs/operations.md, "Observability: logs").

A line logged while a request is handled carries the request's id from `request_context`, which the request
pipeline sets, and, while the request is traced (engine.tracing), the current span's `trace_id` and `span_id`. In
json mode the predictor's `print` and standard error become log records too (capture_output), so that nothing it
writes breaks the stream of JSON lines.
"""
from __future__ import annotations

import atexit
import io
import json
import logging
import sys
import threading
import time
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Protocol, TextIO

import orjson

from engine import tracing
from engine.tracebacks import Formatter

LOG_FORMATS = ("text", "json")
MAX_LINE = 16 * 2**20  # a line without its end is let out at this size (bounds the memory a stray write can take)
# Fields a logging call may give (logging's `extra`), written when present, in this order.
FIELDS = ("request_id", "api", "model", "model_version", "trace_id", "span_id", "method", "path", "status",
          "outcome", "duration_ms", "via", "job_id", "batch_id")


class HasRequestId(Protocol):
    """A request being handled (engine.serving.backend.ApiRequest): its id is only read when a line is logged."""

    @property
    def request_id(self) -> str:
        """Its X-Request-ID."""


# (the request, its API's name): set by the pipeline for the rest of a request's task, and so its threads' work
request_context: ContextVar[tuple[HasRequestId, str] | None] = ContextVar("engine_request", default=None)


class JsonFormatter(Formatter):
    """One JSON object per record: time, level, logger, message, the request's fields, `traceback` when one was
    logged (message stays the one line the caller wrote), and `worker` in a worker process."""

    def __init__(self, worker: str = "") -> None:
        super().__init__()
        self.static = {"worker": worker} if worker else {}
        self._clock = (-1, "")  # (second, its text): one strftime a second

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry = self._head(record.created, record.levelname, record.name, clean(record.getMessage()))
        fields = record.__dict__
        for name in FIELDS:
            if name in fields:
                entry[name] = fields[name]
        self._context(entry)
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["traceback"] = clean(record.exc_text)
        if record.stack_info:
            entry["stack"] = clean(self.formatStack(record.stack_info))
        return dumps(entry)

    def line(self, created: float, level: str, logger: str, message: str, fields: dict[str, Any]) -> str:
        """A line as format() writes it, without a LogRecord (the access log's fast path)."""
        entry = self._head(created, level, logger, message)
        entry.update(fields)
        if request_context.get() is not None or tracing.carrier() is not None:
            self._context(entry)
        return dumps(entry)

    def _head(self, created: float, level: str, logger: str, message: str) -> dict[str, Any]:
        second = int(created)
        clock = self._clock
        if clock[0] != second:
            clock = self._clock = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        entry = {"time": f"{clock[1]}.{int((created - second) * 1000):03d}Z", "level": level, "logger": logger,
                 "message": message}
        if self.static:
            entry.update(self.static)
        return entry

    @staticmethod
    def _context(entry: dict[str, Any]) -> None:
        """The current request's and trace's fields, where the record did not give them."""
        request = request_context.get()
        if request is not None:
            if "request_id" not in entry:
                entry["request_id"] = request[0].request_id
            if "api" not in entry:
                entry["api"] = request[1]
        if "trace_id" not in entry:
            trace = tracing.ids()
            if trace is not None:
                entry["trace_id"], entry["span_id"] = trace


# The fallback for what orjson refuses or writes as non-ASCII: separators as orjson's, so that every line looks alike
_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, default=str, separators=(",", ":"))


def dumps(entry: dict[str, Any]) -> str:
    """The entry as JSON in ASCII (valid whatever the output's encoding), a value JSON has no type for shown as its
    str(). orjson writes it (a tenth of the standard library's time, which the access log feels); what orjson refuses
    (lone surrogates, integers over 64 bits, keys that are not strings) or writes as non-ASCII, the standard library
    does."""
    try:
        data = orjson.dumps(entry, default=str)
        if data.isascii():
            return data.decode()
    except orjson.JSONEncodeError:
        pass
    try:
        return _ENCODER.encode({key: clean(value) if isinstance(value, str) else value for key, value in entry.items()})
    except ValueError:  # NaN or an infinity (not JSON), or a value that contains itself
        return _ENCODER.encode({key: value if isinstance(value, str) else str(value) for key, value in entry.items()})


def clean(text: str) -> str:
    """`text` without lone surrogates (which are valid in a Python str but not in UTF-8, and which many JSON parsers
    refuse even escaped): each becomes its escape, written out (\\udcff)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class LineLogger(io.BufferedIOBase):
    """A binary stream whose every line becomes a log record (decoded as UTF-8, invalid bytes shown as \\xNN); each
    thread's unfinished line is its own, so lines of concurrent requests do not mix, and each is logged on the
    thread that ends it (with that thread's request)."""

    def __init__(self, logger: logging.Logger, level: int, original: TextIO) -> None:
        super().__init__()
        self.logger = logger
        self.level = level
        self.original = original
        self._partial: dict[int, bytearray] = {}
        self._lock = threading.Lock()
        self._inside = threading.local()

    @property
    def name(self) -> str:
        """The original stream's name (<stdout>, <stderr>)."""
        return str(getattr(self.original, "name", "<captured>"))

    def writable(self) -> bool:
        """Yes."""
        return True

    def write(self, data: Any) -> int:
        """Log each line `data` ends; keep what follows the last newline for later."""
        chunk = bytes(data)
        ident = threading.get_ident()
        with self._lock:
            pending = self._partial.pop(ident, None)
            if pending is not None:
                pending += chunk
            if b"\n" not in chunk and len(pending if pending is not None else chunk) < MAX_LINE:
                if pending is not None or chunk:
                    self._partial[ident] = pending if pending is not None else bytearray(chunk)
                return len(chunk)
            *lines, rest = (bytes(pending) if pending is not None else chunk).split(b"\n")
            if len(rest) >= MAX_LINE:
                lines.append(rest)
            elif rest:
                self._partial[ident] = bytearray(rest)
        for line in lines:
            self._emit(line)
        return len(chunk)

    def finish(self) -> None:
        """Log the unfinished lines of every thread."""
        with self._lock:
            partial, self._partial = self._partial, {}
        for line in partial.values():
            self._emit(bytes(line))

    def close(self) -> None:
        """Log the unfinished lines, and close."""
        self.finish()
        super().close()

    def isatty(self) -> bool:
        """No: what is written here is not shown as it is."""
        return False

    def fileno(self) -> int:
        """The original stream's (what writes to it directly, such as a child process, bypasses the logging)."""
        return self.original.fileno()

    def _emit(self, line: bytes) -> None:
        text = line.decode("utf-8", "backslashreplace")
        if getattr(self._inside, "yes", False):  # logging itself failed and says so here: no loop through it again
            try:
                self.original.write(dumps({"level": logging.getLevelName(self.level), "logger": self.logger.name,
                                           "message": clean(text)}) + "\n")
            except Exception:  # noqa: S110 (nowhere left to say it)
                pass
            return
        self._inside.yes = True
        try:
            self.logger.log(self.level, "%s", text)
        finally:
            self._inside.yes = False


class CapturedStream(io.TextIOWrapper):
    """sys.stdout or sys.stderr in json mode: a text stream over a LineLogger."""

    def __init__(self, logger: logging.Logger, level: int, original: TextIO) -> None:
        self.original = original
        self.lines = LineLogger(logger, level, original)
        super().__init__(self.lines, encoding="utf-8", errors="backslashreplace",
                         newline="\n", line_buffering=True, write_through=True)


def original_stream(stream: TextIO) -> TextIO:
    """The stream a CapturedStream replaced (or `stream` itself)."""
    return stream.original if isinstance(stream, CapturedStream) else stream


def capture_output(logger: str = "predictor") -> None:
    """Replace sys.stdout and sys.stderr: each line printed becomes a record of `logger`, INFO for standard output
    and WARNING for standard error."""
    log = logging.getLogger(logger)
    for name, level in (("stdout", logging.INFO), ("stderr", logging.WARNING)):
        current = getattr(sys, name)
        if isinstance(current, CapturedStream):
            continue
        captured = CapturedStream(log, level, current)
        setattr(sys, name, captured)
        # Registered after logging's own (at its import), so run before it: the unfinished lines still get out.
        atexit.register(_finish, captured)


def _finish(stream: CapturedStream) -> None:
    try:
        stream.flush()
        stream.lines.finish()
    except Exception:  # noqa: S110 (at exit: nowhere left to say it)
        pass


def log_uncaught(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    """sys.excepthook in json mode: an uncaught exception is one record with its traceback."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, tb)
        return
    logging.getLogger("engine").critical("uncaught %s", kind.__name__, exc_info=(kind, error, tb))


def log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    """threading.excepthook in json mode: the same, naming the thread."""
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    thread = args.thread.name if args.thread is not None else "?"
    logging.getLogger("engine").error("uncaught %s in thread %s", args.exc_type.__name__, thread,
                                      exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def json_logging(handler: logging.Handler, worker: str = "") -> None:
    """Make `handler` write JSON, and the uncaught exceptions and warnings of this process reach it as records."""
    handler.setFormatter(JsonFormatter(worker))
    sys.excepthook = log_uncaught
    threading.excepthook = log_uncaught_in_thread
    logging.captureWarnings(True)
