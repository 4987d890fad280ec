"""The built-in HTTP server: Hypercorn (HTTP/1.1, HTTP/2 over TLS and in cleartext, WebSockets, TLS)."""
from __future__ import annotations

import importlib.metadata
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

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
        config.bind = [f"fd://{listener.detach()}"]
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
        # hypercorn types scopes as TypedDicts, starlette (and so engine) as MutableMapping: the same dicts
        await serve(app, config, shutdown_trigger=shutdown)  # type: ignore[arg-type]


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
    version = importlib.metadata.version("hypercorn")
    try:
        checked = CHECKED_HYPERCORN[0] <= tuple(int(part) for part in version.split(".")[:2]) <= CHECKED_HYPERCORN[1]
    except ValueError:
        checked = False
    if not checked:
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


@hookimpl(trylast=True)
def engine_http_servers() -> list[HttpServer]:
    """Hypercorn, the default."""
    return [Hypercorn()]
