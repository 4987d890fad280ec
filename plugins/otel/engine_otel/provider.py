"""The OpenTelemetry SDK set up from the standard OTEL_* variables: sampler and resource in each serving process,
exporters and batching in the exporter process."""
from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.metadata import version
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from engine import PluginError
from engine_otel.outbox import HOP_S, Forwarding, Outbox, join_or_start
from engine_otel.tracer import OtelTracer
from engine_otel.wire import ADDRESS_ENV

DEFAULT_SERVICE_NAME = "engine"
PROTOCOLS = ("http/protobuf", "grpc")
EXPORTERS = ("otlp", "console", "none")
# Any of these says where traces go; without one, engine-otel traces nothing (no collector is assumed to listen)
DESTINATIONS = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class HashedOnce(Resource):
    """A Resource whose hash is worked out once: OpenTelemetry's JSON-encodes the attributes at every hash, and its
    OTLP encoder hashes the resource once per span it exports (half of what exporting a span costs)."""

    def __init__(self, attributes: Mapping[str, Any], schema_url: str | None = None) -> None:
        super().__init__(attributes, schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or super().__eq__(other)


def configured_tracer() -> OtelTracer | None:
    """This process's tracer, on a provider made from the OTEL_* variables; None when OTEL_SDK_DISABLED=true or when
    no variable says where traces go. Its spans go to the exporter process (engine_otel.outbox); the provider becomes
    the global one, so that a predictor's own spans go there too, unless something (opentelemetry-instrument, the
    predictor's module) has set one already."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if not any(os.environ.get(name) for name in DESTINATIONS):
        return None
    defaults: dict[str, str | int] = {"process.pid": os.getpid()}
    if not _service_named():
        defaults[SERVICE_NAME] = DEFAULT_SERVICE_NAME
    resource = Resource.create(defaults)
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER(_ARG)
    outbox = Outbox(None, (), 0, 0)  # nowhere: nothing is sampled, or OTEL_TRACES_EXPORTER=none
    if provider.sampler.get_description() != "AlwaysOffSampler" and (_inherited() or _checked_exporters()):
        outbox = join_or_start(dict(resource.attributes), resource.schema_url,
                               min(HOP_S, _seconds("OTEL_BSP_SCHEDULE_DELAY", 5000)),
                               _seconds("OTEL_BSP_EXPORT_TIMEOUT", 30000))
    provider.add_span_processor(Forwarding(outbox))
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(provider)
    return OtelTracer(provider.sampler, outbox)


def engine_scope() -> InstrumentationScope:
    """The instrumentation scope of engine's own spans."""
    return InstrumentationScope("engine", _version())


def _inherited() -> bool:
    """True in a worker process whose parent has started an exporter process (and checked its settings)."""
    return os.environ.get(ADDRESS_ENV, "").startswith(f"{os.getppid()}:")


def _checked_exporters() -> bool:
    """Whether OTEL_TRACES_EXPORTER names any exporter; made once here (and put away) so that a setting engine-otel
    cannot honour is a start-up error of the serving process, not of the exporter process."""
    processors = [BatchSpanProcessor(exporter) for exporter in exporters()]  # OTEL_BSP_*'s checks too
    for processor in processors:
        processor.shutdown()  # type: ignore[no-untyped-call]
    return bool(processors)


def exporters() -> list[SpanExporter]:
    """The exporters OTEL_TRACES_EXPORTER names (otlp by default), OTLP over OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL."""
    names = [name.strip() for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if name.strip()]
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        raise PluginError(f"engine-otel: OTEL_TRACES_EXPORTER names {', '.join(unknown)}, which engine-otel does not "
                          f"provide; allowed: {', '.join(EXPORTERS)} (comma-separated)")
    found: list[SpanExporter] = []
    for name in names:
        if name == "otlp":
            found.append(_otlp_exporter())
        elif name == "console":
            found.append(ConsoleSpanExporter())
    return found


def _otlp_exporter() -> SpanExporter:
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # endpoint, headers, timeout, compression, certificates: OTEL_EXPORTER_OTLP_*
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError:
            raise PluginError("engine-otel: OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the gRPC exporter: pip install "
                              "'engine-otel[grpc]' (or use http/protobuf, the default)") from None
        exporter: SpanExporter = GrpcExporter()
        return exporter
    raise PluginError(f"engine-otel: OTLP protocol {protocol!r} (OTEL_EXPORTER_OTLP_PROTOCOL) is not supported; "
                      f"allowed: {', '.join(PROTOCOLS)}")


def _seconds(name: str, default_ms: int) -> float:
    """A duration the OTEL_* variable `name` gives in milliseconds (the SDK's default where it is not a number)."""
    try:
        return max(0.001, float(os.environ.get(name, default_ms)) / 1000)
    except ValueError:
        return default_ms / 1000


def _service_named() -> bool:
    """True when OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names the service."""
    attributes = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    return bool(os.environ.get("OTEL_SERVICE_NAME")) or any(
        pair.split("=", 1)[0].strip() == SERVICE_NAME for pair in attributes.split(","))


def _version() -> str:
    """This distribution's version, as the instrumentation scope of engine's spans says it."""
    try:
        return version("engine-otel")
    except Exception:  # noqa: BLE001 (run from a source tree, not installed)
        return "0"
