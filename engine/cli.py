"""`engine serve | validate | predict | plugins | run | jobs | models`."""
from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from engine import __version__, settings, tempdirs
from engine.errors import EngineError

if TYPE_CHECKING:
    from engine.plugin_api import Setting

log = logging.getLogger("engine")
LOGGING = ("log_level", "log_format")  # the settings every command takes


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `engine` command."""
    started = time.monotonic()
    args = _parser().parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):  # not when replaced (a test's capture, a redirect)
        sys.stdout.reconfigure(line_buffering=True)  # the predictor's print() shows up as it happens, as in Cortex
    level, log_format = args.log_level, args.log_format
    try:
        if not (level and log_format):
            environment = settings.ServeSettings.load()
            level, log_format = level or environment.log_level, log_format or environment.log_format
        os.environ[settings.env_name("log_format")] = log_format  # worker processes log alike
        from engine.tracebacks import configure_logging

        configure_logging(level, log_format=log_format)
        command: Callable[[argparse.Namespace, float], int] = args.command
        return command(args, started)
    except EngineError as error:
        if log_format == "json":
            log.error("%s", error)
        else:
            print(f"error: {error}", file=sys.stderr)
        return 1


def _serve(args: argparse.Namespace, started: float) -> int:
    serve_settings = settings.ServeSettings.load(vars(args), declared=args.declared)
    if serve_settings.log_format == "json":  # the predictor's prints become log lines (only when serving)
        from engine.logformat import capture_output

        capture_output()
    metrics_dir = None
    if not os.environ.get(settings.MULTIPROCESS_ENV) and _has_worker_processes(args):  # before prometheus_client
        metrics_dir = tempdirs.make("metrics")
        os.environ[settings.MULTIPROCESS_ENV] = str(metrics_dir)
    try:
        log.info("engine %s starting (imports took %.2f s)", __version__, time.monotonic() - started)
        if serve_settings.on:
            return _serve_on(serve_settings.on, args, serve_settings)
        from engine.server import serve

        return serve(args.project_dir, args.config_file, serve_settings)
    finally:
        if metrics_dir:
            tempdirs.remove(metrics_dir)


def _serve_on(target: str, args: argparse.Namespace, serve_settings: settings.ServeSettings) -> int:
    """Hand the project to the plugin that serves on `target`, --on's engine."""
    from pathlib import Path

    from engine.errors import MissingPluginError
    from engine.install_hints import install_requirement
    from engine.plugins import make_plugin_manager

    code: int | None = make_plugin_manager().hook.engine_serve_on(
        target=target, project_dir=Path(args.project_dir).resolve(),
        config_file=Path(args.config_file).resolve() if args.config_file else None, settings=serve_settings)
    if code is None:
        requirement = install_requirement(target)
        hint = f"pip install {requirement}" if requirement else "install the plugin that provides it"
        raise MissingPluginError(f"--on {target}: no installed plugin serves on '{target}'; "
                                 f"{hint}")
    return code


def _has_worker_processes(args: argparse.Namespace) -> bool:
    """True when some API asks for processes_per_replica > 1 (an invalid config is reported later, by serve)."""
    from engine.project.config import load_config
    from engine.project.validate import find_config

    try:
        apis = load_config(find_config(args.project_dir, args.config_file))
    except EngineError:
        return False
    return any(api.predictor.processes_per_replica > 1 for api in apis)


def _validate(args: argparse.Namespace, started: float) -> int:
    from engine.errors import ConfigError
    from engine.project.import_check import check_imports
    from engine.project.loading import load_project

    cpu = settings.ServeSettings.load(vars(args)).cpu
    loaded = load_project(args.project_dir, args.config_file, cpu=cpu)
    for warning in loaded.warnings:
        print(f"warning: {warning}")
    config_file = loaded.config_file
    names = [api.name for api in [*loaded.apis, *loaded.batch_apis]]
    problems = check_imports(config_file, names, cpu, args.import_timeout)
    if problems:
        raise ConfigError("\n".join(f"{config_file}: api '{name}': {problem}" for name, problem in problems.items()))
    for api in loaded.apis:
        print(f"ok: api '{api.name}' ({api.predictor.type} predictor, {api.predictor.path}) at {api.endpoint}")
    for batch_api in loaded.batch_apis:
        print(f"ok: api '{batch_api.name}' (BatchAPI, {batch_api.predictor.type} predictor, "
              f"{batch_api.predictor.path}) at {batch_api.endpoint}")
    for splitter in loaded.splitters:
        print(f"ok: api '{splitter.name}' (TrafficSplitter) at {splitter.endpoint}: {splitter.describe()}")
    return 0


