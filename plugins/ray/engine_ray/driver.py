"""`engine serve --on ray`: check the project, deploy one Ray Serve application per API, serve until SIGTERM, then
delete everything this run started."""
from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve.schema import ReplicaState

from engine import EngineError, LoadedProject, ServeSettings, load_project
from engine_ray import cluster, jobs, mapping, splitter
from engine_ray.project import read_keys
from engine_ray.replica import EngineReplica, ReplicaSpec, telemetry_environment

log = logging.getLogger("engine")

FRONT_APP = "engine.server"  # the server routes of a project of several APIs ('.' is in no API name)
POLL = 0.5  # seconds between looks at Serve's status while deploying and deleting
WATCH = 2.0  # seconds between looks while serving
STOP_MARGIN = 10.0  # seconds allowed beyond --graceful-timeout for the applications to be deleted
HEAD_NODE = "node:__internal_head__"  # the resource only Ray's head node has
RAY_STATE = "ray"  # the state directory's folder of the BatchAPIs' replicas, one folder each
JOB_API_CONCURRENCY = 100  # requests a BatchAPI's replica takes at once (submissions, status, stop: no predict)


def serve_on_ray(project_dir: Path, config_file: Path | None, settings: ServeSettings) -> int:
    """Deploy, serve until SIGTERM or SIGINT, clean up; the exit code."""
    mapping.check_settings(settings)
    local = not settings.address
    # Every check engine serve runs; on a cluster, whose nodes are not this machine, each replica checks its hardware.
    project = load_project(project_dir, config_file, cpu=settings.cpu, hardware=local)
    keys = read_keys(settings)
    # The warnings of engine serve on this machine (what it leaves unapplied, APIs sharing a process) are Ray's to say.
    for warning in [warning.message for warning in project.warnings if not warning.local] + \
            [line for api in [*project.apis, *project.batch_apis] for line in mapping.api_warnings(api)] + \
            mapping.settings_warnings(settings):
        log.warning("%s", warning)
    started = time.monotonic()
    working_dir = cluster.connect(settings, project.project.root)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which sets a handler of its own
        signal.signal(signum, lambda *_: stop.set())
    deployment = Deployment(project, settings, keys, local, working_dir)
    try:
        cluster.check_placement(project.apis, settings.cpu, local)
        jobs.check_workers(list(project.batch_apis), settings.cpu, local)
        deployment.start()
        if deployment.wait_running(stop, settings.worker_init_timeout):
            log.info("ready in %.1f s: every API's replicas have finished __init__", time.monotonic() - started)
            deployment.announce()
            deployment.watch(stop)
        log.info("stopping: deleting the applications (requests in flight have %g s to finish)",
                 settings.graceful_timeout)
    finally:
        clean = deployment.remove(settings.graceful_timeout + STOP_MARGIN)
        if local:
            ray.shutdown()  # the local instance with it
    return 0 if clean else 1


