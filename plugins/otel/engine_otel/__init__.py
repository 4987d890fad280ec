"""engine-otel: OpenTelemetry traces of engine's requests, configured by the standard OTEL_* variables.

Each request gets a server span (continuing its W3C `traceparent`, which its response carries back) and a span per
phase (`admission`, `batch wait`, `predict`, `encode`, `post_predict`), in the front process, in worker processes and
in Ray replicas alike; a predictor's own spans nest under `predict`. They are exported by a process of their own
(engine_otel.exporter). docs/operations.md has the whole picture.
"""
from __future__ import annotations

from engine import Tracer, hookimpl
from engine_otel.provider import configured_tracer
from engine_otel.tracer import OtelTracer

_made: list[OtelTracer | None] = []  # this process's tracer, made once (every app of the process shares it)


@hookimpl
def engine_tracer() -> Tracer | None:
    """This process's tracer, or None when OTEL_SDK_DISABLED=true."""
    if not _made:
        _made.append(configured_tracer())
    return _made[0]
