"""The access log: one line per request on the `engine.access` logger, cheap enough to stay on by default.

Through `logging`, a line costs a LogRecord, a look for the caller, a lock and a write of its own: about a sixth of
a fast server's whole request. So when engine's own handler is the one that would print the line (the usual case),
the line is formatted here exactly as that handler would (text, or JSON with the line's fields: --log-format), and
the lines of one event-loop iteration are written together. When logging is configured otherwise (other handlers,
filters, levels), lines go through `logging`, their fields as the record's attributes (logging's `extra`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TextIO, cast

from engine.logformat import JsonFormatter
from engine.tracebacks import HANDLER_NAME, LINE_FORMAT

log = logging.getLogger("engine.access")
_PARENT = logging.getLogger("engine")


class AccessLog:
    """Writes access-log lines; one per front process."""

    def __init__(self) -> None:
        self._pending: list[str] = []
        self._handler: logging.StreamHandler[TextIO] | None = None  # the one the pending lines are for
        self._second = -1
        self._stamp = ""

    def request(self, api: str, method: str, path: str, outcome: object, seconds: float, request_id: str,
                via: str = "") -> None:
        """Log one request's line (`outcome`: its status, or what became of it; `via`: the TrafficSplitter it came
        through, as Routed.shown says it) at INFO on engine.access."""
        if not log.isEnabledFor(logging.INFO):
            return
        message = f"{api} {method} {path} {outcome} {seconds * 1e3:.1f}ms request_id={request_id}"
        if via:
            message += f" {via}"
        # the lines of one event-loop iteration all go the way the first went
        handler = self._handler if self._pending else _engines_handler()
        if handler is not None and not isinstance(handler.formatter, JsonFormatter):
            now = time.time()
            second = int(now)
            if second != self._second:
                self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._pending.append(f"{self._stamp},{int((now - second) * 1000):03d} engine.access INFO {message}\n")
        else:
            fields: dict[str, object] = {"request_id": request_id, "api": api, "method": method, "path": path,
                                         "status" if type(outcome) is int else "outcome": outcome,
                                         "duration_ms": round(seconds * 1e3, 3)}
            if via:
                fields["via"] = via
            if handler is None:  # through logging, with the fields for whichever handler wants them
                log.info("%s", message, extra=fields)
                return
            formatter: JsonFormatter = handler.formatter  # type: ignore[assignment]  # checked above
            self._pending.append(formatter.line(time.time(), "INFO", "engine.access", message, fields) + "\n")
        if len(self._pending) == 1:
            self._handler = handler
            try:
                asyncio.get_running_loop().call_soon(self._flush, handler)
            except RuntimeError:  # not on an event loop: now
                self._flush(handler)

    def _flush(self, handler: logging.StreamHandler[TextIO]) -> None:
        lines, self._pending = self._pending, []
        handler.acquire()
        try:
            stream = handler.stream
            stream.write("".join(lines))
            stream.flush()  # as handler.flush() would, under the lock already held
        except Exception:  # as logging does: a broken stream must not break serving
            handler.handleError(logging.makeLogRecord({"msg": "access log", "levelno": logging.INFO}))
        finally:
            handler.release()


access_log = AccessLog()


def _engines_handler() -> logging.StreamHandler[TextIO] | None:
    """engine's stderr handler when it alone would print an engine.access line as it is, else None."""
    root = logging.root
    if len(root.handlers) != 1 or log.handlers or log.filters or _PARENT.handlers or _PARENT.filters or root.filters:
        return None
    handler = root.handlers[0]
    if handler.name != HANDLER_NAME or handler.filters or handler.level > logging.INFO:
        return None
    if not log.propagate or not (isinstance(handler.formatter, JsonFormatter) or
                                 (handler.formatter is not None and handler.formatter._fmt == LINE_FORMAT)):
        return None
    return cast("logging.StreamHandler[TextIO]", handler)  # the handler engine.tracebacks names HANDLER_NAME
