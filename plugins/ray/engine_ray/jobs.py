"""BatchAPI jobs on Ray: each worker of a job is a Ray actor running engine's JobWorker on a node with room for the
API's compute, driven by the job's supervisor (in the BatchAPI's replica, on the head node) as it drives a local
worker process. A worker's output goes to Ray's logs; the job's log file keeps the supervisor's lines."""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import queue
import shutil
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RuntimeEnvSetupError

from engine import (
    Api,
    BatchApi,
    Complete,
    Completed,
    ConfigError,
    EngineError,
    Exited,
    FromWorker,
    JobWorker,
    RunBatch,
    Start,
    StartFailed,
    Stop,
    ToWorker,
    load_project,
)
from engine_ray import cluster, mapping
from engine_ray.replica import configure_logging

log = logging.getLogger("engine")

STOP_TIMEOUT = 10.0  # seconds an actor gets to remove its project view before it is killed anyway
KILLED = -signal.SIGKILL  # the exit code a killed worker reports, as a local worker process killed by SIGKILL

Post = Callable[[int, FromWorker], None]


class JobActor:
    """One worker of a job as a Ray actor: the project from the actor's own working directory (the runtime_env's,
    as an EngineReplica's), then engine's JobWorker."""

    def __init__(self, project_dir: str | None, config_name: str, cpu_only: bool, log_level: str) -> None:
        configure_logging(log_level)
        self.root = Path(project_dir or os.getcwd()).resolve()  # read before the view becomes the working directory
        self.config_name = config_name
        self.cpu_only = cpu_only
        self.worker = JobWorker()
        self.view: Path | None = None

    def start(self, start: Start) -> FromWorker:
        """Check the project on this node, make its view here, and build the predictor in it."""
        context = ray.get_runtime_context()
        log.info("worker %d of job %s (%s api): Ray actor %s on node %s, pid %d", start.index,
                 start.job_spec.get("job_id"), start.api.name, context.get_actor_id(), context.get_node_id(),
                 os.getpid())
        try:
            project = load_project(self.root, self.root / self.config_name, cpu=self.cpu_only, apis=[start.api.name])
            self.view = project.project.create_view()
        except EngineError as error:
            return StartFailed(f"the Ray actor of worker {start.index} could not load the project: {error}")
        # Index 0: an actor is given its own devices by Ray (CUDA_VISIBLE_DEVICES), as a replica's one process is.
        return self.worker.start(dataclasses.replace(start, view=self.view, project_root=self.root, index=0))

    def run(self, batch: RunBatch) -> FromWorker:
        """predict with one batch."""
        return self.worker.run(batch)

    def complete(self, complete: Complete) -> FromWorker:
        """on_job_complete, when the class has one."""
        return self.worker.complete(complete)

    def stop(self) -> None:
        """Remove the project view (the actor is killed next)."""
        if self.view is not None:
            shutil.rmtree(self.view, ignore_errors=True)


class RayLauncher:
    """Starts each worker of a BatchAPI's jobs as a Ray actor with the API's compute (engine.WorkerLauncher)."""

    def __init__(self, api: BatchApi, cpu_only: bool, working_dir: str, project_dir: str | None, config_name: str,
                 environment: dict[str, str], log_level: str) -> None:
        self.api = api
        # compute.* as resources (num_cpus: compute.cpu, else 1; num_gpus: compute.gpu), the project's files; spread
        # over the nodes; an actor that dies is not restarted (the supervisor decides: worker error, or a new worker)
        self.options = {**mapping.actor_options(api, cpu_only, working_dir), "max_restarts": 0,
                        "max_task_retries": 0, "scheduling_strategy": "SPREAD"}
        self.arguments = (project_dir, config_name, cpu_only, log_level)
        self.environment = environment  # worked out by the driver, as the replicas' (ReplicaSpec.environment)

    def launch(self, index: int, name: str, log_file: Path, post: Post) -> ActorWorker:
        """Create the actor (Ray places it once a node has room); it waits for Start."""
        actor = _remote_actor().options(**self.options).remote(*self.arguments)
        line = (f"worker {index} ({name}) is Ray actor {actor._actor_id.hex()}; its output is in Ray's logs (the "
                "driver's output, or `ray logs`)")
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        with open(log_file, "a", encoding="utf-8") as file:
            file.write(f"{stamp} INFO {line}\n")
        return ActorWorker(index, actor, post, self.environment)