def _predict(args: argparse.Namespace, started: float) -> int:
    from engine.predict_once import PredictOptions, predict_once

    options = PredictOptions(args.project_dir, args.config_file, args.api, args.data, args.content_type, args.include,
                             tuple(args.header), tuple(args.query))
    try:
        return predict_once(options, settings.ServeSettings.load(vars(args)))
    except KeyboardInterrupt:
        return 130


def _plugins(args: argparse.Namespace, started: float) -> int:
    from engine import plugins

    pm = plugins.make_plugin_manager()
    for info in plugins.plugin_infos(pm):
        if args.all or not info.built_in:
            print(f"{info.name}  ({info.distribution})")
            print(f"    hooks: {', '.join(info.hooks)}")
    types = plugins.predictor_types(pm)
    print("predictor types: " + ", ".join(f"{t.name} ({t.class_name})" for t in types.values()))
    print("hardware targets: " + ", ".join(plugins.hardware_targets(pm)))
    if not args.all:
        print("(built-in plugins are not listed: engine plugins --all lists them too)")
    problems = plugins.type_problems(pm)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _run(args: argparse.Namespace, started: float) -> int:
    from engine.jobs.client import json_object
    from engine.jobs.foreground import RunOptions, run_job

    config = None if args.job_config is None else json_object(args.job_config, "--config")
    try:
        return run_job(RunOptions(args.project_dir, args.config_file, args.api, args.items, args.batch_size,
                                  args.workers, config, args.timeout, args.max_receive_count, args.state_dir))
    except KeyboardInterrupt:  # before the job started (once it has, Ctrl+C stops it and run_job says so)
        return 130


def _jobs(args: argparse.Namespace, started: float) -> int:
    from engine.jobs import client

    jobs = client.JobClient(args.url, args.api_key, args.api)
    if args.action == "submit":
        config = None if args.job_config is None else client.json_object(args.job_config, "--config")
        return client.submit(jobs, args.items, args.submission, args.batch_size, args.workers, config, args.timeout,
                             args.max_receive_count, args.dry_run)
    if args.action == "status":
        return client.status(jobs, args.job_id)
    if args.action == "stop":
        return client.stop(jobs, args.job_id)
    return client.list_jobs(jobs)


