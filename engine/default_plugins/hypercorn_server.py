"""The built-in HTTP server: Hypercorn (HTTP/1.1, HTTP/2 over TLS and in cleartext, WebSockets, TLS)."""
from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from engine import ServeSettings, hookimpl

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from engine import HttpServer


class Hypercorn:
    """engine's default server; it has no bound on connections (the open-file limit and the timeouts bound them)."""

    name = "hypercorn"
    features = frozenset({"tls", "client_certificates", "http2", "websockets"})

    async def serve(self, app: ASGIApp, listener: socket.socket, settings: ServeSettings,
                    shutdown: Callable[[], Awaitable[None]]) -> None:
        """Serve `app` on the bound listener until `shutdown` returns, then drain for --graceful-timeout."""
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        config = Config()
        config.graceful_timeout = settings.graceful_timeout
        config.keep_alive_timeout = settings.keep_alive_timeout
        close_idle_http2_connections()
        # A backstop: a connection goes once nothing has been read from it for longer than any request may take (one
        # waiting for its response reads nothing either, hence the margin), e.g. an HTTP/2 client that stops reading
        # a response and so holds its stream open.
        config.read_timeout = int(max(settings.request_timeout or 0, settings.body_timeout or 0, 60)
                                  + settings.keep_alive_timeout)
        config.shutdown_timeout = settings.graceful_timeout + 60  # engine bounds its own stop (AppState.stop)
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        if settings.certfile:
            config.certfile, config.keyfile = settings.certfile, settings.keyfile
            if settings.ca_certs:
                config.ca_certs, config.verify_mode = settings.ca_certs, ssl.CERT_REQUIRED
        if checked(DRAIN_CHECKED):
            await serve_draining(app, config, listener, shutdown)
            return
        config.bind = [f"fd://{listener.detach()}"]
        # hypercorn types scopes as TypedDicts, starlette (and so engine) as MutableMapping: the same dicts
        await serve(app, config, shutdown_trigger=shutdown)  # type: ignore[arg-type]


# The Hypercorn versions whose serving loop (hypercorn.asyncio.run.worker_serve) serve_draining was read against; on
# another one Hypercorn's own loop serves, whose stop closes idle keep-alive connections at once.
DRAIN_CHECKED = ((0, 18), (0, 18))


async def serve_draining(app: ASGIApp, config: Any, listener: socket.socket,
                         shutdown: Callable[[], Awaitable[None]]) -> None:
    """Hypercorn's serving loop, built from its parts, with engine's drain: once `shutdown` returns, the listener
    closes at once (before engine marks responses Connection: close: engine.server), an HTTP/2 connection takes no
    new stream and goes with a GOAWAY once idle, and an HTTP/1.1 connection stays open until the response that closes
    it or its keep-alive timeout: closed while idle, as Hypercorn's own stop does, it would lose a request its client
    is sending. The lifespan's shutdown (which stops the APIs' workers) follows once every connection has gone, or
    after the graceful timeout."""
    from hypercorn.asyncio.lifespan import Lifespan
    from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
    from hypercorn.asyncio.worker_context import WorkerContext
    from hypercorn.events import Closed, RawData
    from hypercorn.protocol.h2 import H2Protocol
    from hypercorn.utils import wrap_app

    loop = asyncio.get_running_loop()
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    state: dict[str, Any] = {}
    lifespan = Lifespan(asgi, config, loop, state)
    lifespan_task = loop.create_task(lifespan.handle_lifespan())
    await lifespan.wait_for_startup()
    if lifespan_task.done() and (error := lifespan_task.exception()) is not None:
        raise error
    connections: dict[asyncio.Task[Any], tuple[TCPServer, WorkerContext]] = {}

    class Connection(TCPServer):
        reading_since: float | None = None  # when the read under way began (None: not reading)
        read_expired = False  # watch_reads has given up on that read

        async def _read_data(self) -> None:
            # Hypercorn's read loop, with its read timeout kept by watch_reads: Hypercorn's asyncio.wait_for makes a
            # task and a timer for every read, a sizeable part of a fast request's CPU.
            task = asyncio.current_task()
            assert task is not None
            self.task = task
            reader = self.reader
            while not reader.at_eof():
                self.reading_since = loop.time()
                try:
                    data = await reader.read(MAX_RECV)
                except asyncio.CancelledError:
                    if not self.read_expired or task.uncancel() > 0:
                        raise
                    break
                except (ConnectionError, OSError, ssl.SSLError):
                    break
                finally:
                    self.reading_since = None
                await self.protocol.handle(RawData(data))
            await self.protocol.handle(Closed())
            # Nothing more can be read: end now rather than when the keep-alive timer fires (which a drain waits for)
            await self.context.terminated.set()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        context = WorkerContext(None)  # one for each connection: the drain ends HTTP/2 and HTTP/1.1 ones apart
        server = Connection(asgi, loop, config, context, state, reader, writer)
        task = asyncio.current_task()
        assert task is not None
        connections[task] = (server, context)
        task.add_done_callback(connections.pop)
        await server

    tls = config.create_ssl_context()
    listening = await asyncio.start_server(connected, sock=listener, backlog=config.backlog, ssl=tls,
                                           ssl_handshake_timeout=config.ssl_handshake_timeout if tls else None)
    watching = loop.create_task(watch_reads(connections, config.read_timeout))
    try:
        await shutdown()
    finally:
        listening.close()  # before the next await
        watching.cancel()
        for server, context in list(connections.values()):
            if isinstance(getattr(getattr(server, "protocol", None), "protocol", None), H2Protocol):
                await context.terminated.set()
        if connections:
            await asyncio.wait(list(connections), timeout=config.graceful_timeout)
        for _, context in list(connections.values()):
            await context.terminated.set()  # the graceful timeout has passed: idle connections close now
        await lifespan.wait_for_shutdown()
        lifespan_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lifespan_task


