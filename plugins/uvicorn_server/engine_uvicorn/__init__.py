"""`engine serve --server uvicorn`: uvicorn with httptools on engine's event loop — HTTP/1.1 only, and fast.

What it does of the server's part: the bound socket engine hands it, keep-alive timeout, TLS (and client
certificates), a bound on open connections and requests (--max-connections: 503 beyond it), WebSockets, a graceful
stop, and the app's lifespan (run here, so that a start-up failure is engine's one-paragraph error). HTTP/2 it does
not speak. Signals stay engine's, and so does the access log.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from engine import Lifespan, ServeSettings, hookimpl


class Uvicorn:
    """The uvicorn server, as an engine.HttpServer."""

    name = "uvicorn"
    features = frozenset({"tls", "client_certificates", "websockets", "max_connections"})

    async def serve(self, app: Any, listener: socket.socket, settings: ServeSettings,
                    shutdown: Callable[[], Awaitable[None]]) -> None:
        """Serve `app` on the listener until `shutdown` returns, then drain for --graceful-timeout."""
        import uvicorn

        config = uvicorn.Config(
            app, loop="none", http="httptools", ws="websockets-sansio", lifespan="off", access_log=False,
            proxy_headers=False,  # X-Forwarded-* are trusted by a reverse proxy's own settings, not here
            server_header=False, timeout_keep_alive=int(settings.keep_alive_timeout),
            timeout_graceful_shutdown=int(settings.graceful_timeout),
            limit_concurrency=_bound(settings.max_connections),
            ssl_certfile=settings.certfile, ssl_keyfile=settings.keyfile, ssl_ca_certs=settings.ca_certs,
            ssl_cert_reqs=ssl.CERT_REQUIRED if settings.ca_certs else ssl.CERT_NONE, log_config=None)
        server = _server(config)
        lifespan = Lifespan(app)  # run here: a failed start-up raises the app's own error, which engine reports
        await lifespan.start()
        serving = asyncio.ensure_future(server.serve(sockets=[listener]))
        stopping = asyncio.ensure_future(shutdown())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await serving
        stopping.cancel()
        await lifespan.stop()


def _bound(max_connections: int | None) -> int | None:
    """uvicorn's limit_concurrency for at most `max_connections` connections: uvicorn counts the connection that
    asks among those open, so its limit is one more."""
    return None if max_connections is None else max_connections + 1


def _server(config: Any) -> Any:
    """A uvicorn.Server without its own signal handling: engine's SIGTERM and SIGINT decide."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server(config)


@hookimpl
def engine_http_servers():
    """uvicorn."""
    return [Uvicorn()]
