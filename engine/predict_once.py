"""`engine predict`: one prediction in this process, without HTTP or a port.

    engine predict [PROJECT_DIR] [-f CONFIG] [--api NAME] [-d DATA] [--content-type TYPE] [-i] [--cpu]
                   [-H 'Name: value']... [--query NAME=VALUE]...

The request goes through the API's own Pipeline (engine.serving.pipeline), as `engine serve` runs an API in one
process: payload parsing by Content-Type, predict, response encoding, then post_predict, waited for before exiting.
DATA is inline (application/json unless --content-type says otherwise), @FILE (its type from its extension) or `-`
(standard input); without -d, the project's sample.json.

Standard output gets the encoded body and nothing else (the predictor's print() goes to standard error): bytes as
they are, streamed chunks as they come, and a final newline after a text body (text/*, JSON) that lacks one. --include
writes `HTTP/1.1 <status> <reason>` and the headers before it, as `curl -i` does (lines end with \\n). Exit status:
0 for a status below 400; 1 for 4xx and 5xx (the body goes to standard error, after the traceback of a predictor's
exception, logged from the user's code), for user code that failed after the response began (a stream's generator,
post_predict: logged too), and for a start-up error (one paragraph, `error: ...`).
"""
from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlencode

from starlette.responses import Response

from engine import plugins, tracebacks
from engine.asgi import http_scope, play
from engine.errors import ConfigError, EngineError
from engine.openapi import SAMPLE_FILE
from engine.project.config import read_config
from engine.project.files import enter_view, remove_view
from engine.project.loading import LoadedProject, load_project
from engine.project.validate import find_config
from engine.serving.admission import ensure_request_id
from engine.serving.backend import ApiRequest
from engine.serving.eventloop import run_event_loop
from engine.serving.metrics import Metrics
from engine.serving.pipeline import Pipeline
from engine.settings import ServeSettings

INLINE_TYPE = "application/json"  # of inline and standard-input DATA
FILE_TYPES = {".json": "application/json", ".txt": "text/plain", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
              ".png": "image/png", ".gif": "image/gif", ".bmp": "image/bmp", ".webp": "image/webp",
              ".tif": "image/tiff", ".tiff": "image/tiff"}
OTHER_FILE_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class PredictOptions:
    """What `engine predict` was given."""

    project_dir: str = "."
    config_file: str | None = None
    api: str | None = None
    data: str | None = None  # inline, @FILE or -; None: the project's sample.json
    content_type: str | None = None
    include: bool = False
    headers: tuple[str, ...] = ()  # 'Name: value' each
    query: tuple[str, ...] = ()  # 'name=value' each


def predict_once(options: PredictOptions, settings: ServeSettings | None = None) -> int:
    """Make the prediction and write its answer; the exit status (EngineError, one paragraph, for a start-up
    problem)."""
    settings = settings or ServeSettings.load()
    pm = plugins.make_plugin_manager()
    name = api_name(options, pm, settings.cpu)
    loaded = load_project(options.project_dir, options.config_file, pm=pm, cpu=settings.cpu, apis=[name])
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    request = _request(options, loaded)
    out, err = sys.stdout.buffer, sys.stderr.buffer
    api = loaded.apis[0]
    pipeline = Pipeline(api, pm, Metrics(), settings.model_poll_interval)
    view, here = loaded.project.create_view(), os.getcwd()
    try:
        os.environ.update(loaded.environment)
        enter_view(view, [api.predictor.python_path or ""])
        with contextlib.redirect_stdout(sys.stderr), _ErrorsLogged() as errors:
            status = run_event_loop(_predict(pipeline, view, loaded, request, options.include, out, err, errors))
    except BrokenPipeError:  # the output's reader has left (`| head`): stopped there, as for a client that leaves
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())  # so that nothing is flushed into it at exit
        return 1
    finally:
        os.chdir(here)
        remove_view(view)
    return 1 if status >= 400 or errors.count else 0


def api_name(options: PredictOptions, pm: plugins.PluginManager, cpu: bool) -> str:
    """The RealtimeAPI to predict with: --api, or the configuration file's only one; ConfigError otherwise."""
    try:
        config_file = find_config(options.project_dir, options.config_file)
        config = read_config(config_file)
    except ConfigError:
        load_project(options.project_dir, options.config_file, pm=pm, cpu=cpu)  # says it as serve does, with hints
        raise
    names = [api.name for api in config.apis]
    if options.api in names or (options.api is None and len(names) == 1):
        return options.api or names[0]
    note = "engine predict predicts with a RealtimeAPI (BatchAPIs and TrafficSplitters are not its targets)"
    if options.api is None:
        problem = f"several RealtimeAPIs ({', '.join(names)}): choose one with --api NAME" if names else \
            "no RealtimeAPI"
        raise ConfigError(f"{config_file} defines {problem}; {note}")
    others = {api.name: "a BatchAPI (engine run runs its jobs)" for api in config.batch_apis}
    others.update({splitter.name: "a TrafficSplitter (name one of its APIs)" for splitter in config.splitters})
    what = f"it is {others[options.api]}" if options.api in others else "there is no api of that name"
    raise ConfigError(f"{config_file}: --api {options.api}: {what}; {note}: "
                      f"{', '.join(names) or 'this file defines none'}")


