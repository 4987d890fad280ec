"""cortex.yaml and engine serve's settings mapped onto Ray Serve's options (docs/scaling.md's table), without Ray
running: replica bounds, concurrency, scaling delays, resources, the runtime environment, and a warning per field
that has no counterpart."""
from __future__ import annotations

import pytest
from engine_ray import mapping

from engine import ConfigError, ServeSettings
from engine.testing import make_api


def api(**sections):
    return make_api({"name": "api", "kind": "RealtimeAPI", "predictor": {"type": "python", "path": "p.py"},
                     **sections})


def test_autoscaling_maps_onto_ray_serve_options():
    options = mapping.deployment_options(api(autoscaling={
        "min_replicas": 2, "max_replicas": 5, "init_replicas": 3, "target_replica_concurrency": 4,
        "max_replica_concurrency": 8, "window": "30s", "upscale_stabilization_period": "10s",
        "downscale_stabilization_period": "2m"}), ServeSettings(graceful_timeout=7))
    assert options["autoscaling_config"] == {
        "min_replicas": 2, "max_replicas": 5, "initial_replicas": 3, "target_ongoing_requests": 4,
        "look_back_period_s": 30.0, "upscale_delay_s": 10.0, "downscale_delay_s": 120.0}
    assert (options["max_ongoing_requests"], options["max_queued_requests"]) == (8, 8)
    assert options["backpressure_config"] == {"status_code": 503, "retry_after_s": 1}
    assert options["graceful_shutdown_timeout_s"] == 7


def test_target_concurrency_defaults_to_processes_times_threads_as_in_cortex():
    scaled = api(predictor={"type": "python", "path": "p.py", "processes_per_replica": 2, "threads_per_process": 3})
    assert mapping.deployment_options(scaled, ServeSettings())["autoscaling_config"]["target_ongoing_requests"] == 6
    assert "initial_replicas" not in mapping.deployment_options(scaled, ServeSettings())["autoscaling_config"]


def test_compute_maps_onto_ray_actor_options_and_the_runtime_environment():
    options = mapping.actor_options(api(compute={"cpu": "500m", "mem": "1Gi", "gpu": 2}), False, "local:///project")
    assert options == {"num_cpus": 0.5, "memory": float(2**30), "num_gpus": 2.0,
                       "runtime_env": {"working_dir": "local:///project"}}
    inferentia = mapping.actor_options(api(compute={"inf": 1}), False, "local:///project")
    assert (inferentia["num_cpus"], inferentia["resources"]) == (1.0, {"neuron_cores": 4.0})


def test_cpu_flag_serves_accelerator_apis_on_cpus_only():
    assert mapping.replica_resources(api(compute={"cpu": 2, "gpu": 1}), cpu_only=True) == {"CPU": 2.0}


def test_fields_without_a_counterpart_get_a_warning_each():
    warned = api(autoscaling={"max_upscale_factor": 2.0, "downscale_tolerance": 0.1},
                 networking={"api_gateway": "none"})
    assert mapping.api_warnings(warned) == [
        "api 'api': autoscaling.max_upscale_factor: Ray Serve has no counterpart; not applied on Ray",
        "api 'api': autoscaling.downscale_tolerance: Ray Serve has no counterpart; not applied on Ray",
        "api 'api': networking.api_gateway: Ray Serve has no counterpart; not applied on Ray"]
    assert mapping.api_warnings(api(autoscaling={"min_replicas": 2})) == []


def test_settings_the_proxy_cannot_apply_are_warned_of_or_refused():
    assert mapping.settings_warnings(ServeSettings(max_connections=10)) == [
        "--max-connections: not applied on Ray (its HTTP proxy serves the routes)"]
    assert mapping.settings_warnings(ServeSettings(port=9000, api_key=("k",))) == []
    with pytest.raises(ConfigError, match="--ca-certs"):
        mapping.check_settings(ServeSettings(certfile="c.pem", keyfile="k.pem", ca_certs="ca.pem"))


def test_replicas_get_the_keys_and_no_tls():
    settings = mapping.replica_settings(ServeSettings(certfile="c.pem", keyfile="k.pem", on="ray",
                                                      plugin_settings={"address": "ray://head:10001"}), ("key",))
    assert (settings.api_key, settings.certfile, settings.keyfile, settings.on, settings.address) == \
        (("key",), None, None, None, None)
    assert mapping.http_options(ServeSettings(host="0.0.0.0", port=9000, keep_alive_timeout=2.5)) == \
        {"host": "0.0.0.0", "port": 9000, "keep_alive_timeout_s": 3}
