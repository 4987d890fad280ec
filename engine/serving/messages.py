"""What the front process and its worker processes say to each other, and how: a Channel of length-prefixed pickles.

A worker's life: it connects and says Hello; the front answers Setup; the worker initialises the predictor and
says Ready (or Failed). Then, per request: Call → Reply, whose `done` says the worker is finished with it too; with a
post_predict, Call → Reply → Sent (the client has the response) → Done. A streamed response is ReplyStart and Chunks
instead of Reply, then Done; Call → Cancel → Done when the request is given up first. Stop asks a worker to finish
what it has and exit.

The hop is on every request, so it is made cheap: a message is a NamedTuple, pickled as a plain tuple behind its
kind's number; what one side says during one pass of its event loop goes out in one write; and what arrives is handed
on as it is read, without a task or a future per message.
"""
from __future__ import annotations

import asyncio
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

if TYPE_CHECKING:
    from engine.project.config import Api

_HEADER = struct.Struct("!I")


# --- worker → front ---------------------------------------------------------------------------------------------


class Hello(NamedTuple):
    """A new worker has connected; `worker` is its index."""

    worker: int


class Ready(NamedTuple):
    """The predictor's __init__ has returned: send requests."""


class Failed(NamedTuple):
    """The predictor could not start; `details` is what the user must read (a traceback, or an error's message)."""

    details: str


class Reply(NamedTuple):
    """The response to a Call. `done`: the worker is finished with the call (no Done follows), after `took` seconds
    of its own time on it. `wants_sent`: tell me (Sent) once the client has it, post_predict waits for that; then a
    Done follows."""

    call: int
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    wants_sent: bool
    done: bool
    took: float


class ReplyStart(NamedTuple):
    """A streamed response to a Call begins; its body follows in Chunks."""

    call: int
    status: int
    headers: list[tuple[bytes, bytes]]
    wants_sent: bool


class Chunk(NamedTuple):
    """A piece of a streamed response's body; `last` ends it."""

    call: int
    data: bytes
    last: bool


class Done(NamedTuple):
    """The worker is finished with a Call, post_predict included, after `took` seconds of its own time on it."""

    call: int
    took: float


# --- front → worker ---------------------------------------------------------------------------------------------


class Setup(NamedTuple):
    """What a worker serves, and with which plugins (exactly those the front validated the project with)."""

    api: Api
    plugins: list[tuple[str, str | bytes]]  # see engine.plugins.portable
    view: Path
    project_root: Path
    model_poll_interval: float
    shows_errors: bool


class Call(NamedTuple):
    """One request for the worker's API: a prediction or the API's summary."""

    call: int
    kind: str  # "predict", "summary", or "operate:<operation>"
    scope: dict[str, Any]  # its parts that a worker needs (engine.serving.worker_pool)
    body: bytes


class Sent(NamedTuple):
    """The client has the response to a Call."""

    call: int


class Cancel(NamedTuple):
    """The request was given up (its deadline passed, or its client left): drop it if predict has not started."""

    call: int


class Stop(NamedTuple):
    """Finish the calls you have, post_predicts included, then exit."""


Message = Hello | Ready | Failed | Reply | ReplyStart | Chunk | Done | Setup | Call | Sent | Cancel | Stop
_KINDS: tuple[type[Message], ...] = (Hello, Ready, Failed, Reply, ReplyStart, Chunk, Done, Setup, Call, Sent, Cancel,
                                     Stop)
_NUMBERS = {kind: number for number, kind in enumerate(_KINDS)}


def encode(message: Message) -> bytes:
    """One frame: the length, then the pickle of the kind's number and the fields."""
    data = pickle.dumps((_NUMBERS[type(message)], *message), protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def decode(data: bytes | memoryview) -> Message:
    """The message in a frame's pickle."""
    number, *fields = pickle.loads(data)
    return _KINDS[number]._make(fields)  # type: ignore[no-any-return]


class Channel(asyncio.Protocol):
    """One end of a front↔worker connection (an asyncio protocol on a Unix socket).

    `send` queues a message and everything queued during one pass of the event loop goes out in one write; each
    message read is handed to `on_message` at once; `closed` resolves when the other side has gone."""

    def __init__(self, on_message: Callable[[Message], None] | None = None) -> None:
        self.on_message: Callable[[Message], None] = on_message or (lambda message: None)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._transport: asyncio.WriteTransport | None = None
        self._outbox: list[bytes] = []
        self._parts: list[bytes] = []  # a frame read in part, until `_missing` more bytes have come
        self._missing = 0
        self._writable: asyncio.Future[None] | None = None  # while the socket's buffer is full

    @classmethod
    async def connect(cls, path: str, on_message: Callable[[Message], None] | None = None) -> Channel:
        """A channel connected to the Unix socket at `path`."""
        _, channel = await asyncio.get_running_loop().create_unix_connection(lambda: cls(on_message), path)
        return channel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.WriteTransport, transport)  # uvloop's transports are not its subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.closed.done():
            self.closed.set_result(None)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    @property
    def is_open(self) -> bool:
        """False once the connection is closed or lost."""
        return self._transport is not None and not self._transport.is_closing()

    def send(self, message: Message) -> bool:
        """Queue one message for this loop pass's write; False when the other side has gone (whoever waits on it
        learns so from `closed`)."""
        if not self.is_open:
            return False
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(encode(message))
        return True

    def _flush(self) -> None:
        frames, self._outbox = self._outbox, []
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    async def drain(self) -> None:
        """Wait while the socket's buffer is full (a stream's chunks wait so, not to pile up in memory)."""
        if self._writable is not None:
            await self._writable

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def close(self) -> None:
        """Write what is queued, then close the connection."""
        if self._transport is not None:
            self._flush()
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._parts:  # the rest of a frame begun earlier
            self._parts.append(data)
            self._missing -= len(data)
            if self._missing > 0:
                return
            data = b"".join(self._parts)
            self._parts.clear()
        view = memoryview(data)
        offset, end = 0, len(data)
        while end - offset >= _HEADER.size:
            size = _HEADER.unpack_from(data, offset)[0]
            start = offset + _HEADER.size
            if end - start < size:
                break
            offset = start + size
            self.on_message(decode(view[start:offset]))
        if offset < end:
            rest = data[offset:]
            self._parts.append(rest)
            self._missing = (_HEADER.size + _HEADER.unpack_from(rest)[0] if len(rest) >= _HEADER.size
                             else _HEADER.size) - len(rest)


async def first(received: asyncio.Queue[Message], channel: Channel) -> Message | None:
    """The next message put in `received` (by the channel's `on_message`), or None if the other side goes first."""
    getting: asyncio.Future[Any] = asyncio.ensure_future(received.get())
    await asyncio.wait({getting, channel.closed}, return_when=asyncio.FIRST_COMPLETED)
    if getting.done():
        return getting.result()  # type: ignore[no-any-return]
    getting.cancel()
    return None