class ActorWorker:
    """One worker's actor, and the thread that hands it each message in turn and posts its answer
    (engine.WorkerHandle)."""

    def __init__(self, index: int, actor: Any, post: Post, environment: dict[str, str]) -> None:
        self.index = index
        self.actor = actor
        self._post = post
        self._environment = environment
        self._messages: queue.Queue[ToWorker | None] = queue.Queue()  # None: killed
        self._killed = threading.Event()
        threading.Thread(target=self._run, name=f"job-actor-{index}", daemon=True).start()

    def send(self, message: ToWorker) -> None:
        """Queue the message for the actor."""
        self._messages.put(message)

    def kill(self) -> None:
        """ray.kill the actor (a running predict with it); Exited is posted by the thread."""
        self._killed.set()
        _kill(self.actor)
        self._messages.put(None)

    def _run(self) -> None:
        self._post(self.index, self._serve())

    def _serve(self) -> Exited:
        """Hand over messages until the actor is gone: how it went."""
        while True:
            message = self._messages.get()
            if message is None:
                return Exited(KILLED, "killed")
            if isinstance(message, Stop):
                try:
                    ray.get(self.actor.stop.remote(), timeout=STOP_TIMEOUT)
                except Exception:  # noqa: BLE001 - gone or slow: it is killed either way
                    pass
                _kill(self.actor)
                return Exited(0)
            try:
                answer = ray.get(self._call(message))
            except RuntimeEnvSetupError as error:  # the node could not get the project: no replacement would either
                _kill(self.actor)
                if isinstance(message, Start):
                    self._post(self.index, StartFailed(f"Ray could not set up the actor's runtime environment: "
                                                       f"{error}"))
                return Exited(None, "its runtime environment could not be set up")
            except Exception as error:  # noqa: BLE001 - the actor died, was killed, or its node was lost
                _kill(self.actor)
                if self._killed.is_set():
                    return Exited(KILLED, "killed")
                return Exited(None, "the Ray actor died: " + " ".join(str(error).split()))
            self._post(self.index, answer)
            # as a local worker process exits after these (engine.jobs.worker_main)
            if isinstance(answer, StartFailed) or (isinstance(answer, Completed) and answer.error is not None):
                _kill(self.actor)
                return Exited(1)

    def _call(self, message: ToWorker) -> Any:
        if isinstance(message, Start):
            return self.actor.start.remote(dataclasses.replace(message, environment=self._environment))
        if isinstance(message, RunBatch):
            return self.actor.run.remote(message)
        return self.actor.complete.remote(message)


@functools.cache
def _remote_actor() -> Any:
    """JobActor as a Ray actor class, made once (Ray exports a class's definition once per such class)."""
    return ray.remote(JobActor)


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


def check_workers(apis: list[Api], cpu_only: bool, local: bool) -> None:
    """Refuse (local instance) or warn of (a cluster, which may add nodes) BatchAPIs whose worker no node can hold."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    problems = []
    for api in apis:
        wanted = mapping.replica_resources(api, cpu_only)
        if not any(cluster.fits(wanted, node) for node in nodes):
            problems.append(f"api '{api.name}': one job worker asks for {cluster.describe(wanted)}; no node of the Ray "
                            f"cluster has that ({'; '.join(cluster.describe(node, wanted) for node in nodes)})")
    if problems and local:
        raise ConfigError("\n".join(problems))
    for problem in problems:
        log.warning("%s; its jobs' workers wait until the cluster adds a node that has", problem)
