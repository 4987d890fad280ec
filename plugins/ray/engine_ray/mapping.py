"""cortex.yaml and `engine serve`'s settings, mapped onto Ray Serve's options (docs/scaling.md has the table)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from engine import Api, ConfigError, ServeSettings

# Cortex's inf counts Inferentia chips; Ray counts NeuronCores. engine's config checks assume inf1's 4 per chip too.
NEURON_CORES_PER_CHIP = 4
NEURON_RESOURCE = "neuron_cores"
# Ray Serve's own default when a deployment does not say (compute.cpu unset).
RAY_DEFAULT_CPUS = 1.0

# Cortex fields with no Ray Serve counterpart: a warning each when the user set one.
UNMAPPED_AUTOSCALING = ("max_downscale_factor", "max_upscale_factor", "downscale_tolerance", "upscale_tolerance")
UNMAPPED_NETWORKING = ("api_gateway", "local_port")
UNMAPPED_PREDICTOR = ("image", "tensorflow_serving_image")

# Every `engine serve` setting and where it goes on Ray; a setting not listed (a newer flag) that differs from its
# default gets a warning, so that nothing is dropped silently.
PROXY_SETTINGS = {"host", "port", "keep_alive_timeout", "certfile", "keyfile"}   # Ray's HTTP proxy (http_options)
REPLICA_SETTINGS = {"log_level", "graceful_timeout", "model_poll_interval", "worker_init_timeout", "cpu",
                    "request_timeout", "max_body_size", "body_timeout", "worker_kill_after",
                    "max_requests_per_worker", "worker_memory_limit", "isolate", "api_key", "api_key_file",
                    "metrics_public", "allowed_hosts", "cors_origins", "no_docs", "expose_errors", "state_dir",
                    "model_memory", "model_disk"}
DRIVER_SETTINGS = {"on", "address"}


def replica_resources(api: Api, cpu_only: bool) -> dict[str, float]:
    """What one replica of the API asks Ray for, as Ray names resources (CPU, GPU, memory, neuron_cores)."""
    compute = api.compute
    wanted = {"CPU": compute.cpu if compute.cpu is not None else RAY_DEFAULT_CPUS}
    if compute.mem is not None:
        wanted["memory"] = float(int(compute.mem))
    if compute.gpu and not cpu_only:
        wanted["GPU"] = float(compute.gpu)
    if compute.inf and not cpu_only:
        wanted[NEURON_RESOURCE] = float(compute.inf * NEURON_CORES_PER_CHIP)
    return wanted


def actor_options(api: Api, cpu_only: bool, working_dir: str) -> dict[str, Any]:
    """ray_actor_options: compute.* as resources, and the runtime environment (the project's files; its variables
    travel in the ReplicaSpec, as Ray would expand `$` in env_vars)."""
    wanted = replica_resources(api, cpu_only)
    options: dict[str, Any] = {"num_cpus": wanted["CPU"]}
    if "memory" in wanted:
        options["memory"] = wanted["memory"]
    if "GPU" in wanted:
        options["num_gpus"] = wanted["GPU"]
    if NEURON_RESOURCE in wanted:
        options["resources"] = {NEURON_RESOURCE: wanted[NEURON_RESOURCE]}
    options["runtime_env"] = {"working_dir": working_dir}
    return options


def target_concurrency(api: Api) -> float:
    """autoscaling.target_replica_concurrency, or Cortex's default: processes_per_replica × threads_per_process."""
    given = api.autoscaling.target_replica_concurrency
    return given if given is not None else api.predictor.processes_per_replica * api.predictor.threads_per_process


def deployment_options(api: Api, settings: ServeSettings) -> dict[str, Any]:
    """serve.deployment's options for one API (ray_actor_options apart): replicas, concurrency, scaling, shutdown."""
    scaling = api.autoscaling
    autoscaling = {
        "min_replicas": scaling.min_replicas,
        "max_replicas": scaling.max_replicas,
        "target_ongoing_requests": target_concurrency(api),
        "look_back_period_s": scaling.window,
        "upscale_delay_s": scaling.upscale_stabilization_period,
        "downscale_delay_s": scaling.downscale_stabilization_period,
    }
    if scaling.init_replicas is not None:
        autoscaling["initial_replicas"] = scaling.init_replicas
    return {
        "name": api.name,
        "autoscaling_config": autoscaling,
        "max_ongoing_requests": scaling.max_replica_concurrency,
        # Requests waiting at a proxy for a free replica: as many again, then 503 with Retry-After: 1. Ray counts a
        # request being routed as queued too, so a smaller queue would refuse requests that a replica could take.
        "max_queued_requests": scaling.max_replica_concurrency,
        "backpressure_config": {"status_code": 503, "retry_after_s": 1},
        "graceful_shutdown_timeout_s": settings.graceful_timeout,
        # engine logs every request itself (the access log); Ray's own line would say the same again.
        "logging_config": {"log_level": settings.log_level.upper(), "enable_access_log": False},
    }


def api_warnings(api: Api) -> list[str]:
    """One line per field of the API that Ray Serve has no counterpart for."""
    fields = [f"autoscaling.{name}" for name in UNMAPPED_AUTOSCALING if name in api.autoscaling.model_fields_set]
    fields += [f"networking.{name}" for name in UNMAPPED_NETWORKING if name in api.networking.model_fields_set]
    fields += [f"predictor.{name}" for name in UNMAPPED_PREDICTOR if getattr(api.predictor, name)]
    fields += [name for name in ("update_strategy", "monitoring") if getattr(api, name) is not None]
    return [f"api '{api.name}': {field}: Ray Serve has no counterpart; not applied on Ray" for field in fields]


def settings_warnings(settings: ServeSettings) -> list[str]:
    """One line per setting given that is neither applied by Ray's proxy nor inside each replica."""
    known = PROXY_SETTINGS | REPLICA_SETTINGS | DRIVER_SETTINGS
    given = [field.name for field in dataclasses.fields(settings)
             if field.name != "plugin_settings" and getattr(settings, field.name) != field.default]
    given += [name for name, value in settings.plugin_settings.items() if value is not None]  # plugins' settings
    return [f"--{name.replace('_', '-')}: not applied on Ray (its HTTP proxy serves the routes)"
            for name in given if name not in known]


def check_settings(settings: ServeSettings) -> None:
    """Refuse what Ray's proxy would silently weaken."""
    if settings.ca_certs:
        raise ConfigError("--ca-certs: Ray Serve's HTTP proxy cannot require client certificates; terminate mutual "
                          "TLS in front of Ray (an ingress or load balancer) and serve without --ca-certs")
    if bool(settings.certfile) != bool(settings.keyfile):
        raise ConfigError("HTTPS needs both --certfile and --keyfile")


def http_options(settings: ServeSettings) -> dict[str, Any]:
    """Ray's proxy: where it listens, its keep-alive timeout, TLS (the files must exist on every node)."""
    options: dict[str, Any] = {"host": settings.host, "port": settings.port,
                               "keep_alive_timeout_s": max(1, math.ceil(settings.keep_alive_timeout))}
    if settings.certfile:
        options.update(ssl_certfile=settings.certfile, ssl_keyfile=settings.keyfile)
    return options


def replica_settings(settings: ServeSettings, keys: tuple[str, ...]) -> ServeSettings:
    """The settings each replica's app runs with: the keys read here once, TLS left to the proxy."""
    return settings.replace(api_key=keys, api_key_file=None, certfile=None, keyfile=None, ca_certs=None, on=None,
                            address=None)
