"""Streaming: a predict that returns a generator (or an async generator) sends its items as they are produced.

How the items are written is chosen from the request's Accept and the first item: server-sent events when Accept
includes text/event-stream (`data:` lines); otherwise bytes and str items as they are (application/octet-stream,
text/plain), and anything else as JSON, one per line (application/x-ndjson). A client that disconnects stops the
generator (its `finally` runs) once the item being produced is done. An exception mid-stream is logged with its
request id and ends the stream: with a last `{"error": ..., "request_id": ...}` line (NDJSON) or an `event: error`
(SSE); a plain bytes or text stream is cut off instead (no chunked terminator), so the client sees it incomplete.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from engine import jsoncodec

log = logging.getLogger("engine")

END = object()  # what `pull` returns once the stream has no more items


def is_stream(result: Any) -> bool:
    """True for what predict returns when it streams: a generator or an async generator."""
    return inspect.isgenerator(result) or inspect.isasyncgen(result)


class Format:
    """How one stream's items are written."""

    def __init__(self, first: Any, accept: str) -> None:
        self.sse = "text/event-stream" in accept.lower()
        if self.sse:
            self.media_type = "text/event-stream"
        elif isinstance(first, (bytes, bytearray)):
            self.media_type = "application/octet-stream"
        elif isinstance(first, str):
            self.media_type = "text/plain; charset=utf-8"
        else:
            self.media_type = "application/x-ndjson"
        self.raw = self.media_type.startswith(("application/octet-stream", "text/plain"))

    def chunk(self, item: Any) -> bytes:
        """One item as written on the wire."""
        if self.sse:
            text = item.decode("utf-8", "replace") if isinstance(item, (bytes, bytearray)) else \
                item if isinstance(item, str) else jsoncodec.dumps(item).decode()
            return "".join(f"data: {line}\n" for line in text.split("\n")).encode() + b"\n"
        if self.raw:
            return bytes(item) if isinstance(item, (bytes, bytearray)) else \
                item.encode() if isinstance(item, str) else jsoncodec.dumps(item)
        return jsoncodec.dumps(item) + b"\n"

    def error(self, message: str, request_id: str) -> bytes | None:
        """The record that ends a stream whose generator raised; None where the format has none."""
        record = jsoncodec.dumps({"error": message, "request_id": request_id})
        if self.sse:
            return b"event: error\ndata: " + record + b"\n\n"
        return None if self.raw else record + b"\n"


async def stream_response(pull: Callable[[], Awaitable[Any]], close: Callable[[], Awaitable[None]], accept: str,
                          api_name: str, request_id: str, error_message: Callable[[BaseException], str],
                          on_end: Callable[[list[Any]], Any] | None) -> StreamingResponse:
    """A response that streams what `pull` produces (END when done); `on_end` gets the items once it is over.

    The first item is produced before the response starts, so that its type chooses the format."""
    first = await pull()
    form = Format(None if first is END else first, accept)
    items: list[Any] = []

    async def chunks() -> AsyncGenerator[bytes, None]:
        item = first
        try:
            while item is not END:
                items.append(item)
                yield form.chunk(item)
                item = await pull()
        except Exception as error:
            log.exception("api '%s': the stream's generator failed (request_id=%s)", api_name, request_id)
            record = form.error(error_message(error), request_id)
            if record is None:
                raise
            yield record
        finally:
            await close()  # also when the client went away: the generator's `finally` runs

    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"} if form.sse else None
    background = BackgroundTask(on_end, items) if on_end is not None else None
    return ItemStream(chunks(), media_type=form.media_type, headers=headers, background=background)


class ItemStream(StreamingResponse):
    """Starlette's streaming response, watching for the client's disconnect whatever the server's ASGI version
    (a disconnect stops the stream), and closing the stream whatever ends it."""

    body_iterator: AsyncGenerator[bytes, None]  # stream_response's chunks()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.ensure_future(self.listen_for_disconnect(receive))
        streaming = asyncio.ensure_future(self.stream_response(send))
        try:
            await asyncio.wait({gone, streaming}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (gone, streaming):
                task.cancel()
            await asyncio.gather(gone, streaming, return_exceptions=True)
            await self.body_iterator.aclose()
        error = None if streaming.cancelled() else streaming.exception()
        if error is not None:
            raise error  # a plain stream's generator failed: cut off, without a final chunk
        if self.background is not None:  # post_predict, with the items sent (all, or those before a disconnect)
            await self.background()
