"""Hypercorn's read timeout, as engine's serving loop keeps it (engine.default_plugins.hypercorn_server.watch_reads):
a connection on which nothing arrives for longer than the read timeout is closed, while the keep-alive timer has
far longer to run; one that sends its request in time is answered."""
from __future__ import annotations

import asyncio
import socket

import pytest
from hypercorn.config import Config

from engine.default_plugins.hypercorn_server import serve_draining

pytestmark = pytest.mark.anyio

WAIT = 30  # seconds a client waits for the server: far above the read timeout, only ever hit by a failure


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def hello(scope: dict, receive, send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def client(port: int, request: bytes) -> bytes:
    """What the server sends on a connection that sends `request`, until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
            if request and received.endswith(b"ok"):
                return received
        return received


async def test_a_connection_that_sends_nothing_closes_after_the_read_timeout():
    config = Config()
    config.keep_alive_timeout = WAIT * 2  # the keep-alive timer does not close it
    config.read_timeout = 0.2
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    stop = asyncio.Event()
    serving = asyncio.ensure_future(serve_draining(hello, config, listener, stop.wait))
    try:
        answered = await asyncio.to_thread(client, port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        silent = await asyncio.wait_for(asyncio.to_thread(client, port, b""), WAIT)
    finally:
        stop.set()
        await serving
    assert answered.startswith(b"HTTP/1.1 200") and answered.endswith(b"ok")
    assert silent == b""  # closed by the server, with nothing sent