def _request(options: PredictOptions, loaded: LoadedProject) -> ApiRequest:
    """The POST to the API's endpoint that DATA makes, with its headers and query string."""
    body, content_type = read_data(options.data, loaded.project.root, sys.stdin.buffer)
    headers = [_header(text) for text in options.headers]
    given = [value for name, value in headers if name == b"content-type"]
    if options.content_type is not None and given:
        raise EngineError("--content-type and --header 'Content-Type: ...': give the Content-Type once")
    if not given:
        headers.append((b"content-type", (options.content_type or content_type).encode("latin-1")))
    headers.append((b"content-length", str(len(body)).encode()))
    scope = http_scope(loaded.apis[0].endpoint, "POST", headers)
    scope["query_string"] = urlencode([_query(text) for text in options.query]).encode()
    ensure_request_id(scope)
    return ApiRequest(scope, body)


def read_data(data: str | None, project_root: Path, stdin: BinaryIO) -> tuple[bytes, str]:
    """DATA's bytes and the Content-Type it implies (--content-type replaces it)."""
    if data == "-":
        return stdin.read(), INLINE_TYPE
    if data is not None and not data.startswith("@"):
        return data.encode(), INLINE_TYPE
    path = Path(data[1:]) if data is not None else project_root / SAMPLE_FILE
    if data is None and not path.is_file():
        raise EngineError(f"no -d DATA given, and the project has no {SAMPLE_FILE} ({path}) to send instead; give "
                          "-d '<json>', -d @FILE or -d - (standard input)")
    try:
        return path.read_bytes(), FILE_TYPES.get(path.suffix.lower(), OTHER_FILE_TYPE)
    except OSError as error:
        raise EngineError(f"-d {data}: cannot read {path} ({error.strerror or error})") from None


def _header(text: str) -> tuple[bytes, bytes]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise EngineError(f"--header {text!r}: give a header as 'Name: value'")
    return name.strip().lower().encode("latin-1"), value.strip().encode("latin-1")


def _query(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise EngineError(f"--query {text!r}: give a query parameter as NAME=VALUE")
    return name, value


class _ErrorsLogged(logging.Handler):
    """Counts the errors engine logs meanwhile: user code that failed after the response began, among others."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1

    def __enter__(self) -> _ErrorsLogged:
        logging.getLogger("engine").addHandler(self)
        return self

    def __exit__(self, *_: object) -> None:
        logging.getLogger("engine").removeHandler(self)


async def _predict(pipeline: Pipeline, view: Path, loaded: LoadedProject, request: ApiRequest, include: bool,
                   out: BinaryIO, err: BinaryIO, errors: _ErrorsLogged) -> int:
    """Start the predictor, answer the request, wait for post_predict, stop; the response's status."""
    try:
        await pipeline.start(view, loaded.project.root)
    except Exception as error:
        await pipeline.stop()
        details = str(error) if isinstance(error, EngineError) else tracebacks.format_exception(error).rstrip("\n")
        raise EngineError(f"api '{pipeline.api.name}': {pipeline.ptype.class_name} failed to start:\n"
                          f"{details}") from None
    try:
        response = await pipeline.predict(request)
        response.headers["x-request-id"] = request.request_id  # as the admission layer adds it
        try:
            status = await _write(response, request, include, out, err)
        except Exception:
            if not errors.count:  # not the predictor's (a plain stream whose generator failed: logged, cut off)
                raise
            status = 500  # the output was cut off, as a client's would be
        for work in request.after:  # post_predict
            await asyncio.wrap_future(work)
        return status
    finally:
        await pipeline.stop()


async def _write(response: Response, request: ApiRequest, include: bool, out: BinaryIO, err: BinaryIO) -> int:
    """Play the response: its head (with --include) and its body, to `out`, or to `err` for a 4xx or 5xx."""
    async with play(response, request.scope) as played:
        if include:
            head = [f"HTTP/1.1 {played.status} {_reason(played.status)}".rstrip().encode()]
            head += [name + b": " + value for name, value in played.headers]
            out.write(b"\n".join(head) + b"\n\n")
            out.flush()
        sink = err if played.status >= 400 else out
        if sink is err:
            sys.stderr.flush()
        last = played.body
        if played.chunks is None:
            sink.write(played.body)
        else:
            async for chunk in played.chunks:
                sink.write(chunk)
                sink.flush()
                last = chunk or last
        media = dict(played.headers).get(b"content-type", b"").partition(b";")[0].strip().lower()
        if last and not last.endswith(b"\n") and (media.startswith(b"text/") or media.endswith((b"/json", b"+json"))):
            sink.write(b"\n")
        sink.flush()
        return played.status


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""
