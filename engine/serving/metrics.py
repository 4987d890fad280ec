"""Prometheus metrics.

`engine serve` points PROMETHEUS_MULTIPROC_DIR at a fresh directory before prometheus_client is imported, so that
worker processes (processes_per_replica > 1) write their samples there and GET /metrics adds up every process.
Without it (an app hosted in-process, as tests do), each app keeps its samples in a registry of its own.
"""
from __future__ import annotations

import os
from typing import Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from engine.models import events
from engine.settings import MULTIPROCESS_ENV

# prometheus_client leaves disable_created_metrics, MultiProcessCollector and mark_process_dead unannotated
disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series double the output; nothing reads them

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = tuple(float(2**n) for n in range(11))  # 1 … 1024, max_batch_size's range

M = TypeVar("M", Counter, Gauge, Histogram)


class Metrics:
    """Every metric engine exports. Labels are API and model names from the configuration, never request data."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}  # (name, labels) → the labelled child
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("engine_requests", "Requests answered, by API, method and status code",
                                ["api", "method", "status_code"], registry=registry)
        self.latency = Histogram("engine_request_duration_seconds", "Time from request to response, by API",
                                 ["api"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge("engine_requests_in_flight", "Requests being served, by API", ["api"],
                               multiprocess_mode="livesum", registry=registry)
        self.rejected = Counter("engine_requests_rejected", "Requests answered 503 because max_replica_concurrency "
                                "requests were in flight, by API", ["api"], registry=registry)
        self.timeouts = Counter("engine_requests_timed_out", "Requests answered 504 because the request timeout "
                                "passed, by API", ["api"], registry=registry)
        self.disconnects = Counter("engine_client_disconnects", "Requests whose client went away before the answer, "
                                   "by API", ["api"], registry=registry)
        self.overruns = Counter("engine_predict_overruns", "predict() calls still running on a thread when their "
                                "request was given up (timeout or disconnect); each keeps its slot until it returns",
                                ["api"], registry=registry)
        self.loop_lag = Gauge("engine_predictor_loop_lag_seconds", "How late the event loop of an API's async "
                              "predictor ran its last check (a blocking async call makes it late), by API", ["api"],
                              multiprocess_mode="max", registry=registry)
        self.predictor_exceptions = Counter("engine_predictor_exceptions", "Exceptions raised by predict(), by API",
                                            ["api"], registry=registry)
        self.batch_size = Histogram("engine_batch_size", "Requests (or inference calls) merged into one batch",
                                    ["api"], buckets=_BATCH_BUCKETS, registry=registry)
        self.batch_wait = Histogram("engine_batch_wait_seconds", "Time a request (or inference call) waited for "
                                    "its batch to start, by API", ["api"], buckets=_LATENCY_BUCKETS,
                                    registry=registry)
        self.model_loads = Counter("engine_model_loads", "Model version loads, by API, model, kind (load or "
                                   "reload) and outcome (ok or error)", ["api", "model", "kind", "outcome"],
                                   registry=registry)
        self.model_load_seconds = Histogram("engine_model_load_duration_seconds", "Time to load a model version",
                                            ["api", "model"], buckets=_LATENCY_BUCKETS, registry=registry)
        # the model cache and byte budgets (engine.models.events), summed over worker processes
        self.model_bytes = Gauge("engine_model_bytes", "Bytes the loaded versions of a model hold in memory, as the "
                                 "memory budget counts them, by API and model", ["api", "model"],
                                 multiprocess_mode="livesum", registry=registry)
        self.model_disk_bytes = Gauge("engine_model_disk_bytes", "Bytes of the downloaded copies of a model's "
                                      "versions on disk, by API and model", ["api", "model"],
                                      multiprocess_mode="livesum", registry=registry)
        self.model_hits = Counter("engine_model_hits", "Model lookups that found the version loaded, by API and model",
                                  ["api", "model"], registry=registry)
        self.model_misses = Counter("engine_model_misses", "Model lookups that had to load the version (or wait for "
                                    "its load), by API and model", ["api", "model"], registry=registry)
        self.model_evictions = Counter("engine_model_evictions", "Versions evicted to make room, by API, model and "
                                       "cache (memory, or disk for downloaded copies)", ["api", "model", "cache"],
                                       registry=registry)
        self.model_refusals = Counter("engine_model_refusals", "Loads refused by a byte budget, by API, model and "
                                      "reason: too_large (507) or no_room (503, every model in the way in use)",
                                      ["api", "model", "reason"], registry=registry)
        self.split_requests = Counter("engine_splitter_requests", "Requests a TrafficSplitter handed to one of its "
                                      "APIs, by splitter, API chosen, method and status code",
                                      ["splitter", "api", "method", "status_code"], registry=registry)
        self.split_latency = Histogram("engine_splitter_request_duration_seconds", "Time from request to response "
                                       "of the requests a TrafficSplitter handed to an API, by splitter and API",
                                       ["splitter", "api"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.shadow_copies = Counter("engine_splitter_shadow_copies", "Copies of requests for a TrafficSplitter's "
                                     "shadow API, by splitter, API and outcome: sent, or dropped because the shadow "
                                     "API had no free slot", ["splitter", "api", "outcome"], registry=registry)
        # a BatchAPI's jobs, under Cortex v0.28's names and labels
        self.job_batches_succeeded = Counter("cortex_batch_succeeded", "Batches of a BatchAPI job whose predict "
                                             "returned", ["api_name", "job_id"], registry=registry)
        self.job_batches_failed = Counter("cortex_batch_failed", "Attempts at a batch of a BatchAPI job whose predict "
                                          "raised", ["api_name", "job_id"], registry=registry)
        self.job_batch_seconds = Histogram("cortex_time_per_batch", "Time predict took for a batch of a BatchAPI "
                                           "job that succeeded", ["api_name", "job_id"], buckets=_LATENCY_BUCKETS,
                                           registry=registry)
        events.observe(self)

    def model_event(self, api: str, model: str, event: str, amount: int) -> None:
        """Count one of engine.models.events.EVENTS."""
        if event == "hit":
            self.child(self.model_hits, api, model).inc()
        elif event == "miss":
            self.child(self.model_misses, api, model).inc()
        elif event in ("eviction", "disk_eviction"):
            self.child(self.model_evictions, api, model, "memory" if event == "eviction" else "disk").inc()
        elif event in ("too_large", "no_room"):
            self.child(self.model_refusals, api, model, event).inc()
        elif event in ("memory_bytes", "disk_bytes"):
            self.child(self.model_bytes if event == "memory_bytes" else self.model_disk_bytes, api, model).inc(amount)

    def render(self) -> bytes:
        """Every sample in Prometheus text format, summed over worker processes when there are any."""
        if os.environ.get(MULTIPROCESS_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)

    def child(self, metric: M, *labels: str) -> M:
        """metric.labels(*labels), remembered: the lookup is a measurable part of a fast request."""
        key = (metric._name, labels)
        found: M | None = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def job_batch(self, api: str, job_id: str, ok: bool, seconds: float) -> None:
        """Count one attempt at a job's batch."""
        if ok:
            self.job_batches_succeeded.labels(api, job_id).inc()
            self.job_batch_seconds.labels(api, job_id).observe(seconds)
        else:
            self.job_batches_failed.labels(api, job_id).inc()

    def model_loaded(self, api: str, model: str, reload: bool, ok: bool, seconds: float) -> None:
        """Count one model version load."""
        self.model_loads.labels(api, model, "reload" if reload else "load", "ok" if ok else "error").inc()
        if ok:
            self.model_load_seconds.labels(api, model).observe(seconds)


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges from the sums."""
    if os.environ.get(MULTIPROCESS_ENV):
        mark_process_dead(pid)  # type: ignore[no-untyped-call]
