"""Warm-up: the requests of an API's `predictor.warmup_file`, replayed through its whole pipeline (payload parsing,
predict, encoding, post_predict) in every process that runs its predictor, before the API is ready.

The file holds JSON lines, one request each (blank lines are skipped):

    {"payload": {"text": "hello"}}
    {"body": "a,b,c", "content_type": "text/csv", "query": {"model": "a"}, "headers": {"x-mode": "fast"}}
    {"body_base64": "iVBORw0KGgo=", "content_type": "image/png", "repeat": 3}

A request that fails (an exception, an answer of 400 or more) stops the API's start, as a failing __init__ does.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from engine.asgi import http_scope, play
from engine.errors import EngineError
from engine.serving.backend import ApiRequest

if TYPE_CHECKING:
    from engine.serving.pipeline import Pipeline

log = logging.getLogger("engine")

BODIES = ("payload", "body", "body_base64")  # at most one per request; none: an empty body
KEYS = (*BODIES, "content_type", "query", "headers", "repeat")
DEFAULT_TYPES = {"payload": "application/json", "body": "text/plain; charset=utf-8",
                 "body_base64": "application/octet-stream"}
MAX_REPEAT = 1000
SHOWN_BODY = 500  # characters of a failed answer's body that its error shows


class WarmupError(EngineError):
    """A warm-up file cannot be read, or one of its requests failed; the message names the file and line."""


@dataclass(frozen=True)
class WarmupRequest:
    """One line of a warm-up file."""

    line: int
    body: bytes
    headers: tuple[tuple[str, str], ...]  # content-type included
    query: str  # the encoded query string
    repeat: int = 1

    def to_api_request(self, endpoint: str) -> ApiRequest:
        """The request as the admission layer would hand it to the pipeline."""
        headers = [(name.lower().encode(), value.encode()) for name, value in self.headers]
        if not any(name == b"x-request-id" for name, _ in headers):
            headers.append((b"x-request-id", f"warmup-{self.line}".encode()))
        scope = http_scope(endpoint, "POST", headers)
        scope["query_string"] = self.query.encode()
        return ApiRequest(scope, self.body)


def read_requests(path: Path, shown: str) -> list[WarmupRequest]:
    """Every request of a warm-up file (`shown`: its name in errors); WarmupError naming the line of a bad one."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise WarmupError(f"predictor.warmup_file: {shown} does not exist (it is relative to the project "
                          "directory)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise WarmupError(f"predictor.warmup_file: cannot read {shown}: {error}") from None
    requests = []
    for number, text in enumerate(lines, start=1):
        if text.strip():
            try:
                requests.append(_parse(number, json.loads(text)))
            except (ValueError, TypeError) as error:  # json.JSONDecodeError is a ValueError
                raise WarmupError(f"{shown}:{number}: {error}") from None
    return requests


def _parse(line: int, entry: Any) -> WarmupRequest:
    if not isinstance(entry, dict):
        raise ValueError(f"each line must be a JSON object with some of: {', '.join(KEYS)}")
    unknown = sorted(set(entry) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown key {', '.join(map(repr, unknown))}; allowed: {', '.join(KEYS)}")
    given = [key for key in BODIES if key in entry]
    if len(given) > 1:
        raise ValueError(f"give at most one of {', '.join(BODIES)} (given: {', '.join(given)})")
    kind = given[0] if given else None
    body = b""
    if kind == "payload":
        body = json.dumps(entry["payload"]).encode()
    elif kind == "body":
        body = _text(entry["body"], "body").encode()
    elif kind == "body_base64":
        try:
            body = base64.b64decode(_text(entry["body_base64"], "body_base64"), validate=True)
        except binascii.Error:
            raise ValueError("body_base64 must be base64 text") from None
    headers = _strings(entry.get("headers", {}), "headers")
    content_type = entry.get("content_type", DEFAULT_TYPES.get(kind or ""))
    if content_type is not None:
        headers = [(name, value) for name, value in headers if name.lower() != "content-type"]
        headers += _strings({"content-type": _text(content_type, "content_type")}, "content_type")
    repeat = entry.get("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or not 1 <= repeat <= MAX_REPEAT:
        raise ValueError(f"repeat must be a whole number from 1 to {MAX_REPEAT} (given: {repeat!r})")
    return WarmupRequest(line, body, tuple(headers), _query(entry.get("query", {})), repeat)


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string (given: {type(value).__name__})")
    return value


def _strings(mapping: Any, key: str) -> list[tuple[str, str]]:
    if not isinstance(mapping, dict) or not all(isinstance(value, str) for value in mapping.values()):
        raise ValueError(f"{key} must be an object of strings, e.g. {{\"x-mode\": \"fast\"}}")
    if not all(text.isascii() for item in mapping.items() for text in item):
        raise ValueError(f"{key} must be ASCII text, as HTTP headers are")
    return list(mapping.items())


def _query(query: Any) -> str:
    if isinstance(query, str):
        if not query.isascii():
            raise ValueError("a query string must be ASCII (percent-encode other characters, or give an object)")
        return query.removeprefix("?")
    if isinstance(query, dict) and all(isinstance(value, str) or (isinstance(value, list) and all(
            isinstance(item, str) for item in value)) for value in query.values()):
        return urlencode(query, doseq=True)
    raise ValueError('query must be a query string or an object of strings (or lists of strings), e.g. {"k": "v"}')


async def replay(pipeline: Pipeline, project_root: Path) -> None:
    """Replay the API's warm-up file, if it names one, through `pipeline`; WarmupError at the first failure."""
    file = pipeline.api.predictor.warmup_file
    if file is None:
        return
    requests = await asyncio.to_thread(read_requests, project_root / file, file)
    started = time.monotonic()
    total = 0
    for request in requests:
        for _ in range(request.repeat):
            # a task of its own: what predict sets in its context (the request's id for log lines) stays there
            await asyncio.create_task(_replay_one(pipeline, request, file))
            total += 1
    log.info("api '%s': %d warm-up request%s of %s replayed in %.2f s", pipeline.api.name, total,
             "" if total == 1 else "s", file, time.monotonic() - started)


async def _replay_one(pipeline: Pipeline, request: WarmupRequest, file: str) -> None:
    """One request through predict, encoding and post_predict (awaited, as a worker awaits it)."""
    api_request = request.to_api_request(pipeline.api.endpoint)
    try:
        response = await pipeline.predict(api_request)
        async with play(response, api_request.scope) as played:
            body = await played.read()
        for work in api_request.after:
            await asyncio.wrap_future(work)
    except Exception as error:  # the pipeline answers a predictor's exceptions; this is anything else
        raise WarmupError(f"warm-up request {file}:{request.line} failed: {type(error).__name__}: {error}") from error
    if played.status >= 400:
        text = body.decode("utf-8", "replace")
        shown = text if len(text) <= SHOWN_BODY else text[:SHOWN_BODY] + "..."
        raise WarmupError(f"warm-up request {file}:{request.line} answered {played.status}: {shown}")