READS_WATCHED_EVERY = 1.0  # seconds between two looks for reads past the read timeout


async def watch_reads(connections: dict[Any, Any], read_timeout: float | None) -> None:
    """End each connection's read that has waited longer than `read_timeout`, as Hypercorn's read timeout does (the
    connection closes), looking every READS_WATCHED_EVERY seconds (or sooner, for a shorter timeout)."""
    if read_timeout is None:
        return
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(min(READS_WATCHED_EVERY, read_timeout / 4))
        now = loop.time()
        for server, _ in list(connections.values()):
            since = getattr(server, "reading_since", None)
            if since is not None and now - since > read_timeout and not server.read_expired:
                server.read_expired = True
                server.task.cancel()


# The Hypercorn versions whose HTTP/2 internals close_idle_http2_connections was read against; on another one it
# changes nothing and says so (tests/test_e2e_http2_idle.py then fails until someone reads that version's code).
CHECKED_HYPERCORN = ((0, 16), (0, 18))


def close_idle_http2_connections() -> None:
    """Make Hypercorn close an HTTP/2 connection with no open stream after keep_alive_timeout, with a GOAWAY."""
    # Hypercorn's keep-alive timer stops when a request arrives and restarts when the connection is idle again. With
    # HTTP/2 prior knowledge its HTTP/1.1 parser takes the preface ("PRI * HTTP/2.0") for a request, so the timer
    # stops and, until a stream ends, nothing restarts it: such a connection stayed open until the read timeout
    # (over a minute), and held a SIGTERM's shutdown for all of --graceful-timeout. And when the timer fires,
    # Hypercorn drops an HTTP/2 connection without a GOAWAY. Hypercorn offers no setting or hook for either; the one
    # seam is the protocol class that its ProtocolWrapper looks up by name.
    import hypercorn.protocol
    from h2.connection import ConnectionState
    from hypercorn.events import Closed, Event, Updated
    from hypercorn.protocol.h2 import H2Protocol

    if vars(hypercorn.protocol)["H2Protocol"] is not H2Protocol:  # replaced already
        return
    if not checked(CHECKED_HYPERCORN):
        version = importlib.metadata.version("hypercorn")
        logging.getLogger("engine").warning(
            "Hypercorn %s is not one engine was checked with (%s to %s): an HTTP/2 connection opened with prior "
            "knowledge and left idle closes only after the read timeout", version,
            *(".".join(map(str, bound)) for bound in CHECKED_HYPERCORN))
        return

    class IdleClosingH2Protocol(H2Protocol):
        """Hypercorn's HTTP/2 protocol, idle from its start and closed with a GOAWAY."""

        async def initiate(self, headers: list[tuple[bytes, bytes]] | None = None,
                           settings: bytes | None = None) -> None:
            await super().initiate(headers, settings)
            if headers is None:  # no request yet (an h2c upgrade's request is stream 1): the keep-alive timer runs
                await self.send(Updated(idle=True))

        async def handle(self, event: Event) -> None:
            if isinstance(event, Closed) and not self.closed \
                    and self.connection.state_machine.state is not ConnectionState.CLOSED:
                self.connection.close_connection()  # GOAWAY: the client knows which requests were taken
                await self._flush()
            await super().handle(event)

    vars(hypercorn.protocol)["H2Protocol"] = IdleClosingH2Protocol  # the name ProtocolWrapper looks up


def checked(versions: tuple[tuple[int, int], tuple[int, int]]) -> bool:
    """True when the installed Hypercorn's version is within `versions` (first and last, major and minor)."""
    try:
        installed = tuple(int(part) for part in importlib.metadata.version("hypercorn").split(".")[:2])
    except ValueError:
        return False
    return versions[0] <= installed <= versions[1]


@hookimpl(trylast=True)
def engine_http_servers() -> list[HttpServer]:
    """Hypercorn, the default."""
    return [Hypercorn()]
