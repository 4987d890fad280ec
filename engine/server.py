"""Run an app on Hypercorn until SIGTERM/SIGINT (graceful) or a predictor fails to start (exit 1)."""
from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from engine.app import create_app

log = logging.getLogger("engine")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8888


def serve(project_dir: str | Path = ".", config_file: str | Path | None = None, host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, graceful_timeout: float = 30.0, model_poll_interval: float | None = None) -> int:
    """Serve the project's APIs; returns the process exit code. Configuration errors raise EngineError."""
    return asyncio.run(_serve(project_dir, config_file, host, port, graceful_timeout, model_poll_interval))


async def _serve(project_dir, config_file, host: str, port: int, graceful_timeout: float,
                 model_poll_interval: float | None) -> int:
    shutdown = asyncio.Event()
    failures: list[str] = []

    def fail(message: str) -> None:
        log.error(message)
        failures.append(message)
        shutdown.set()

    app = create_app(project_dir, config_file, on_fatal=fail, model_poll_interval=model_poll_interval)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, shutdown.set)

    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    base = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    for runtime in app.state.engine.runtimes:
        aliases = " (also / and /predict)" if len(app.state.engine.runtimes) == 1 else ""
        log.info("api '%s': POST/GET %s%s%s", runtime.api.name, base, runtime.api.endpoint, aliases)
    try:
        await hypercorn_serve(app, config, shutdown_trigger=shutdown.wait)
    except OSError as error:
        log.error("cannot listen on %s:%s: %s; choose another --port or --host", host, port, error.strerror or error)
        return 1
    return 1 if failures else 0
