"""Run an app on Hypercorn until SIGTERM/SIGINT (graceful) or a predictor fails to start (exit 1)."""
from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from engine.app import create_app

log = logging.getLogger("engine")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8888


def serve(project_dir: str | Path = ".", config_file: str | Path | None = None, host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, graceful_timeout: float = 30.0, **app_options: float | None) -> int:
    """Serve the project's APIs; returns the process exit code. Configuration errors raise EngineError.

    `app_options` are create_app's keyword options (model_poll_interval, worker_init_timeout).
    """
    return run_event_loop(_serve(project_dir, config_file, host, port, graceful_timeout, app_options))


def run_event_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed (a faster event loop), else on asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _serve(project_dir, config_file, host: str, port: int, graceful_timeout: float, app_options: dict) -> int:
    shutdown = asyncio.Event()
    failures: list[str] = []

    def fail(message: str) -> None:
        log.error(message)
        failures.append(message)
        shutdown.set()

    app = create_app(project_dir, config_file, on_fatal=fail, **app_options)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, shutdown.set)

    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    base = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    backends = app.state.engine.backends
    for backend in backends:
        aliases = " (also / and /predict)" if len(backends) == 1 else ""
        processes, threads = backend.api.predictor.processes_per_replica, backend.api.predictor.threads_per_process
        log.info("api '%s': POST/GET %s%s%s, %d process%s x %d thread%s", backend.api.name, base,
                 backend.api.endpoint, aliases, processes, "es" if processes > 1 else "", threads,
                 "s" if threads > 1 else "")
    try:
        await hypercorn_serve(app, config, shutdown_trigger=shutdown.wait)
    except OSError as error:
        log.error("cannot listen on %s:%s: %s; choose another --port or --host", host, port, error.strerror or error)
        return 1
    return 1 if failures else 0