def _models(args: argparse.Namespace, started: float) -> int:
    from engine import models_client

    models = models_client.ModelsClient(args.url, args.api_key)
    if args.action == "load":
        return models_client.load(models, args.name)
    if args.action == "unload":
        return models_client.unload(models, args.name)
    return models_client.list_models(models)


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors said in one line and exit code 1 like every other start-up error."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="engine", description="Serve Cortex-style predictors over HTTP.")
    parser.add_argument("--version", action="version", version=f"engine {__version__}")
    settings.add_arguments(parser, LOGGING)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    # Every command also takes --log-level and --log-format after its name; given there, they win over those given
    # before it.
    log_level = _Parser(add_help=False)
    settings.add_arguments(log_level, LOGGING, default=argparse.SUPPRESS)

    serve = commands.add_parser("serve", help="serve the APIs of a project", parents=[log_level])
    _project_args(serve)
    declared = _plugin_settings()
    settings.add_arguments(serve, tuple(name for name in settings.setting_names() if name not in LOGGING),
                           declared=declared)
    serve.set_defaults(command=_serve, declared=declared)

    validate = commands.add_parser("validate", help="run every check serve runs before it binds a port",
                                   parents=[log_level])
    _project_args(validate)
    settings.add_arguments(validate, ("cpu",))
    validate.add_argument("--import-timeout", type=float, default=120.0, metavar="SECONDS",
                          help="how long importing each predictor module may take (default: 120)")
    validate.set_defaults(command=_validate)

    predict = commands.add_parser("predict", help="make one prediction in this process, without a server",
                                  parents=[log_level])
    _project_args(predict)
    predict.add_argument("--api", metavar="NAME", help="the RealtimeAPI (needed when there are several)")
    predict.add_argument("-d", "--data", metavar="DATA",
                         help="the request body: inline JSON, @FILE or - (standard input) (default: PROJECT_DIR/"
                              "sample.json)")
    predict.add_argument("--content-type", metavar="TYPE",
                         help="the body's Content-Type (default: application/json, or by @FILE's extension)")
    predict.add_argument("-i", "--include", action="store_true",
                         help="print the status line and headers before the body, as curl -i")
    predict.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                         help="a request header (repeatable)")
    predict.add_argument("--query", action="append", default=[], metavar="NAME=VALUE",
                         help="a query parameter (repeatable)")
    settings.add_arguments(predict, ("cpu",))
    predict.set_defaults(command=_predict)

    plugins = commands.add_parser("plugins", help="list installed plugins, their versions and hooks",
                                  parents=[log_level])
    plugins.add_argument("--all", action="store_true", help="list the built-in plugins too")
    plugins.set_defaults(command=_plugins)

    run = commands.add_parser("run", help="run one job of a BatchAPI in the foreground, without a server",
                              parents=[log_level])
    run.add_argument("project_dir", nargs="?", default=".", metavar="PROJECT_DIR",
                     help="the project directory (default: .)")
    run.add_argument("-f", "--config-file", dest="config_file", metavar="CONFIG",
                     help="the API configuration file (default: PROJECT_DIR/cortex.yaml)")
    run.add_argument("--api", required=True, metavar="NAME", help="the BatchAPI")
    run.add_argument("--items", required=True, metavar="FILE",
                     help="the job's items: JSON values, one item each (JSON lines), streamed")
    run.add_argument("--batch-size", type=int, default=1, metavar="N", help="items per batch (default: 1)")
    _job_args(run, workers_default=1)
    run.add_argument("--state-dir", metavar="DIR", help="keep the job's state, log and dead letters here (default: a "
                                                        "temporary directory; the log is kept)")
    run.set_defaults(command=_run)

    jobs = commands.add_parser("jobs", help="submit, follow and stop the jobs of a running engine serve")
    actions = jobs.add_subparsers(required=True, dest="action", metavar="ACTION")
    connection = _Parser(add_help=False, parents=[log_level])
    connection.add_argument("--url", help="the server (default: $ENGINE_URL or http://127.0.0.1:8888)")
    connection.add_argument("--api-key", metavar="KEY",
                            help="sent as Authorization: Bearer KEY (default: $ENGINE_API_KEY)")
    server = _Parser(add_help=False, parents=[connection])
    server.add_argument("api", metavar="API", help="the BatchAPI: its name, or its endpoint path")
    submit = actions.add_parser("submit", help="submit a job; prints its JobSpec", parents=[server])
    given = submit.add_mutually_exclusive_group(required=True)
    given.add_argument("--items", metavar="FILE", help="the items: JSON values, one item each (sent as item_list)")
    given.add_argument("--submission", metavar="FILE.json", help="a Cortex job submission (JSON) to send")
    submit.add_argument("--batch-size", type=int, metavar="N", help="items per batch, with --items (default: 1)")
    _job_args(submit, workers_default=None)
    submit.add_argument("--dry-run", action="store_true", help="list the files the job would read, run nothing")
    for action, text in (("status", "print a job's status"), ("stop", "stop a job")):
        actions.add_parser(action, help=text, parents=[server]).add_argument("job_id", metavar="JOB_ID")
    actions.add_parser("list", help="list the API's jobs, newest first", parents=[server])
    jobs.set_defaults(command=_jobs)

    models = commands.add_parser("models", help="list, load and unload the models of a running engine serve "
                                                "(the Open Inference Protocol's model repository API)")
    actions = models.add_subparsers(required=True, dest="action", metavar="ACTION")
    actions.add_parser("list", help="every model version of every API, and its state", parents=[connection])
    for action, text in (("load", "make a model available and load it now, in every process of its API"),
                         ("unload", "make a model unavailable (503) and free its memory, in every process of its API")):
        actions.add_parser(action, help=text, parents=[connection]).add_argument(
            "name", metavar="NAME", help="the model: <api> (an API with one model) or <api>.<model>")
    models.set_defaults(command=_models)
    return parser


def _job_args(parser: argparse.ArgumentParser, workers_default: int | None) -> None:
    """A job's options, as a submission's keys."""
    parser.add_argument("--workers", type=int, default=workers_default, metavar="N",
                        help="worker processes, each with its own predictor (default: 1" +
                             (")" if workers_default else ", or the --submission file's)"))
    parser.add_argument("--config", dest="job_config", metavar="JSON",
                        help="the job's config (a JSON object), merged over predictor.config")
    parser.add_argument("--timeout", type=int, metavar="SECONDS", help="end the job as status_timed_out after this")
    parser.add_argument("--max-receive-count", type=int, metavar="N",
                        help="attempts per batch before it is kept as failed (sqs_dead_letter_queue's; default: "
                             "a failed batch is not retried)")


def _plugin_settings() -> list[Setting]:
    """The settings the installed plugins own, as flags of engine serve; none when the plugins cannot be loaded (the
    command then says why)."""
    from engine import plugins

    try:
        return plugins.settings(plugins.make_plugin_manager(warn=False))
    except EngineError:
        return []


def _project_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project_dir", nargs="?", default=".", metavar="PROJECT_DIR",
                        help="the project directory (default: .)")
    parser.add_argument("-f", "--config", dest="config_file", metavar="CONFIG",
                        help="the API configuration file (default: PROJECT_DIR/cortex.yaml)")
