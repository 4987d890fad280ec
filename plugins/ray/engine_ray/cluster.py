"""The Ray side of the driver: joining or starting a cluster, Serve's proxies, where replicas fit, the collector."""
from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import ray
from ray import serve

from engine import Api, ConfigError, EngineError, ServeSettings
from engine_ray.mapping import http_options, replica_resources
from engine_ray.metrics import COLLECTOR_NAME, MetricsCollector
from engine_ray.project import job_runtime_env
from engine_ray.replica import NAMESPACE

log = logging.getLogger("engine")

REACH_TIMEOUT = 10.0  # seconds to open a connection to --address (ray.init itself retries an absent cluster forever)


def connect(settings: ServeSettings, root: Path) -> str:
    """Join the cluster at --address (uploading the project), or start a local instance (no dashboard, the project
    read where it is); the working_dir URI of the replicas."""
    level = getattr(logging, settings.log_level.upper())
    try:
        if settings.address:
            check_reachable(settings.address)
            ray.init(address=settings.address, namespace=NAMESPACE, logging_level=level,
                     runtime_env=job_runtime_env(root))
            return ray.get_runtime_context().runtime_env["working_dir"]
        ray.init(address="local", namespace=NAMESPACE, include_dashboard=False, logging_level=level)
        return f"local://{root}"
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"the Ray cluster at {settings.address}" if settings.address else "a local Ray instance"
        raise EngineError(f"cannot reach {where}: {error}") from None


def check_reachable(address: str) -> None:
    """Refuse, within REACH_TIMEOUT, an address (host:port or ray://host:port) where nothing accepts connections;
    other forms (auto) are Ray's to resolve."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT).close()
    except OSError as error:
        raise ConnectionError(f"nothing accepts connections at {host}:{port} ({error.strerror or error}); start the "
                              "cluster first (ray start --head), or give its GCS address (host:6379) or its Ray Client "
                              "address (ray://host:10001)") from None


def start_serve(settings: ServeSettings) -> bool:
    """Start Serve's controller and HTTP proxies with engine's --host, --port, keep-alive and TLS; True when it was
    not running. A Serve instance already running keeps its own proxies (a warning says so)."""
    if serve.status().proxies:
        log.warning("Ray Serve is already running on this cluster: its HTTP proxies keep their own host and port, so "
                    "--host, --port, --keep-alive-timeout and --certfile are not applied")
        return False
    serve.start(http_options=http_options(settings),
                logging_config={"log_level": settings.log_level.upper(), "enable_access_log": False})
    return True


def check_placement(apis: list[Api], cpu_only: bool, local: bool) -> None:
    """Refuse (local instance: an error; a cluster, which may add nodes: a warning) APIs whose replicas no node can
    hold, and on a local instance initial replicas that do not fit it together."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    problems = []
    for api in apis:
        wanted = replica_resources(api, cpu_only)
        if not any(fits(wanted, node) for node in nodes):
            problems.append(f"api '{api.name}': one replica asks for {describe(wanted)}; no node of the Ray cluster "
                            f"has that ({'; '.join(describe(node, wanted) for node in nodes) or 'no node'})")
    if local and not problems and nodes:
        total: dict[str, float] = {}
        for api in apis:
            count = api.autoscaling.init_replicas or api.autoscaling.min_replicas
            for name, amount in replica_resources(api, cpu_only).items():
                total[name] = total.get(name, 0.0) + count * amount
        if not fits(total, nodes[0]):
            problems.append(f"the initial replicas of every API ask for {describe(total)} together; the local Ray "
                            f"instance has {describe(nodes[0], total)} (lower min_replicas or compute, or join a "
                            "larger cluster with --address)")
    if problems and local:
        raise ConfigError("\n".join(problems))
    for problem in problems:
        log.warning("%s; waiting up to --worker-init-timeout for the cluster to add a node that has", problem)


def fits(wanted: dict[str, float], node: dict[str, float]) -> bool:
    """True when a node's total resources hold what is wanted."""
    return all(node.get(name, 0.0) + 1e-9 >= amount for name, amount in wanted.items())


def describe(resources: dict[str, float], names: dict[str, float] | None = None) -> str:
    """`CPU 2, memory 1.0 GiB`: the resources named (all of `names`' keys, or every one given)."""
    shown = []
    for name in names or resources:
        amount = resources.get(name, 0.0)
        shown.append(f"{name} {amount / 2**30:.1f} GiB" if name == "memory" else f"{name} {amount:g}")
    return ", ".join(shown)


def start_collector() -> Any:
    """The project's metrics collector, a zero-CPU actor that lives as long as this driver."""
    try:
        ray.get_actor(COLLECTOR_NAME, namespace=NAMESPACE)
    except ValueError:
        pass
    else:
        raise EngineError("another engine serve --on ray is serving on this Ray cluster (its metrics collector is "
                          "running); stop it first")
    actor = ray.remote(MetricsCollector).options(name=COLLECTOR_NAME, namespace=NAMESPACE, num_cpus=0)
    return actor.remote()