class Deployment:
    """The Ray Serve applications of one project, and what was started for them."""

    def __init__(self, project: LoadedProject, settings: ServeSettings, keys: tuple[str, ...], local: bool,
                 working_dir: str) -> None:
        self.project = project
        self.settings = settings
        self.keys = keys
        self.local = local
        self.working_dir = working_dir
        single = len(project.apis) == 1
        self.routes = {api.name: "/" if single else api.endpoint for api in project.apis}  # Ray app → route
        if not single:
            self.routes[FRONT_APP] = "/"
        self.routes.update((splitter.name, splitter.endpoint) for splitter in project.splitters)
        self.routes.update((api.name, api.endpoint) for api in project.batch_apis)
        # a BatchAPI's jobs (SQLite, logs, dead letters) are kept on the head node, where its replica runs
        self.state_dir = Path(settings.state_dir or project.project.root / ".engine").resolve()
        self.started_serve = False
        self.collector: Any = None
        self.deployed: list[str] = []
        self.last_seen: dict[str, str] = {}

    def start(self) -> None:
        """Start Serve and the collector, then every application, without waiting for them."""
        taken = sorted(set(self.routes) & set(serve.status().applications))
        if taken:
            raise EngineError(f"the Ray cluster already serves application{'s' * (len(taken) > 1)} "
                              f"{', '.join(taken)}: stop the engine serving it (or `serve delete` it) first")
        self.started_serve = cluster.start_serve(self.settings)
        self.collector = cluster.start_collector()
        targets = [serve.RunTarget(self._application(name), name=name, route_prefix=route)
                   for name, route in self.routes.items()]
        self.deployed = list(self.routes)
        serve.run_many(targets, wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)

    def _application(self, name: str) -> Any:
        """One application: EngineReplica with the API's options, or the server routes on no resources."""
        settings = mapping.replica_settings(self.settings, self.keys)
        apps = {api.name: api.name for api in [*self.project.apis, *self.project.batch_apis]}
        working_dir = self.working_dir
        root = self.project.project.root
        spec = ReplicaSpec(config_name=self.project.config_file.name, settings=settings, api=None, apps=apps,
                           keys=self.keys, project_dir=str(root) if self.local else None,
                           telemetry=telemetry_environment())
        deployment = serve.deployment()(EngineReplica)  # serve.deployment(cls) is annotated as the decorator
        config = next((splitter for splitter in self.project.splitters if splitter.name == name), None)
        if config is not None:  # a TrafficSplitter: a small replica handing requests to the APIs' applications
            actor = {"num_cpus": 0, "runtime_env": {"working_dir": working_dir}}
            logging_config = {"log_level": self.settings.log_level.upper(), "enable_access_log": False}
            return deployment.options(name="splitter", num_replicas=1, ray_actor_options=actor,
                                      max_ongoing_requests=splitter.max_ongoing(config, self.project.apis),
                                      graceful_shutdown_timeout_s=self.settings.graceful_timeout,
                                      logging_config=logging_config).bind(dataclasses.replace(spec, splitter=name))
        batch = next((api for api in self.project.batch_apis if api.name == name), None)
        if batch is not None:  # a BatchAPI: one replica on the head node, supervising its jobs' worker actors
            actor = {"num_cpus": 0, "runtime_env": {"working_dir": working_dir}, "resources": {HEAD_NODE: 0.001}}
            logging_config = {"log_level": self.settings.log_level.upper(), "enable_access_log": False}
            return deployment.options(name=name, num_replicas=1, ray_actor_options=actor,
                                      max_ongoing_requests=JOB_API_CONCURRENCY,
                                      graceful_shutdown_timeout_s=self.settings.graceful_timeout,
                                      logging_config=logging_config).bind(
                dataclasses.replace(spec, api=name, settings=settings.replace(state_dir=str(self.api_state(name))),
                                    working_dir=working_dir, environment=self.project.environment_for([batch])))
        if name == FRONT_APP:
            actor = {"num_cpus": 0, "runtime_env": {"working_dir": working_dir}}
            logging_config = {"log_level": self.settings.log_level.upper(), "enable_access_log": False}
            return deployment.options(name="server", num_replicas=1, ray_actor_options=actor,
                                      logging_config=logging_config).bind(spec)
        api = next(api for api in self.project.apis if api.name == name)
        actor = mapping.actor_options(api, self.settings.cpu, working_dir)
        workers = api.predictor.processes_per_replica > 1 or self.settings.isolate
        return deployment.options(**mapping.deployment_options(api, self.settings), ray_actor_options=actor).bind(
            dataclasses.replace(spec, api=api.name, worker_processes=workers,
                                environment=self.project.environment_for([api])))

    def api_state(self, name: str) -> Path:
        """A BatchAPI's state directory: one each, as each replica holds its directory's lock (one engine each)."""
        return self.state_dir / RAY_STATE / name

    def wait_running(self, stop: threading.Event, timeout: float) -> bool:
        """Until every application runs (True), SIGTERM (False), or an error: one failed, or `timeout` passed."""
        deadline = time.monotonic() + timeout
        while not stop.wait(POLL):
            apps = serve.status().applications
            states = {name: apps.get(name) for name in self.routes}
            failed = {name: app for name, app in states.items() if app and app.status in ("DEPLOY_FAILED",
                                                                                          "UNHEALTHY")}
            if failed:
                raise EngineError("\n".join(f"api '{name}': failed to start on Ray:\n{app.message}"
                                            for name, app in failed.items()))
            if all(app and app.status == "RUNNING" for app in states.values()):
                return True
            if time.monotonic() > deadline:
                waiting = "\n".join(f"api '{name}': {waiting_for(app)}"
                                    for name, app in states.items() if not (app and app.status == "RUNNING"))
                raise EngineError(f"the applications were not running after --worker-init-timeout ({timeout:g} s); "
                                  f"a replica the cluster cannot place waits for resources forever:\n{waiting}")
        return False

    def announce(self) -> None:
        """Where each API answers, as `engine serve` says it, with its replicas."""
        host, port = self.settings.host, self.settings.port
        scheme = "https" if self.settings.certfile else "http"
        base = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}"
        for api in self.project.apis:
            scaling, predictor = api.autoscaling, api.predictor
            aliases = " (also / and /predict)" if len(self.project.apis) == 1 else ""
            log.info("api '%s': POST/GET %s%s%s on Ray Serve, %d to %d replicas of %d process(es) x %d thread(s)",
                     api.name, base, api.endpoint, aliases, scaling.min_replicas, scaling.max_replicas,
                     predictor.processes_per_replica, predictor.threads_per_process)
        for config in self.project.splitters:
            log.info("TrafficSplitter '%s': POST %s%s to one of %s, on Ray Serve", config.name, base,
                     config.endpoint, config.describe())
        for batch in self.project.batch_apis:
            log.info("BatchAPI '%s': jobs at %s%s (POST submits, GET ?jobID= is a job's status, DELETE ?jobID= stops "
                     "it) on Ray Serve, each job's workers Ray actors; kept in %s on the head node", batch.name, base,
                     batch.endpoint, self.api_state(batch.name))
        log.info("/healthz, /readyz and /metrics at %s answer for the whole project", base)

    def watch(self, stop: threading.Event) -> None:
        """Serve until told to stop, logging each change of an API's state or replica count."""
        while not stop.wait(WATCH):
            try:
                apps = serve.status().applications
            except Exception as error:  # noqa: BLE001 - a passing failure of the cluster: say it, keep serving
                log.warning("cannot read Ray Serve's status: %s", error)
                continue
            for name in self.routes:
                app = apps.get(name)
                deployment = next(iter(app.deployments.values()), None) if app else None
                running = deployment.replica_states.get(ReplicaState.RUNNING, 0) if deployment else 0
                seen = f"{state(app) if app else 'NOT_DEPLOYED'}, {running} replica(s) running"
                if self.last_seen.get(name, seen) != seen:
                    log.info("application '%s': %s", name, seen)
                self.last_seen[name] = seen

    def remove(self, timeout: float) -> bool:
        """Delete the applications (their replicas drain and stop), the collector, and Serve if this run started it
        and nothing else runs there; True when everything was gone in time."""
        if not self.deployed and not self.collector:
            return True
        for name in self.deployed:
            serve.delete(name, _blocking=False)
        deadline = time.monotonic() + timeout
        while set(self.deployed) & set(serve.status().applications) and time.monotonic() < deadline:
            time.sleep(POLL)
        left = sorted(set(self.deployed) & set(serve.status().applications))
        if left:
            log.error("applications still being deleted after %g s: %s", timeout, ", ".join(left))
        if self.collector is not None:
            ray.kill(self.collector)
        if self.started_serve and not serve.status().applications:
            serve.shutdown()
        return not left


def waiting_for(app: Any) -> str:
    """What an application that is not running says of itself (Ray often says nothing while replicas wait)."""
    if app is None:
        return "not deployed"
    messages = [app.message, *(deployment.message for deployment in app.deployments.values())]
    return "; ".join(message for message in messages if message) or \
        f"{state(app)}: its replicas are waiting for a node to hold them, or still in __init__"


def state(app: Any) -> str:
    """An application's status by its name (RUNNING, DEPLOYING, ...)."""
    return getattr(app.status, "value", app.status)
