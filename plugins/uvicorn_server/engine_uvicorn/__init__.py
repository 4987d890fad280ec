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
        stopping = asyncio.ensure_future(_stop_accepting(server, shutdown))
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await serving
        stopping.cancel()
        await lifespan.stop()


async def _stop_accepting(server: Any, shutdown: Callable[[], Awaitable[None]]) -> None:
    """Once `shutdown` returns, close the listener at once: engine says Connection: close from the event loop's next
    step on, and a client told so must find no listener to reconnect to (uvicorn would close it at its next tick)."""
    await shutdown()
    for listening in getattr(server, "servers", []):  # none yet when it is still starting
        listening.close()


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

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            """uvicorn's graceful stop, except that an idle keep-alive connection is left open until its next request
            (answered with Connection: close) or its keep-alive timeout: closed at once, it would lose a request its
            client is sending. The rest are told to close (a request in flight, a WebSocket)."""
            for listening in self.servers:
                listening.close()
            for sock in sockets or []:
                sock.close()
            for connection in list(self.server_state.connections):
                if not _idle_http(connection):
                    connection.shutdown()
            try:
                async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                    await self._wait_tasks_to_complete()
            except TimeoutError:
                for connection in list(self.server_state.connections):
                    connection.shutdown()
                for task in self.server_state.tasks:
                    task.cancel(msg="--graceful-timeout has passed")
            if not self.force_exit:
                await self.lifespan.shutdown()

    return Server(config)


def _idle_http(connection: Any) -> bool:
    """True for an HTTP connection between two requests (or before its first)."""
    if not hasattr(connection, "cycle"):  # a WebSocket connection
        return False
    return connection.cycle is None or bool(connection.cycle.response_complete)


@hookimpl
def engine_http_servers():
    """uvicorn."""
    return [Uvicorn()]
