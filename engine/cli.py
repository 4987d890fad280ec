"""`engine serve | validate | plugins`."""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time

from engine import __version__
from engine.errors import EngineError

log = logging.getLogger("engine")

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # engine.metrics reads it; importing that module here would be too early


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `engine` command."""
    started = time.monotonic()
    args = _parser().parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # the predictor's print() shows up as it happens, as in Cortex
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.command(args, started)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _serve(args: argparse.Namespace, started: float) -> int:
    metrics_dir = None
    if not os.environ.get(MULTIPROCESS_ENV) and _has_worker_processes(args):  # set before prometheus_client loads
        metrics_dir = os.environ[MULTIPROCESS_ENV] = tempfile.mkdtemp(prefix="engine-metrics-")
    try:
        return _serve_project(args, started)
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _has_worker_processes(args: argparse.Namespace) -> bool:
    """True when some API asks for processes_per_replica > 1 (an invalid config is reported later, by serve)."""
    from engine.config import load_config
    from engine.validate import find_config

    try:
        apis = load_config(find_config(args.project_dir, args.config_file))
    except EngineError:
        return False
    return any(api.predictor.processes_per_replica > 1 for api in apis)


def _serve_project(args: argparse.Namespace, started: float) -> int:
    from engine.server import serve

    log.info("engine %s starting (imports took %.2f s)", __version__, time.monotonic() - started)
    return serve(args.project_dir, args.config_file, host=args.host, port=args.port,
                 graceful_timeout=args.graceful_timeout, model_poll_interval=args.model_poll_interval,
                 worker_init_timeout=args.worker_init_timeout)


def _validate(args: argparse.Namespace, started: float) -> int:
    from engine.validate import validate_project

    validated = validate_project(args.project_dir, args.config_file)
    for warning in validated.warnings:
        print(f"warning: {warning}")
    for api in validated.apis:
        print(f"ok: api '{api.name}' ({api.predictor.type} predictor, {api.predictor.path}) at {api.endpoint}")
    return 0


def _plugins(args: argparse.Namespace, started: float) -> int:
    from engine.plugins import make_plugin_manager, plugin_infos, predictor_types

    pm = make_plugin_manager()
    for info in plugin_infos(pm):
        print(f"{info.name}  ({info.distribution} {info.version})")
        print(f"    hooks: {', '.join(info.hooks)}")
    types = predictor_types(pm)
    print("predictor types: " + ", ".join(f"{t.name} ({t.class_name})" for t in types.values()))
    targets = sorted({t for found in pm.hook.engine_hardware_targets() for t in found or ()})
    print("hardware targets: " + ", ".join(targets))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engine", description="Serve Cortex-style predictors over HTTP.")
    parser.add_argument("--version", action="version", version=f"engine {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the APIs of a project")
    _project_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8888, help="port to listen on (default: 8888)")
    serve.add_argument("--graceful-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="on SIGTERM, how long to wait for in-flight requests (default: 30)")
    serve.add_argument("--model-poll-interval", type=float, default=None, metavar="SECONDS",
                       help="how often model directories are checked for new versions (default: "
                            "$ENGINE_MODEL_POLL_INTERVAL or 10)")
    serve.add_argument("--worker-init-timeout", type=float, default=None, metavar="SECONDS",
                       help="with processes_per_replica > 1, how long a worker may take to finish __init__ "
                            "(default: $ENGINE_WORKER_INIT_TIMEOUT or 600)")
    serve.set_defaults(command=_serve)

    validate = commands.add_parser("validate", help="run every check serve runs before it binds a port")
    _project_args(validate)
    validate.set_defaults(command=_validate)

    plugins = commands.add_parser("plugins", help="list installed plugins, their versions and hooks")
    plugins.set_defaults(command=_plugins)
    return parser


def _project_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project_dir", nargs="?", default=".", metavar="PROJECT_DIR",
                        help="the project directory (default: .)")
    parser.add_argument("-f", "--config", dest="config_file", metavar="CONFIG",
                        help="the API configuration file (default: PROJECT_DIR/cortex.yaml)")
