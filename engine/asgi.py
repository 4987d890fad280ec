"""Driving ASGI from inside the process: an app's lifespan for a server that does not run it, and a response (or a
whole app) played into a fake `send`, for what forwards it elsewhere (worker processes, WebSockets, Ray replicas)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Self

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope

# --- lifespan ------------------------------------------------------------------------------------------------------


class LifespanError(RuntimeError):
    """An app's start-up or shut-down failed with a message only (an app that raised has its own error raised)."""


class Lifespan:
    """Runs an app's ASGI lifespan: start() sends the start-up and waits for the app's answer, stop() the shut-down.

    For a server that does not run the lifespan, or whose way of reporting a failed start-up is not engine's
    (a logged traceback and its own exit): here the app's error is raised to the caller."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Future[Any] | None = None

    async def start(self) -> None:
        """Start the app; raise the app's own error when its start-up fails (LifespanError when it raised none)."""
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self._task = asyncio.ensure_future(self.app(scope, self._to_app.get, self._from_app.put))
        await self._step("startup")

    async def stop(self) -> None:
        """Stop the app (it finishes what is in flight, as it decides) and let its lifespan end; nothing to do when
        it never started or has already ended."""
        if self._task is None or self._task.done():
            return
        await self._step("shutdown")
        await self._task

    async def _step(self, phase: str) -> None:
        assert self._task is not None
        await self._to_app.put({"type": f"lifespan.{phase}"})
        answer = asyncio.ensure_future(self._from_app.get())
        await asyncio.wait({answer, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
            self._task.result()  # the app ended without answering: its error, when it raised one
            raise LifespanError(f"the app's lifespan ended during {phase}")
        message = answer.result()
        if message["type"] != f"lifespan.{phase}.complete":
            # An app that raises (Starlette) has said `failed` without waiting: its task is over by now.
            if self._task.done() and not self._task.cancelled() and self._task.exception() is not None:
                raise self._task.exception()  # type: ignore[misc]
            raise LifespanError(message.get("message") or f"the app's {phase} failed")


# --- playing a response --------------------------------------------------------------------------------------------


def http_scope(path: str = "/", method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    """The scope of an HTTP request made in-process (nobody on the other end)."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": headers or [],
            "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80)}


_NO_START: Message = {}  # what Played.start is until the app sends its start


async def _stays_connected() -> Message:
    """What a client whose request has been read sends while it waits for the response: nothing."""
    await asyncio.get_running_loop().create_future()  # never: the response's end cancels the wait
    raise AssertionError("unreachable")


def play(app: ASGIApp, scope: Scope | None = None, receive: Receive | None = None) -> Played:
    """Play a response (or any ASGI app) into a fake `send`: `async with play(response) as played:` gives its start
    message (`played.status`, `played.headers`) and its body whole, or, when it streams (its first body message
    says more follows), its chunks as they come (`played.chunks`).

    The response's background task (post_predict) runs when the block ends without an error: once the caller has
    delivered the body. An error (or a cancellation) in the block stops a stream still running, without it.
    `receive` is by default a client whose request has been read, and who stays until the response ends."""
    return Played(app, http_scope() if scope is None else scope, receive)


class Played:
    """A response played by play(): its `start` message (its `status`, `headers`), and `body` (whole) or `chunks`
    (async, as they come)."""

    __slots__ = ("_background", "_held", "_queue", "_task", "app", "body", "chunks", "headers", "receive", "scope",
                 "start", "status")

    def __init__(self, app: ASGIApp, scope: Scope, receive: Receive | None) -> None:
        self.app = app
        self.scope = scope
        self.receive = receive or _stays_connected
        self.start: Message = _NO_START
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.chunks: AsyncIterator[bytes] | None = None
        self._background: Callable[[], Awaitable[Any]] | None = None
        self._task: asyncio.Future[None] | None = None  # the app, when it runs apart; then also _queue and _held

    async def read(self) -> bytes:
        """The whole body: a stream's chunks joined."""
        if self.chunks is None:
            return self.body
        return b"".join([chunk async for chunk in self.chunks])

    async def __aenter__(self) -> Self:
        app = self.app
        self._background = getattr(app, "background", None)
        if self._background is not None:
            app.background = None  # type: ignore[attr-defined]  # run by __aexit__, once the body is delivered
        if type(app).__call__ is Response.__call__:  # one start, one whole body: no need to run it apart
            await app(self.scope, self.receive, self._record)
        else:
            await self._run_apart()
        if self.start is _NO_START:
            raise RuntimeError("the app ended without sending a response")
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        task = self._task
        if task is not None and not task.done():
            if kind is None and self._held:  # let the app finish, as it does once a client has the body
                self._queue.task_done()
                await task
            else:  # a stream left before its end, or an error
                await _cancel(task)
        if kind is None and self._background is not None:
            await self._background()

    async def _record(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start, self.status, self.headers = message, message["status"], message.get("headers", [])
        elif message["type"] == "http.response.body":
            self.body = message.get("body", b"")

    async def _run_apart(self) -> None:
        """Run the app in a task of its own, up to its start message and first body message."""
        queue: asyncio.Queue[Any] = asyncio.Queue()  # its start message, then each body message, then None for its end
        self._held = False  # True: the app waits until the caller is done with its whole body
        self._queue = queue
        task = self._task = asyncio.ensure_future(self.app(self.scope, self.receive, self._forward))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            start = await queue.get()
            if start is None:
                task.result()  # its error, if it raised one
                return
            await self._record(start)
            queue.task_done()
            first = await queue.get()
        except BaseException:
            await _cancel(task)
            raise
        if first is None:
            task.result()
        elif first.get("more_body", False):
            self.chunks = self._chunks(first.get("body", b""))
        else:
            self.body = first.get("body", b"")
            self._held = True

    async def _forward(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self._queue.put_nowait(message)
        elif message["type"] == "http.response.body":
            self._queue.put_nowait(message)
            await self._queue.join()  # like a client's connection: sent once the caller is done with it

    async def _chunks(self, first: bytes) -> AsyncIterator[bytes]:
        assert self._task is not None
        if first:
            yield first
        self._queue.task_done()
        while (message := await self._queue.get()) is not None:
            if message.get("body"):
                yield message["body"]
            self._queue.task_done()
        self._task.result()  # the stream's error, if it failed


async def _cancel(task: asyncio.Future[None]) -> None:
    """Cancel the task and wait until it has ended (a stream's generator is closed by then)."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: it ended on its own error while being stopped, which nobody waits for
