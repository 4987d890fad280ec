"""The OpenTelemetry SDK set up from the standard OTEL_* variables: sampler, resource, exporter and batching."""
from __future__ import annotations

import os
import random
import threading
from importlib.metadata import version

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

from engine import PluginError

DEFAULT_SERVICE_NAME = "engine"
PROTOCOLS = ("http/protobuf", "grpc")
EXPORTERS = ("otlp", "console", "none")


class ChosenIds(RandomIdGenerator):
    """Random ids, except a trace id engine has chosen (and sampled) just before it starts a root span with it."""

    def __init__(self) -> None:
        self._next = threading.local()

    def choose(self) -> int:
        """A new trace id, which the next root span started on this thread gets."""
        trace_id = random.getrandbits(128) or 1
        self._next.trace_id = trace_id
        return trace_id

    def generate_trace_id(self) -> int:
        """The chosen trace id, once; otherwise a random one."""
        chosen = getattr(self._next, "trace_id", None)
        if chosen is None:
            return super().generate_trace_id()
        self._next.trace_id = None
        return int(chosen)


# Any of these says where traces go; without one, engine-otel traces nothing (no collector is assumed to listen)
DESTINATIONS = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def configured_provider() -> tuple[TracerProvider, ChosenIds | None] | None:
    """This process's SDK tracer provider and its id generator (None when it is not engine's own); None when
    OTEL_SDK_DISABLED=true, or when no variable says where traces go and no provider is set already. A provider
    already set (by opentelemetry-instrument, or the predictor's module) is used as it is; otherwise engine's becomes
    the global one, so that a predictor's own spans go where engine's go."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current, None
    if not any(os.environ.get(name) for name in DESTINATIONS):
        return None
    ids = ChosenIds()
    defaults: dict[str, str | int] = {"process.pid": os.getpid()}
    if not _service_named():
        defaults[SERVICE_NAME] = DEFAULT_SERVICE_NAME
    resource = Resource.create(defaults)
    provider = TracerProvider(resource=resource, id_generator=ids)  # the sampler: OTEL_TRACES_SAMPLER(_ARG)
    for exporter in exporters():
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_* size and time its batches
    trace.set_tracer_provider(provider)
    return provider, ids


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
        return GrpcExporter()
    raise PluginError(f"engine-otel: OTLP protocol {protocol!r} (OTEL_EXPORTER_OTLP_PROTOCOL) is not supported; "
                      f"allowed: {', '.join(PROTOCOLS)}")


def _service_named() -> bool:
    """True when OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names the service."""
    attributes = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    return bool(os.environ.get("OTEL_SERVICE_NAME")) or any(
        pair.split("=", 1)[0].strip() == SERVICE_NAME for pair in attributes.split(","))


def instrumentation_version() -> str:
    """This distribution's version, which engine's spans name as their instrumentation scope's."""
    try:
        return version("engine-otel")
    except Exception:  # noqa: BLE001 (run from a source tree, not installed)
        return "0"
