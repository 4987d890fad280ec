"""`engine serve --server uvicorn`: uvicorn with httptools on engine's event loop — HTTP/1.1 only, and fast.

What it does of the server's part: the bound socket engine hands it, keep-alive timeout, TLS (and client
certificates), a bound on open connections and requests (--max-connections: 503 beyond it), WebSockets, a graceful
stop, and the app's lifespan (run here, so that a start-up failure is engine's one-paragraph error). HTTP/2 it does not speak. Signals stay engine's, and so does the access log.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from engine import ServeSettings, hookimpl


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
            timeout_graceful_shutdown=int(settings.graceful_timeout), limit_concurrency=_bound(settings.max_connections),
            ssl_certfile=settings.certfile, ssl_keyfile=settings.keyfile, ssl_ca_certs=settings.ca_certs,
            ssl_cert_reqs=ssl.CERT_REQUIRED if settings.ca_certs else ssl.CERT_NONE, log_config=None)
        server = _server(config)
        lifespan = Lifespan(app)
        await lifespan.startup()
        serving = asyncio.ensure_future(server.serve(sockets=[listener]))
        stopping = asyncio.ensure_future(shutdown())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await serving
        stopping.cancel()
        await lifespan.shutdown()


class Lifespan:
    """The app's ASGI lifespan, run here rather than by uvicorn, whose start-up failure logs the app's traceback and
    exits the process: here the app's own error is raised from serve(), as engine reports any start-up error."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.to_app: asyncio.Queue = asyncio.Queue()
        self.from_app: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Future | None = None

    async def startup(self) -> None:
        """Run the app's start-up; raise its error when it fails."""
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self.task = asyncio.ensure_future(self.app(scope, self.to_app.get, self.from_app.put))
        await self._step("startup")

    async def shutdown(self) -> None:
        """Run the app's shut-down; raise its error when it fails."""
        await self._step("shutdown")
        await self.task

    async def _step(self, phase: str) -> None:
        await self.to_app.put({"type": f"lifespan.{phase}"})
        answer = asyncio.ensure_future(self.from_app.get())
        await asyncio.wait({answer, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
            self.task.result()  # the app ended without answering: its error, if it raised one
            raise RuntimeError(f"the app's lifespan ended during {phase}")
        if answer.result()["type"] == f"lifespan.{phase}.failed":
            await asyncio.wait({self.task})
            if self.task.exception() is not None:
                raise self.task.exception()
            raise RuntimeError(answer.result().get("message") or f"the app's {phase} failed")


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
