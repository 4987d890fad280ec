"""Tracebacks of the user's code as the user knows it: their project's real paths, without engine's frames first.

A predictor runs from a temporary view of the project (symlinks, see engine.project.files), so Python reports its files
under that view; here they are shown under the project directory again. The frames that lead into the user's code
(engine's request pipeline, thread pools, importlib) are dropped unless the log level is debug.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import sysconfig
import traceback
from pathlib import Path
from types import TracebackType

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]  # sys.exc_info()

_views: dict[str, str] = {}  # "<view>/" → "<project root>/"
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/[^\s/'\"()]+(?:/[^\s/'\"()]+)+")  # /a/b... (two parts at least)
_ENGINE_DIR = f"{Path(__file__).resolve().parent}/"
_STDLIB = sysconfig.get_paths()["stdlib"]
_PLUMBING = ("<frozen importlib",
             *(f"{_STDLIB}/{name}" for name in ("concurrent/futures/", "asyncio/", "threading.py")))


def register_view(view: Path, project_root: Path) -> None:
    """Show files under `view` as the project's own from now on."""
    _views[f"{view}/"] = f"{project_root}/"


def real_paths(text: str) -> str:
    """`text` with every path in a view replaced by the project's path."""
    for view, root in _views.items():
        text = text.replace(view, root)
    return text


def public_text(text: str) -> str:
    """`text` fit for a client: paths in the project made relative to it, any other absolute path cut to its last
    part (a response never tells where engine, the project or its models are on the server)."""
    text = real_paths(text)
    for root in _views.values():
        text = text.replace(root, "")
    return _ABSOLUTE_PATH.sub(lambda path: "…/" + path.group(0).rsplit("/", 1)[-1], text)


def format_exception(error: BaseException, full: bool | None = None) -> str:
    """The traceback, starting at the user's first frame (unless `full`, which defaults to debug logging)."""
    if full is None:
        full = logging.getLogger("engine").isEnabledFor(logging.DEBUG)
    summary = traceback.TracebackException.from_exception(error)
    if not full:
        _trim(summary, set())
    return real_paths("".join(summary.format()))


def _trim(summary: traceback.TracebackException, seen: set[int]) -> None:
    """Drop the frames that lead into the user's code, in this exception and those chained to it."""
    if id(summary) in seen:
        return
    seen.add(id(summary))
    frames = list(summary.stack)
    first = next((index for index, frame in enumerate(frames) if not _leads_in(frame.filename)), None)
    if first:  # None: all of it is engine's (a bug of engine's own, shown whole)
        summary.stack = traceback.StackSummary.from_list(frames[first:])
    for chained in (summary.__cause__, summary.__context__):
        if chained is not None:
            _trim(chained, seen)


def _leads_in(filename: str) -> bool:
    """True for engine's own files and the standard library's machinery that calls the user's code."""
    return filename.startswith(_ENGINE_DIR) or filename.startswith(_PLUMBING)


class Formatter(logging.Formatter):
    """Log lines whose tracebacks show the user's paths and start at the user's code."""

    def formatException(self, exc_info: ExcInfo) -> str:  # noqa: N802 (logging's name)
        """The traceback of a logged exception, as format_exception shows it."""
        if exc_info[1] is None:  # log.exception() outside an except block
            return super().formatException(exc_info)
        return format_exception(exc_info[1]).rstrip("\n")


HANDLER_NAME = "engine"
LOG_FORMAT_ENV = "ENGINE_LOG_FORMAT"  # how worker processes learn the front's --log-format
LINE_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"  # engine.serving.accesslog writes its lines alike


def configure_logging(level: str, worker: str = "", log_format: str | None = None, capture: bool = False) -> None:
    """Log to stderr at `level` with the user-facing formatter (`worker`: a worker process's label, shown after the
    logger's name). `log_format` text or json (None: $ENGINE_LOG_FORMAT, else text); with json and `capture`, what
    is printed to sys.stdout and sys.stderr becomes log lines too (engine.logformat)."""
    from engine import logformat

    if log_format is None:
        log_format = os.environ.get(LOG_FORMAT_ENV, "").strip().lower() or "text"
    if log_format not in logformat.LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(logformat.LOG_FORMATS)}")
    handler = logging.StreamHandler(logformat.original_stream(sys.stderr))
    handler.set_name(HANDLER_NAME)
    if log_format == "json":
        logformat.json_logging(handler, worker)
    else:
        handler.setFormatter(Formatter(LINE_FORMAT.replace("%(name)s", f"%(name)s[{worker}]" if worker else
                                                           "%(name)s")))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if log_format == "json" and capture:
        logformat.capture_output()
