"""What the front process and its worker processes say to each other, and how (length-prefixed pickles).

A worker's life: it connects and says Hello; the front answers Setup; the worker initialises the predictor and
says Ready (or Failed). Then, per request: Call → Reply → (Sent, when the client has the response) → Done; a
streamed response is ReplyStart and Chunks instead of Reply; Call → Cancel → Done when the request is given up
first. Stop asks it to finish what it has and exit.
"""
from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.project.config import Api

_HEADER = struct.Struct("!I")


# --- worker → front ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """A new worker has connected."""

    index: int


@dataclass(frozen=True, slots=True)
class Ready:
    """The predictor's __init__ has returned: send requests."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The predictor could not start; `details` is what the user must read (a traceback, or an error's message)."""

    details: str


@dataclass(frozen=True, slots=True)
class Reply:
    """The response to a Call; `wants_sent`: tell me (Sent) once the client has it, post_predict waits for that."""

    call: int
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    wants_sent: bool


@dataclass(frozen=True, slots=True)
class ReplyStart:
    """A streamed response to a Call begins; its body follows in Chunks."""

    call: int
    status: int
    headers: list[tuple[bytes, bytes]]
    wants_sent: bool


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a streamed response's body; `last` ends it."""

    call: int
    data: bytes
    last: bool


@dataclass(frozen=True, slots=True)
class Done:
    """The worker is finished with a Call, post_predict included."""

    call: int


# --- front → worker ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setup:
    """What a worker serves, and with which plugins (exactly those the front validated the project with)."""

    api: Api
    plugins: list[tuple[str, str | bytes]]  # see engine.plugins.portable
    view: Path
    project_root: Path
    model_poll_interval: float
    shows_errors: bool


@dataclass(frozen=True, slots=True)
class Call:
    """One request for the worker's API: a prediction or the API's summary."""

    call: int
    kind: str  # "predict", "summary", or "operate:<operation>"
    scope: dict[str, Any]  # its parts that a worker needs (engine.serving.worker_pool)
    body: bytes


@dataclass(frozen=True, slots=True)
class Sent:
    """The client has the response to a Call."""

    call: int


@dataclass(frozen=True, slots=True)
class Cancel:
    """The request was given up (its deadline passed, or its client left): drop it if predict has not started."""

    call: int


@dataclass(frozen=True, slots=True)
class Stop:
    """Finish the calls you have, post_predicts included, then exit."""


Message = Hello | Ready | Failed | Reply | ReplyStart | Chunk | Done | Setup | Call | Sent | Cancel | Stop


async def send(writer: asyncio.StreamWriter, message: Message) -> bool:
    """Write one message; False when the other side has gone (whoever waits on it learns so from its exit)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        writer.write(_HEADER.pack(len(data)) + data)
        await writer.drain()
    except ConnectionError:
        return False
    return True


async def receive(reader: asyncio.StreamReader) -> Message | None:
    """Read one message; None when the other side has gone."""
    try:
        header = await reader.readexactly(_HEADER.size)
        message: Message = pickle.loads(await reader.readexactly(_HEADER.unpack(header)[0]))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return message
