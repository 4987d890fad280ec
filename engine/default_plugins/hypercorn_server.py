"""The built-in HTTP server: Hypercorn (HTTP/1.1, HTTP/2 over TLS and in cleartext, WebSockets, TLS)."""
from __future__ import annotations

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
        # An HTTP/2 connection opened with prior knowledge that never sends a request is not closed by Hypercorn's
        # keep-alive timer: a silent connection goes once nothing has been read from it for longer than any request
        # may take. (A connection waiting for its response reads nothing either, hence the margin.)
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


@hookimpl(trylast=True)
def engine_http_servers() -> list[HttpServer]:
    """Hypercorn, the default."""
    return [Hypercorn()]
