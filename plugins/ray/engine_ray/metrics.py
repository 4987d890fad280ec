"""GET /metrics for a whole project on Ray: every replica reports its samples, the collector adds them up.

engine serve adds up its worker processes' samples; on Ray the replicas of every API report theirs here each second,
and /metrics answers the sums. A replica that stops (or stops reporting) keeps its counters in the sums, as a dead
worker's do, and drops its gauges. Two series are added: engine_replicas (replicas reporting, by API) and
engine_replica_requests_total (requests answered, by API and replica).
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

REPORT_INTERVAL = 1.0  # seconds between a replica's reports
STALE_AFTER = 10.0  # a replica silent this long has stopped
COLLECTOR_NAME = "engine-metrics"
# Gauges whose replicas are combined by their maximum, as engine's own multiprocess mode combines them.
MAX_GAUGES = {"engine_predictor_loop_lag_seconds"}

Key = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)


@dataclass
class Family:
    """One metric family: its type, help and samples."""

    type: str
    documentation: str
    samples: dict[Key, float] = field(default_factory=dict)


def parse(text: str) -> dict[str, Family]:
    """Prometheus text → families by name."""
    from prometheus_client.parser import text_string_to_metric_families

    families = {}
    for metric in text_string_to_metric_families(text):
        family = families[metric.name] = Family(metric.type, metric.documentation)
        for sample in metric.samples:
            family.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return families


def add(into: dict[str, Family], families: dict[str, Family], gauges: bool = True) -> None:
    """Add `families` into `into` (gauges of MAX_GAUGES by maximum; `gauges=False` leaves every gauge out)."""
    for name, family in families.items():
        if family.type == "gauge" and not gauges:
            continue
        target = into.setdefault(name, Family(family.type, family.documentation))
        for key, value in family.samples.items():
            if name in MAX_GAUGES and key in target.samples:
                target.samples[key] = max(target.samples[key], value)
            else:
                target.samples[key] = target.samples.get(key, 0.0) + value


def render(families: dict[str, Family]) -> str:
    """Families → Prometheus text, written by prometheus_client."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.metrics_core import Metric

    metrics = []
    for name, family in families.items():
        metric = Metric(name, family.documentation, family.type)
        for (sample, labels), value in family.samples.items():
            metric.add_sample(sample, dict(labels), value)
        metrics.append(metric)

    class Collected:
        def collect(self) -> Iterable[Metric]:
            return metrics

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collected())
    return generate_latest(registry).decode()


@dataclass
class Report:
    """What one replica last said."""

    api: str
    families: dict[str, Family]
    at: float


class MetricsCollector:
    """The project's metrics (a Ray actor): replicas report, /metrics renders."""

    def __init__(self) -> None:
        self.reports: dict[str, Report] = {}
        self.retired: dict[str, Family] = {}  # the counters of replicas that have stopped

    def report(self, replica: str, api: str, text: str, final: bool = False) -> None:
        """A replica's samples, as its /metrics renders them; `final` when it is stopping."""
        self.reports[replica] = Report(api, parse(text), time.monotonic())
        if final:
            self._retire(replica)

    def render(self) -> str:
        """Every replica's samples added up, the retired ones' counters included."""
        now = time.monotonic()
        for replica in [name for name, report in self.reports.items() if now - report.at > STALE_AFTER]:
            self._retire(replica)
        total: dict[str, Family] = {}
        add(total, self.retired)
        for report in self.reports.values():
            add(total, report.families)
        total.update(self._replica_families())
        return render(total)

    def _retire(self, replica: str) -> None:
        add(self.retired, self.reports.pop(replica).families, gauges=False)

    def _replica_families(self) -> dict[str, Family]:
        replicas = Family("gauge", "Replicas reporting metrics, by API")
        requests = Family("counter", "Requests answered, by API and replica")
        for replica, report in sorted(self.reports.items()):
            api = (("api", report.api),)
            replicas.samples[("engine_replicas", api)] = replicas.samples.get(("engine_replicas", api), 0) + 1
            answered = report.families.get("engine_requests")
            count = sum(answered.samples.values()) if answered else 0.0
            requests.samples[("engine_replica_requests_total", (*api, ("replica", replica)))] = count
        return {"engine_replicas": replicas, "engine_replica_requests": requests}
