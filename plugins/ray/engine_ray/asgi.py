"""Driving an ASGI app from inside the process: its lifespan, and requests that never touch the network."""
from __future__ import annotations

import asyncio
from typing import Any

Message = dict[str, Any]


class Lifespan:
    """Runs an app's ASGI lifespan: start() sends the startup and waits for its answer, stop() the shutdown."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Start the app; raise RuntimeError with its message when it refuses."""
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self._task = asyncio.create_task(self.app(scope, self._inbox.get, self._outbox.put))
        await self._exchange("startup")

    async def stop(self) -> None:
        """Stop the app (it waits for what is in flight, as the app decides), then let its lifespan task end."""
        if self._task is None or self._task.done():
            return
        await self._exchange("shutdown")
        await self._task

    async def _exchange(self, event: str) -> None:
        await self._inbox.put({"type": f"lifespan.{event}"})
        reply = asyncio.ensure_future(self._outbox.get())
        done, _ = await asyncio.wait({reply, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if reply not in done:
            reply.cancel()
            self._task.result()  # the app raised: let its exception out
            raise RuntimeError(f"the app ended its lifespan before answering {event}")
        message = reply.result()
        if message["type"] != f"lifespan.{event}.complete":
            raise RuntimeError(message.get("message") or f"lifespan {event} failed")


async def get(app: Any, path: str, headers: list[tuple[bytes, bytes]] = ()) -> tuple[int, bytes]:
    """GET `path` from the app in-process: (status, body)."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": list(headers), "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80)}
    await app(scope, receive, send)
    status = next(message["status"] for message in sent if message["type"] == "http.response.start")
    return status, b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")


async def capture(app: Any, scope: dict, receive: Any) -> tuple[Message, bytes]:
    """Call the app and keep its answer: (the response's start message, its whole body)."""
    start: Message = {}
    body: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(scope, receive, send)
    return start, b"".join(body)


async def answer(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """Send a whole response."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
