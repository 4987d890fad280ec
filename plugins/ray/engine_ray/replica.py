"""One Ray Serve replica: the very app `engine serve` runs, restricted to one API (or, for a project of several APIs,
the server routes; or one TrafficSplitter), with /readyz and /metrics answered for the whole project."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from engine import (
    METRICS_PATH,
    READYZ_PATH,
    Lifespan,
    ServeSettings,
    create_app,
    load_project,
    play,
)
from engine_ray import asgi, splitter
from engine_ray.metrics import COLLECTOR_NAME, REPORT_INTERVAL

log = logging.getLogger("engine")

NAMESPACE = "engine"  # the Ray namespace of engine's own actors (the metrics collector)
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's: where worker processes write their samples
READY_POLL = 0.05  # seconds between looks at /readyz while the predictor starts


@dataclass(frozen=True)
class ReplicaSpec:
    """What a replica serves: the project, the settings, and the API (None: the project's server routes)."""

    config_name: str  # the configuration file, relative to the project directory
    settings: ServeSettings
    api: str | None
    apps: dict[str, str]  # every API of the project → the Ray application serving it
    project_dir: str | None = None  # None: Ray's working directory (the project, uploaded)
    worker_processes: bool = False  # the API runs its predictor in worker processes (processes_per_replica > 1)
    keys: tuple[str, ...] = field(default=(), repr=False)
    # the variables the API's predictor runs with, worked out once by the driver as engine serve works them out
    # (not Ray's env_vars, which would expand a `$` the project's .env kept literal)
    environment: dict[str, str] = field(default_factory=dict, repr=False)
    splitter: str | None = None  # a TrafficSplitter's replica (api is None): the splitter's name
    working_dir: str | None = None  # a BatchAPI's replica: the runtime_env working_dir of its jobs' worker actors
    # the OpenTelemetry configuration (OTEL_*) engine serve --on ray was started with: a tracing plugin in the replica
    # reads it as engine serve's would (a cluster's nodes do not share the driver's environment)
    telemetry: dict[str, str] = field(default_factory=dict, repr=False)

    def auth(self) -> list[tuple[bytes, bytes]]:
        """The header that opens /metrics when keys are required."""
        return [(b"authorization", b"Bearer " + self.keys[0].encode())] if self.keys else []


@serve.ingress()
class EngineReplica:
    """Builds the app, starts its predictor and waits until it is ready, before Ray sends it any request."""

    def __init__(self, spec: ReplicaSpec) -> None:
        self.spec = spec
        self.fatal: str | None = None
        self.metrics_dir: str | None = None
        self.lifespan: Lifespan | None = None
        self.reporter: Reporter | None = None
        self.routes: Any = None  # the app built (a ClusterRoutes), which forward plays requests into

    async def __serve_build_asgi_app__(self) -> Any:
        self.routes = await self._build()
        return self.routes

    async def _build(self) -> ClusterRoutes:
        spec = self.spec
        configure_logging(spec.settings.log_level)
        os.environ.update(spec.telemetry)
        project_dir = spec.project_dir or os.getcwd()
        self.metrics_dir = metrics_directory(spec)
        if spec.splitter is not None:
            return await self._splitter(project_dir)
        settings = spec.settings
        if spec.api is None:  # the server routes: every API's documentation, no predictor, no hardware
            settings = dataclasses.replace(settings, cpu=True)
        # Checked again on this node (its hardware, its copy of the files); the driver has said the warnings. A
        # BatchAPI's replica (given its workers' working_dir) runs no predictor: its actors check their own nodes.
        project = load_project(project_dir, os.path.join(project_dir, spec.config_name), cpu=settings.cpu,
                               apis=None if spec.api is None else [spec.api], hardware=spec.working_dir is None)
        project.environment = dict(spec.environment)
        launcher = None
        if spec.api is None:  # the BatchAPIs' job routes and state are their own replicas'
            project = dataclasses.replace(project, batch_apis=[])
        elif project.batch_apis:  # a BatchAPI: its jobs' workers are Ray actors
            from engine_ray.jobs import RayLauncher

            assert spec.working_dir is not None, "the driver gives a BatchAPI's replica its workers' working_dir"
            launcher = RayLauncher(project.batch_apis[0], settings.cpu, spec.working_dir, spec.project_dir,
                                   spec.config_name, dict(spec.environment), settings.log_level)
        app = create_app(settings=settings, on_fatal=self._on_fatal, project=project, job_launcher=launcher)
        if spec.api is not None:
            self.lifespan = lifespan = Lifespan(app)
            await lifespan.start()
            await self._wait_ready(app, lifespan)
            self.reporter = Reporter(app, spec)
        return ClusterRoutes(app, spec)

    async def _splitter(self, project_dir: str) -> ClusterRoutes:
        """A TrafficSplitter's app: engine's splitter over the APIs' applications, and no API of its own."""
        spec = self.spec
        settings = dataclasses.replace(spec.settings, cpu=True)
        project = load_project(project_dir, os.path.join(project_dir, spec.config_name), cpu=True)
        config = next(splitter for splitter in project.splitters if splitter.name == spec.splitter)
        served = dataclasses.replace(project, apis=[], splitters=[config], environment={}, batch_apis=[])
        app = create_app(settings=settings, on_fatal=self._on_fatal, project=served,
                         targets=splitter.targets(config, project.apis, spec.apps))
        self.lifespan = Lifespan(app)
        await self.lifespan.start()
        self.reporter = Reporter(app, spec)
        return ClusterRoutes(app, spec)

    async def forward(self, scope: dict[str, Any], body: bytes) -> AsyncIterator[dict[str, Any]]:
        """A request a TrafficSplitter's replica hands this API (scope: engine.forwarded_scope), answered by this
        replica's app as a request through Ray's proxy is; its ASGI messages, as they come."""
        assert self.routes is not None, "a replica gets requests only once its app is built"
        async with play(self.routes, scope, _sent(body)) as played:
            yield {"type": "http.response.start", "status": played.status, "headers": list(played.headers)}
            if played.chunks is None:
                yield {"type": "http.response.body", "body": played.body}
                return
            async for chunk in played.chunks:
                yield {"type": "http.response.body", "body": chunk, "more_body": True}
            yield {"type": "http.response.body", "body": b""}

    def check_health(self) -> None:
        """Ray asks every few seconds; a replica whose predictor can no longer serve is replaced."""
        if self.fatal:
            raise RuntimeError(self.fatal)

    async def __del__(self) -> None:
        if self.reporter:
            await self.reporter.stop()
        if self.lifespan:
            await self.lifespan.stop()
        if self.metrics_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _on_fatal(self, message: str) -> None:
        log.error(message)
        self.fatal = message

    async def _wait_ready(self, app: Any, lifespan: Lifespan) -> None:
        """Until /readyz is 200; the predictor's failure, or --worker-init-timeout passing, fails the replica."""
        deadline = time.monotonic() + self.spec.settings.worker_init_timeout
        while (await asgi.get(app, READYZ_PATH))[0] != 200:
            if self.fatal or time.monotonic() > deadline:
                await lifespan.stop()
                raise RuntimeError(self.fatal or f"api '{self.spec.api}': the predictor was not ready after "
                                   f"--worker-init-timeout ({self.spec.settings.worker_init_timeout:g} s)")
            await asyncio.sleep(READY_POLL)


class ClusterRoutes:
    """The replica's app, except that /readyz and /metrics, once the app has let the request through (Host check,
    API keys), answer for the whole project rather than for this replica."""

    def __init__(self, app: Any, spec: ReplicaSpec) -> None:
        self.app = app
        self.spec = spec

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # the replica drives the app's own lifespan
            await self._lifespan(receive, send)
            return
        # Ray's proxy sets root_path to the application's route prefix and keeps the whole path, which engine's
        # routes match (Starlette's, a BatchAPI's job routes among them, would match the path less the prefix)
        scope = {**scope, "root_path": ""}
        if scope["type"] == "http" and scope["path"] in (READYZ_PATH, METRICS_PATH):
            async with play(self.app, scope, receive) as played:
                status, body = played.status, await played.read()
            headers = [(name, value) for name, value in played.headers if name.lower() != b"content-length"]
            if scope["path"] == READYZ_PATH and status in (200, 503):
                status, body = await cluster_readiness(self.spec.apps)
            elif scope["path"] == METRICS_PATH and status == 200:
                body = await cluster_metrics() or body
            await asgi.answer(send, status, [*headers, (b"content-length", str(len(body)).encode())], body)
        elif scope["type"] == "http":
            await self.app(scope, receive, without_request_id(send))
        else:
            await self.app(scope, receive, send)

    @staticmethod
    async def _lifespan(receive: Any, send: Any) -> None:
        while True:
            event = (await receive())["type"]
            await send({"type": f"{event}.complete"})
            if event == "lifespan.shutdown":
                return


def _sent(body: bytes) -> Any:
    """The `receive` of a request whose body has come whole: the body, then a client that waits for the answer."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await asyncio.get_running_loop().create_future()  # never: the answer's end cancels the wait
        raise AssertionError("unreachable")
    return receive


def without_request_id(send: Any) -> Any:
    """`send`, leaving X-Request-ID out of the response: Ray's proxy adds it (the id it gave the request, which engine
    took), and a client must not get it twice."""
    async def sending(message: dict) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [(name, value) for name, value in message.get("headers", ())
                                  if name.lower() != b"x-request-id"]
        await send(message)
    return sending


async def cluster_readiness(apps: dict[str, str]) -> tuple[int, bytes]:
    """/readyz for the project: 200 when every API's application is running; each API's state and replicas."""
    import json

    status = await asyncio.to_thread(serve.status)
    states, replicas = {}, {}
    for api, app_name in apps.items():
        app = status.applications.get(app_name)
        state = getattr(app.status, "value", app.status) if app else "NOT_DEPLOYED"
        states[api] = {"RUNNING": "ready", "DEPLOYING": "initialising"}.get(state) or \
            f"{state.lower()}: {app.message if app else 'no such application'}".rstrip(": ")
        deployment = app.deployments.get(api) if app else None
        replicas[api] = sum(count for state_, count in (deployment.replica_states if deployment else {}).items()
                            if getattr(state_, "value", state_) == "RUNNING")
    ready = all(state == "ready" for state in states.values())
    body = {"ready": ready, "apis": states, "replicas": replicas}
    return (200 if ready else 503), json.dumps(body, separators=(",", ":")).encode()


async def cluster_metrics() -> bytes | None:
    """The collector's sums (None when it cannot be reached: the replica's own samples are answered)."""
    import ray

    try:
        collector = ray.get_actor(COLLECTOR_NAME, namespace=NAMESPACE)
        return (await collector.render.remote()).encode()
    except Exception as error:  # noqa: BLE001 - any failure of the cluster falls back to the local samples
        log.warning("/metrics: the project's metrics collector cannot be reached (%s); answering this replica's "
                    "samples", error)
        return None


class Reporter:
    """Sends the replica's samples to the collector every REPORT_INTERVAL seconds, and a last time when it stops."""

    def __init__(self, app: Any, spec: ReplicaSpec) -> None:
        self.app = app
        self.spec = spec
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self.task.cancel()
        await self._send(final=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            await self._send()

    async def _send(self, final: bool = False) -> None:
        import ray

        try:
            status, body = await asgi.get(self.app, METRICS_PATH, self.spec.auth())
            if status != 200:
                raise RuntimeError(f"{METRICS_PATH} answered {status}")
            collector = ray.get_actor(COLLECTOR_NAME, namespace=NAMESPACE)
            await collector.report.remote(self.replica, self.spec.api or self.spec.splitter, body.decode(), final)
        except Exception as error:  # noqa: BLE001 - the collector may be gone (the driver stopping); serving goes on
            log.debug("metrics report failed: %s", error)


def telemetry_environment() -> dict[str, str]:
    """The OTEL_* variables of this process (the driver's), for the replicas."""
    return {name: value for name, value in os.environ.items() if name.startswith("OTEL_")}


def metrics_directory(spec: ReplicaSpec) -> str | None:
    """A folder of the replica's own for its worker processes' samples (none without worker processes), set before
    create_app makes its metrics."""
    os.environ.pop(MULTIPROCESS_ENV, None)  # inherited from the driver's environment: not this replica's
    folder = None
    if spec.worker_processes:
        folder = tempfile.mkdtemp(prefix="engine-ray-metrics-")
        os.environ[MULTIPROCESS_ENV] = folder
    if "prometheus_client.values" in sys.modules:  # Ray's worker imported it before this choice, read at import
        from prometheus_client import values

        values.ValueClass = values.get_value_class()
    return folder


def configure_logging(level: str) -> None:
    """engine's log lines (the access log among them) on the replica's stderr, which Ray shows the driver."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("engine").setLevel(level.upper())
