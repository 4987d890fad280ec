"""engine-otel on Ray: `engine serve --on ray --address` (a one-node cluster started without any OTEL_* variable, in
the loopback-only namespace) started with OTEL_* variables; a request through Ray's proxy carrying a `traceparent` is
traced in the replica, in the caller's trace, and its spans reach an OTLP/HTTP receiver inside the namespace."""
from __future__ import annotations

import secrets
import sys
from pathlib import Path

import pytest

from engine.testing import wait_for, write_project

pytest.importorskip("engine_otel", reason="tracing on Ray needs engine-otel")
OTEL_TESTS = Path(__file__).resolve().parents[2] / "otel" / "tests"
sys.path.insert(0, str(OTEL_TESTS))  # otlp_receiver, engine-otel's test receiver

from otlp_receiver import Span, spans_in  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(300)]

RECEIVER_PORT = 4318  # the namespace's own loopback: no collision

PREDICTOR = """
import os

from opentelemetry import trace


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        with trace.get_tracer("predictor").start_as_current_span("own work"):
            return {"pid": os.getpid()}
"""


@pytest.fixture(scope="module")
def receiver(sandbox):
    """An OTLP/HTTP receiver inside the namespace, writing each span it gets to a file; that file."""
    spans = sandbox.folder / "spans.jsonl"
    log = sandbox.folder / "receiver.log"
    process = sandbox.popen([sys.executable, str(OTEL_TESTS / "otlp_receiver.py"), str(RECEIVER_PORT), str(spans)],
                            log)
    wait_for(lambda: "receiving OTLP/HTTP" in log.read_text() or process.poll() is not None, "the receiver starting")
    assert process.poll() is None, log.read_text()
    yield spans
    process.terminate()
    process.wait(10)


def test_a_replica_continues_the_callers_trace(sandbox, ray_cluster, ray_server, receiver, tmp_path):
    project = write_project(tmp_path / "traced", {
        "cortex.yaml": "- name: traced\n  kind: RealtimeAPI\n  predictor:\n    type: python\n    path: predictor.py\n"
                       "  compute:\n    cpu: 100m\n",
        "predictor.py": PREDICTOR})
    # only the driver has them (the cluster was started without): engine-ray hands them to the replicas
    sandbox.env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{RECEIVER_PORT}",
                        "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": "engine-on-ray"})
    try:
        server = ray_server(project, "--address", ray_cluster)
    finally:
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_BSP_SCHEDULE_DELAY", "OTEL_SERVICE_NAME"):
            del sandbox.env[name]
    server.wait_ready()
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    response = server.client.post("/traced", json={}, headers={"traceparent": f"00-{trace_id}-{caller}-01"})
    assert response.status_code == 200, response.text
    replica = response.json()["pid"]

    def traced() -> dict[str, Span] | None:
        found = {span.name: span for span in spans_in(receiver) if span.trace_id == trace_id}
        return found if {"POST /traced", "admission", "predict", "own work", "encode"} <= found.keys() else None
    spans = wait_for(traced, "the replica's spans reaching the receiver", timeout=60)
    served = spans["POST /traced"]
    assert (served.kind, served.parent_span_id) == ("SERVER", caller)
    assert response.headers["traceparent"] == f"00-{trace_id}-{served.span_id}-01"
    for phase in ("admission", "predict", "encode"):
        assert spans[phase].parent_span_id == served.span_id
    assert spans["own work"].parent_span_id == spans["predict"].span_id
    assert {span.pid for span in spans.values()} == {replica} and replica != server.process.pid
    assert {span.service for span in spans.values()} == {"engine-on-ray"}
    assert server.stop() == 0
