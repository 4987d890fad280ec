"""Run an app on the chosen HTTP server (a plugin; Hypercorn by default) until SIGTERM/SIGINT (graceful) or a
predictor fails to start (exit 1)."""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from engine import tempdirs
from engine.errors import EngineError
from engine.serving.eventloop import run_event_loop
from engine.serving.security import describe
from engine.serving.splitter import reload as reload_splitters
from engine.settings import ServeSettings

if TYPE_CHECKING:
    from engine.app import EngineApp
    from engine.plugin_api import HttpServer
    from engine.reload import Reloader

log = logging.getLogger("engine")

BACKLOG = 1024


def serve(project_dir: str | Path = ".", config_file: str | Path | None = None,
          settings: ServeSettings | None = None) -> int:
    """Serve the project's APIs; returns the process exit code. Start-up errors raise EngineError."""
    return run_event_loop(_serve(project_dir, config_file, settings or ServeSettings.load()))


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; EngineError saying why when there cannot be one."""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as error:
        reason = error.strerror if isinstance(error, socket.gaierror) else str(error)
        raise EngineError(f"cannot listen on {where}: {host!r} is not an address or a host name of this machine "
                          f"({reason}); give --host an address such as 127.0.0.1 or 0.0.0.0") from None
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted connections
        listener.bind(address)
        listener.listen(BACKLOG)
    except OSError as error:
        listener.close()
        hint = "another process is listening there; stop it or choose another --port" \
            if error.errno == 98 else "choose another --host or --port"
        raise EngineError(f"cannot listen on {where}: {error.strerror or error}; {hint}") from None
    return listener


async def _serve(project_dir: str | Path, config_file: str | Path | None, settings: ServeSettings) -> int:
    from engine import plugins
    from engine.app import create_app

    shutdown = asyncio.Event()
    failures: list[str] = []

    def fail(message: str) -> None:
        log.error(message)
        failures.append(message)
        shutdown.set()

    pm = plugins.make_plugin_manager()
    server = plugins.http_server(pm, settings.server)
    check_features(server, settings)
    app = create_app(project_dir, config_file, settings=settings, pm=pm, on_fatal=fail)
    listener = bind(settings.host, settings.port)  # before anything starts, so that its errors are the only output
    raise_open_file_limit()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, shutdown.set)
    _announce(app, settings, listener.getsockname()[1], server.name)
    state = app.state.engine
    if state.splitters:  # SIGHUP re-reads their weights (without splitters it keeps its default: it ends the process)
        loop.add_signal_handler(signal.SIGHUP, reload_splitters, state.splitters, state.project.config_file,
                                [api.name for api in state.apis])

    async def stop_when_asked() -> None:
        await shutdown.wait()
        # The server closes its listener as this returns, before its next await; responses say Connection: close
        # only from the loop's next step on. A client told to close before then would reconnect while the listener
        # was still open, and its request, sent on a connection nobody would accept, be reset.
        loop.call_soon(state.drain)
        log.info("stopping: no new connections; requests in flight have %g s to finish", settings.graceful_timeout)

    reloader = _start_reloader(app, shutdown) if settings.reload else None
    try:
        await server.serve(app, listener, settings, stop_when_asked)
    finally:
        if reloader is not None:
            reloader[1].cancel()
            await reloader[0].close()
    code = 1 if failures or not state.stopped_cleanly else 0
    if not state.stopped_cleanly:  # a thread that never returns would keep the interpreter from exiting
        tempdirs.remove_all()
        logging.shutdown()
        os._exit(code)
    return code


def _start_reloader(app: EngineApp, stop: asyncio.Event) -> tuple[Reloader, asyncio.Task[None]]:
    """--reload: watch the project once its predictors have started."""
    from engine.reload import Reloader

    reloader = Reloader(app)
    state = app.state.engine

    async def watch() -> None:
        while state.init_task is None:
            await asyncio.sleep(0.02)
        await asyncio.wait([state.init_task])
        log.info("--reload: watching %s for changes (for development: each change rebuilds what it touches)",
                 state.project.root)
        await reloader.run(stop)

    return reloader, asyncio.create_task(watch())


def check_features(server: HttpServer, settings: ServeSettings) -> None:
    """Refuse to start when a flag asks for what the chosen HTTP server cannot do (never drop a limit silently)."""
    wanted = {"tls": settings.certfile or settings.keyfile or settings.ca_certs,
              "client_certificates": settings.ca_certs, "max_connections": settings.max_connections}
    for feature, flag in (("tls", "--certfile"), ("client_certificates", "--ca-certs"),
                          ("max_connections", "--max-connections")):
        if wanted[feature] and feature not in server.features:
            raise EngineError(f"{flag}: the {server.name} server cannot do that; choose a server that can with "
                              "--server (engine serve --help lists the installed ones)")
    if wanted["tls"]:
        _check_tls_files(settings)


def _check_tls_files(settings: ServeSettings) -> None:
    if not (settings.certfile and settings.keyfile):
        raise EngineError("HTTPS needs both --certfile and --keyfile (and --ca-certs only with them)")
    for flag, path in (("--certfile", settings.certfile), ("--keyfile", settings.keyfile),
                       ("--ca-certs", settings.ca_certs)):
        if path and not Path(path).is_file():
            raise EngineError(f"{flag} {path}: no such file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.certfile, settings.keyfile)
    except (ssl.SSLError, OSError) as error:
        raise EngineError(f"cannot use --certfile {settings.certfile} and --keyfile {settings.keyfile}: "
                          f"{error}") from None


def raise_open_file_limit() -> None:
    """Let this process open as many files (connections) as the system allows it, not just the soft default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as error:
            log.debug("cannot raise the open-file limit from %s to %s: %s", soft, hard, error)


def _announce(app: EngineApp, settings: ServeSettings, port: int, server: str) -> None:
    host = settings.host
    scheme = "https" if settings.certfile else "http"
    base = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}"
    log.info("listening on %s (%s)", base, server)
    backends = app.state.engine.backends
    for backend in backends:
        aliases = " (also / and /predict)" if len(backends) == 1 else ""
        processes, threads = backend.api.predictor.processes_per_replica, backend.api.predictor.threads_per_process
        log.info("api '%s': POST/GET %s%s%s, %d process%s x %d thread%s", backend.api.name, base,
                 backend.api.endpoint, aliases, processes, "es" if processes > 1 else "", threads,
                 "s" if threads > 1 else "")
    for splitter in app.state.engine.splitters:
        log.info("TrafficSplitter '%s': POST %s%s to one of %s (SIGHUP re-reads the weights)", splitter.name, base,
                 splitter.endpoint, splitter.config.describe())
    for jobs in app.state.engine.jobs:
        log.info("BatchAPI '%s': jobs at %s%s (POST submits, GET ?jobID= is a job's status, DELETE ?jobID= stops "
                 "it); kept in %s", jobs.api.name, base, jobs.api.endpoint, jobs.store.state_dir)
    for warning in describe(app.guard, settings):
        log.warning("%s", warning)
