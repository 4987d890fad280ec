"""A WebSocket at each API's route: each message received is a payload, each result is sent back.

A text message that is JSON is parsed as JSON, any other text is a str, a binary message is bytes — as if it were
a POST of that Content-Type, so that the very same admission, backend and pipeline answer it (worker processes,
batching, the concurrency limit, the deadline). A result is sent as a text message (JSON, or the str), or a binary
one (bytes); a streaming predict sends each item as its own message; an error is a text message
`{"error": ...}` and the socket stays open. Messages on one socket are answered one at a time, in order.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from starlette.types import Message, Receive, Scope, Send

from engine import jsoncodec
from engine.asgi import play
from engine.serving.admission import ROUTED_KEY, ensure_request_id
from engine.serving.backend import ApiRequest

if TYPE_CHECKING:
    from engine.serving.admission import Admission

_TEXT_TYPES = (b"application/json", b"text/", b"application/x-ndjson")
TRY_AGAIN_LATER = 1013  # the close code for a server not ready (RFC 6455 registry)


async def serve_websocket(admission: Admission, scope: Scope, receive: Receive, send: Send) -> None:
    """One WebSocket connection to an API, until either side closes it."""
    if (await receive())["type"] != "websocket.connect":
        return
    if not admission.backend.ready:
        await send({"type": "websocket.close", "code": TRY_AGAIN_LATER})
        return
    await send({"type": "websocket.accept"})
    incoming = asyncio.ensure_future(receive())
    while True:
        message = await incoming
        if message["type"] != "websocket.receive":
            return
        incoming = asyncio.ensure_future(receive())  # a disconnect while it is answered cancels the answer
        answer = asyncio.ensure_future(_answer(admission, scope, message, send))
        await asyncio.wait({answer, incoming}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            if incoming.done() and incoming.result()["type"] == "websocket.disconnect":
                answer.cancel()
                admission.count_disconnect()
                return
            await answer  # the next message waits its turn


async def _answer(admission: Admission, scope: Scope, message: Message, send: Send) -> None:
    generation = admission.begin()
    try:
        await _answer_counted(admission, scope, message, send)
    finally:
        admission.end(generation)


async def _answer_counted(admission: Admission, scope: Scope, message: Message, send: Send) -> None:
    started = time.perf_counter()
    body, content_type = _payload(message)
    request = {**scope, "type": "http", "method": "POST", "query_string": scope.get("query_string", b""),
               "headers": [(name, value) for name, value in scope["headers"]
                           if name not in (b"content-type", b"x-request-id")] + [(b"content-type", content_type)]}
    request_id = ensure_request_id(request)
    response, held = await admission.answer_message(ApiRequest(request, body))
    status = response.status_code
    try:
        async with play(response, request) as played:
            headers = dict(played.headers)
            if played.chunks is None:
                if played.body:
                    await send(_message(played.body, headers))
            else:
                async for chunk in played.chunks:
                    await send(_message(chunk, headers))
    finally:
        admission.finished_message(held, status, started, request_id, scope["path"], scope.get(ROUTED_KEY))


def _payload(message: Message) -> tuple[bytes, bytes]:
    """A WebSocket message as a request body and its Content-Type."""
    if message.get("text") is not None:
        text = message["text"]
        try:
            jsoncodec.loads(text.encode())
            return text.encode(), b"application/json"
        except (ValueError, RecursionError):
            return text.encode(), b"text/plain; charset=utf-8"
    return message.get("bytes") or b"", b"application/octet-stream"


def _message(body: bytes, headers: dict[bytes, bytes]) -> Message:
    """A response body (or one streamed item) as a WebSocket message: text for JSON and text, binary otherwise."""
    if headers.get(b"content-type", b"").startswith(_TEXT_TYPES):
        return {"type": "websocket.send", "text": body.decode("utf-8", "replace").rstrip("\n")}
    return {"type": "websocket.send", "bytes": body}
