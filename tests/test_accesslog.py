"""The access log's two ways to a line: written directly when engine's handler alone prints it, through `logging`
otherwise; both give the same line."""
from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re

import pytest

from engine.serving.accesslog import AccessLog
from engine.tracebacks import configure_logging

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} engine.access INFO api POST /api 200 1.5ms request_id=r1$")


@pytest.fixture
def engines_logging():
    """engine's logging configuration, writing to a StringIO."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("info")
    stream = root.handlers[0].stream = io.StringIO()
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])  # setLevel: it also clears the loggers' cached isEnabledFor answers


@contextlib.contextmanager
def alone(stream: io.StringIO):
    """Only engine's handler on the root logger (pytest adds its capturing handlers during each test)."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [handler for handler in saved if getattr(handler, "stream", None) is stream]
    try:
        yield
    finally:
        root.handlers[:] = saved


def test_lines_of_one_loop_iteration_are_written_together_as_logging_would(engines_logging):
    async def log_three() -> str:
        access = AccessLog()
        for _ in range(3):
            access.request("api", "POST", "/api", 200, 0.0015, "r1")
        written_before_the_loop_turns = engines_logging.getvalue()
        await asyncio.sleep(0)
        return written_before_the_loop_turns

    with alone(engines_logging):
        assert asyncio.run(log_three()) == ""
    lines = engines_logging.getvalue().splitlines()
    assert len(lines) == 3 and all(LINE.match(line) for line in lines)
    logging.getLogger("engine.access").info("api POST /api 200 1.5ms request_id=r1")  # the same line, by logging
    assert LINE.match(engines_logging.getvalue().splitlines()[-1])


def test_outside_an_event_loop_a_line_is_written_at_once(engines_logging):
    with alone(engines_logging):
        AccessLog().request("api", "POST", "/api", 200, 0.0015, "r1")
    assert LINE.match(engines_logging.getvalue().strip())


def test_other_handlers_get_the_line_through_logging(engines_logging, caplog):
    with caplog.at_level(logging.INFO, logger="engine.access"):
        AccessLog().request("api", "POST", "/api", "client disconnected", 0.0015, "r1")
    assert [record.getMessage() for record in caplog.records] == [
        "api POST /api client disconnected 1.5ms request_id=r1"]


def test_nothing_below_info(engines_logging):
    logging.getLogger().setLevel(logging.WARNING)
    with alone(engines_logging):
        AccessLog().request("api", "POST", "/api", 200, 0.0015, "r1")
    assert engines_logging.getvalue() == ""
