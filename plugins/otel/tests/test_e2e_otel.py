"""engine-otel end to end, at processes_per_replica 1 and 2: `engine serve` configured by OTEL_* variables exports
OTLP/HTTP (gzip) to a real receiver in the test. A request's server span continues its caller's `traceparent` (and
the response names it), its phases (admission, predict, encode, post_predict) are its children wherever the
predictor runs, a predictor's own span nests under predict, JSON log lines (the predictor's and the access line)
name their span, batch waits and batches link to each other, an error marks the spans, a caller's unsampled trace
and an API's GET summary are followed, and the OIP routes (REST, and gRPC with metadata) are traced too. Sampling off
and OTEL_SDK_DISABLED export nothing; spans still buffered at SIGTERM are exported; a configuration engine-otel
cannot honour is a one-paragraph start-up error; OTLP over gRPC where its exporter is installed."""
from __future__ import annotations

import json
import os
import secrets
import signal
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from otlp_receiver import Collected, GrpcReceiver, Span, grpc_available

from engine.testing import Server, api_yaml, free_port, wait_for, write_project

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

PREDICTOR = """
import logging
import os

import numpy as np
from opentelemetry import trace

log = logging.getLogger("traced")
tracer = trace.get_tracer("predictor")


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        with tracer.start_as_current_span("own work"):
            log.info("predicting %s", payload.get("marker", ""))
        if payload.get("fail"):
            raise ValueError("asked to fail")
        return {"pid": os.getpid()}

    def post_predict(self, response, payload):
        pass

    def predict_tensors(self, inputs):
        with tracer.start_as_current_span("own tensors"):
            return {"y": inputs["x"] * 2}
"""

# Two requests per batch, and a batch only when full (Cortex's `interval` policy, with an interval no test reaches)
BATCHED = """
import os


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return [{"pid": os.getpid()} for _ in payload]
"""
BATCH_SIZE = 2
BATCHING = f"server_side_batching:\n  max_batch_size: {BATCH_SIZE}\n  batch_interval: 30s\n  dispatch: interval"


def otel_env(endpoint: str, **more: str) -> dict[str, str]:
    """engine-otel's variables: export to `endpoint`, in batches sent 50 ms after their first span."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50", **more}


def traceparent() -> tuple[str, str, str]:
    """A caller's sampled W3C traceparent: (header, its trace id, its span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def sent_back(response: httpx.Response) -> tuple[str, str]:
    """The (trace id, server span id) of the traceparent a response carries."""
    version, trace_id, span_id, flags = response.headers["traceparent"].split("-")
    assert (version, flags) == ("00", "01")
    return trace_id, span_id


def exporters_under(pid: int) -> list[int]:
    """The engine-otel exporter processes among the descendants of `pid`."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):  # not a process, or one that has gone
            continue
    found, under = [], [pid]
    while under:
        parent = under.pop()
        for child in [child for child, its_parent in parents.items() if its_parent == parent]:
            under.append(child)
            try:
                if b"engine_otel.exporter" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(child)
            except OSError:
                continue
    return found


def alive(pid: int) -> bool:
    """Whether the process runs (not gone, not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def server_span(spans: dict[str, Span], trace_id: str) -> Span:
    (found,) = (span for span in spans.values() if span.kind == "SERVER" and span.trace_id == trace_id)
    return found


@pytest.fixture(scope="module")
def server(processes, receiver, tmp_path_factory):
    """One server per module run: the traced API (Cortex and OIP routes) and a batched one, logging JSON."""
    project = write_project(tmp_path_factory.mktemp("otel") / "project", {
        "cortex.yaml": api_yaml("traced") + api_yaml("batched", "batched.py", predictor_extra=BATCHING),
        "predictor.py": PREDICTOR, "batched.py": BATCHED})
    grpc_port = free_port()
    started = Server(project, "--log-format", "json", "--grpc-port", str(grpc_port), env=otel_env(
        receiver.endpoint, OTEL_SERVICE_NAME=f"otel-e2e-{processes}", OTEL_EXPORTER_OTLP_COMPRESSION="gzip"))
    started.grpc = f"127.0.0.1:{grpc_port}"
    try:
        started.wait_ready()
        yield started
    finally:
        started.close()


def test_a_request_continues_its_callers_trace_through_every_phase(server, receiver, processes):
    header, trace_id, caller = traceparent()
    marker = secrets.token_hex(4)
    response = server.client.post("/traced", json={"marker": marker}, headers={"traceparent": header})
    assert response.status_code == 200
    assert sent_back(response)[0] == trace_id
    spans = receiver.collected.trace(trace_id, ["POST /traced", "admission", "predict", "own work", "encode",
                                                "post_predict"])
    served = spans["POST /traced"]
    assert (served.kind, served.parent_span_id, served.status, served.scope) == ("SERVER", caller, "UNSET", "engine")
    assert sent_back(response) == (trace_id, served.span_id)
    assert served.attributes == {"http.request.method": "POST", "url.path": "/traced", "engine.api": "traced",
                                 "engine.request_id": response.headers["x-request-id"],
                                 "http.response.status_code": 200}
    assert served.service == f"otel-e2e-{processes}" and served.pid == server.process.pid
    for phase in ("admission", "predict", "encode", "post_predict"):
        assert (spans[phase].kind, spans[phase].parent_span_id, spans[phase].status) == \
            ("INTERNAL", served.span_id, "UNSET"), phase
    own = spans["own work"]
    assert (own.parent_span_id, own.scope) == (spans["predict"].span_id, "predictor")
    # the predictor's phases run where it runs: a worker process at processes_per_replica 2, in the same trace
    predictor_pid = response.json()["pid"]
    assert (predictor_pid != server.process.pid) == (processes > 1)
    assert {spans[name].pid for name in ("predict", "own work", "encode", "post_predict")} == {predictor_pid}
    order = [served.start_ns, spans["admission"].start_ns, spans["admission"].end_ns, spans["predict"].start_ns,
             own.start_ns, own.end_ns, spans["predict"].end_ns, spans["encode"].start_ns, spans["encode"].end_ns,
             served.end_ns]
    assert order == sorted(order)
    assert "gzip" in receiver.encodings and not receiver.errors
    # the predictor's log line (JSON) names the request, its trace and the span it was written in
    server.wait_output(f"predicting {marker}")
    (line,) = [json.loads(line) for line in server.output.splitlines() if f'"predicting {marker}"' in line]
    assert (line["request_id"], line["trace_id"], line["span_id"]) == \
        (response.headers["x-request-id"], trace_id, own.span_id)


def test_the_access_line_names_the_server_span(server, receiver):
    header, trace_id, _ = traceparent()
    response = server.client.post("/traced", json={}, headers={"traceparent": header})
    span_id = sent_back(response)[1]
    request_id = response.headers["x-request-id"]
    server.wait_output(f"request_id={request_id}")
    (line,) = [json.loads(line) for line in server.output.splitlines()
               if f'"request_id":"{request_id}"' in line and '"logger":"engine.access"' in line]
    assert (line.get("trace_id"), line.get("span_id")) == (trace_id, span_id)


def test_every_line_the_server_writes_is_json(server):
    """With --grpc-port and worker processes too (gRPC's own C library must not write lines of its own)."""
    server.client.post("/traced", json={})
    for line in server.output.splitlines():
        assert isinstance(json.loads(line), dict), line


def test_a_request_without_traceparent_starts_a_trace_of_its_own(server, receiver):
    response = server.client.post("/traced", json={})
    trace_id, span_id = sent_back(response)
    spans = receiver.collected.trace(trace_id, ["POST /traced", "predict"])
    assert (spans["POST /traced"].span_id, spans["POST /traced"].parent_span_id) == (span_id, "")
    assert spans["predict"].parent_span_id == span_id


def test_a_caller_that_does_not_sample_is_followed(server, receiver):
    """parentbased_always_on, the default sampler: a caller's unsampled traceparent leaves the request untraced."""
    header, unsampled, _ = traceparent()
    response = server.client.post("/traced", json={}, headers={"traceparent": header[:-2] + "00"})
    assert response.status_code == 200 and "traceparent" not in response.headers
    later = sent_back(server.client.post("/traced", json={}))
    # the front exports its server spans in the order they end: once the later request's is in, the first's
    # would be too, had it been made
    receiver.collected.trace(later[0], ["POST /traced"])
    assert not [span for span in receiver.collected.spans if span.trace_id == unsampled]


def test_an_apis_get_summary_is_a_server_span_alone(server, receiver):
    header, trace_id, caller = traceparent()
    response = server.client.get("/traced", headers={"traceparent": header})
    assert response.status_code == 200 and sent_back(response)[0] == trace_id
    later = sent_back(server.client.post("/traced", json={}))
    receiver.collected.trace(later[0], ["POST /traced", "predict"])
    spans = receiver.collected.wait_for_spans(lambda spans: [span for span in spans if span.trace_id == trace_id])
    assert [(span.name, span.kind, span.parent_span_id) for span in spans] == [("GET /traced", "SERVER", caller)]


def test_a_predictor_error_marks_the_server_span_and_the_predict_span(server, receiver):
    header, trace_id, _ = traceparent()
    response = server.client.post("/traced", json={"fail": True}, headers={"traceparent": header})
    assert response.status_code == 500 and sent_back(response)[0] == trace_id
    spans = receiver.collected.trace(trace_id, ["POST /traced", "predict"])
    assert spans["POST /traced"].status == "ERROR"
    assert spans["POST /traced"].attributes["http.response.status_code"] == 500
    assert spans["predict"].status == "ERROR"
    (exception,) = [attributes for name, attributes in spans["predict"].events if name == "exception"]
    assert (exception["exception.type"], exception["exception.message"]) == ("ValueError", "asked to fail")


def test_batch_waits_and_batches_link_to_each_other(server, receiver, processes):
    count = BATCH_SIZE * processes  # a full batch in each worker process (requests go to the least loaded)
    together = threading.Barrier(count)
    responses: list[httpx.Response] = []

    def send() -> None:
        together.wait()
        responses.append(httpx.post(f"{server.url}/batched", json={}, timeout=60))

    threads = [threading.Thread(target=send) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [response.status_code for response in responses] == [200] * count
    requests = dict(map(sent_back, responses))  # trace id -> server span id

    def linked(spans: list[Span]) -> tuple[dict[str, Span], dict[str, Span]] | None:
        waits = {span.trace_id: span for span in spans if span.name == "batch wait" and span.trace_id in requests}
        batches = {span.span_id: span for span in spans if span.name == "batch"}
        if waits.keys() != requests.keys() or not all(wait.links[0][1] in batches for wait in waits.values()):
            return None
        return waits, batches
    waits, batches = receiver.collected.wait_for_spans(linked)
    for trace_id, wait in waits.items():
        assert wait.parent_span_id == requests[trace_id]
        (link,) = wait.links
        batch = batches[link[1]]
        assert link[0] == batch.trace_id
        assert (trace_id, requests[trace_id]) in batch.links  # the batch it joined links back to the request
    for batch in {link[1]: batches[link[1]] for wait in waits.values() for link in wait.links}.values():
        assert batch.attributes["engine.batch_size"] == len(batch.links)
        assert (batch.trace_id, batch.parent_span_id) in batch.links  # in the trace of a request it holds
        assert batch.pid in {response.json()["pid"] for response in responses}  # where the predictor runs


def test_oip_rest_and_grpc_inference_continue_the_callers_trace(server, receiver):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    header, trace_id, caller = traceparent()
    rest = server.client.post("/v2/models/traced/infer", headers={"traceparent": header}, json={
        "inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.5]}]})
    assert rest.status_code == 200 and rest.json()["outputs"][0]["data"] == [2.0, 5.0]
    grpc_header, grpc_trace_id, grpc_caller = traceparent()
    request = service_pb2.ModelInferRequest(model_name="traced", inputs=[
        service_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[2])],
        raw_input_contents=[np.array([1.0, 2.5], dtype=np.float32).tobytes()])
    with grpc.insecure_channel(server.grpc) as channel:  # tritonclient's stub: it shows the call's metadata
        answer, call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(
            request, metadata=[("traceparent", grpc_header)])
    assert np.frombuffer(answer.raw_output_contents[0], dtype=np.float32).tolist() == [2.0, 5.0]
    sent = {trace_id: rest.headers.get("traceparent"),
            grpc_trace_id: (dict(call.initial_metadata()) | dict(call.trailing_metadata())).get("traceparent")}

    for trace, parent, operation in ((trace_id, caller, "oip.infer"), (grpc_trace_id, grpc_caller, "oip.infer_grpc")):
        def complete(spans: list[Span], trace: str = trace, operation: str = operation) -> list[Span] | None:
            found = [span for span in spans if span.trace_id == trace]
            names = sorted(span.name for span in found)
            return found if names == sorted(["admission", operation, operation, "own tensors"]) else None
        spans = receiver.collected.wait_for_spans(complete)
        (served,) = [span for span in spans if span.kind == "SERVER"]
        (run,) = [span for span in spans if span.name == operation and span.kind == "INTERNAL"]
        (admission,) = [span for span in spans if span.name == "admission"]
        (own,) = [span for span in spans if span.name == "own tensors"]
        assert (served.name, served.parent_span_id) == (operation, parent)
        assert served.attributes["engine.api"] == "traced"
        assert run.parent_span_id == admission.parent_span_id == served.span_id
        assert own.parent_span_id == run.span_id
        assert sent[trace] == f"00-{trace}-{served.span_id}-01"  # a response header; gRPC metadata


def plain_project(root: Path, processes: int) -> Path:
    return write_project(root, {"cortex.yaml": api_yaml("traced", predictor_extra=f"processes_per_replica: "
                                                                                   f"{processes}"),
                                "predictor.py": PREDICTOR})


@pytest.mark.parametrize("processes_per_replica", [1, 2])
def test_what_a_server_exports_when_sampling_is_off_or_the_sdk_disabled_and_what_it_flushes_when_it_stops(
        receiver, tmp_path, processes_per_replica):
    """Three servers: sampling off, the SDK disabled, and one whose spans would wait 10 minutes to be sent: stopped,
    the first two have exported nothing and the third everything (spans are flushed as a process exits). Only the
    third has an exporter process, one for the front and its workers, and it has exited with the server."""
    header, trace_id, caller = traceparent()
    servers = {}
    for name, env in (("off", {"OTEL_TRACES_SAMPLER": "always_off"}), ("disabled", {"OTEL_SDK_DISABLED": "true"}),
                      ("buffered", {"OTEL_BSP_SCHEDULE_DELAY": "600000"})):
        service = {} if name == "buffered" else {"OTEL_SERVICE_NAME": f"otel-{name}-{trace_id}"}
        servers[name] = Server(plain_project(tmp_path / name, processes_per_replica),
                               env=otel_env(receiver.endpoint, **env, **service))
    try:
        for name, started in servers.items():
            started.wait_ready()
            response = started.client.post("/traced", json={}, headers={"traceparent": header})
            assert response.status_code == 200, started.output
            assert ("traceparent" in response.headers) == (name == "buffered"), name
        exporters = {name: exporters_under(started.process.pid) for name, started in servers.items()}
        assert {name: len(found) for name, found in exporters.items()} == {"off": 0, "disabled": 0, "buffered": 1}
        for started in servers.values():
            assert started.stop() == 0
        assert not alive(exporters["buffered"][0])
    finally:
        for started in servers.values():
            started.close()
    # every span a server made has been exported by the time it has exited
    spans = [span for span in receiver.collected.spans if span.trace_id == trace_id]
    assert sorted(span.name for span in spans) == ["POST /traced", "admission", "encode", "own work", "post_predict",
                                                   "predict"]
    assert {span.service for span in spans} == {"engine"}  # the default service name: none from the other two
    assert next(span for span in spans if span.kind == "SERVER").parent_span_id == caller


def test_a_server_whose_exporter_process_is_killed_serves_on(receiver, tmp_path):
    """With worker processes: killed, the exporter process is said to be gone once; the front and its workers answer
    as before (their spans dropped), and the server stops cleanly."""
    started = Server(plain_project(tmp_path / "project", 2), env=otel_env(receiver.endpoint))
    try:
        started.wait_ready()
        first = sent_back(started.client.post("/traced", json={}))
        receiver.collected.trace(first[0], ["POST /traced", "predict"])  # exported, from the front and a worker
        (exporter,) = exporters_under(started.process.pid)
        os.kill(exporter, signal.SIGKILL)
        started.wait_output(f"its exporter process (pid {exporter}) was killed by signal 9")
        for _ in range(4):
            response = started.client.post("/traced", json={})
            assert response.status_code == 200 and "traceparent" in response.headers
        assert started.stop() == 0
    finally:
        started.close()
    assert started.output.count("exporter process") == 1, started.output


def test_the_exporter_process_dies_with_its_server(receiver, tmp_path):
    started = Server(plain_project(tmp_path / "project", 1), env=otel_env(receiver.endpoint))
    try:
        started.wait_ready()
        found = exporters_under(started.process.pid)
        assert len(found) == 1, (found, started.output)
        started.process.kill()
        started.process.wait()
        wait_for(lambda: not alive(found[0]), "the exporter process dying with its server")
    finally:
        started.close()


@pytest.mark.parametrize(("env", "message"), [
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
     "error: engine-otel: OTLP protocol 'http/json' (OTEL_EXPORTER_OTLP_PROTOCOL) is not supported; allowed: "
     "http/protobuf, grpc"),
    ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
     "error: engine-otel: OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the gRPC exporter: pip install 'engine-otel[grpc]' "
     "(or use http/protobuf, the default)"),
    ({"OTEL_TRACES_EXPORTER": "otlp,zipkin"},
     "error: engine-otel: OTEL_TRACES_EXPORTER names zipkin, which engine-otel does not provide; allowed: otlp, "
     "console, none (comma-separated)"),
], ids=["http-json", "grpc-not-installed", "zipkin"])
def test_what_engine_otel_cannot_do_is_a_one_paragraph_start_up_error(receiver, tmp_path, env, message):
    if "grpc" in message and grpc_available():
        pytest.skip("the gRPC exporter is installed here")
    started = Server(plain_project(tmp_path / "project", 1), env=otel_env(receiver.endpoint, **env))
    assert started.wait_exit() == 1
    assert message in started.output.splitlines()
    assert "Traceback" not in started.output


@pytest.mark.skipif(not grpc_available(), reason="OTLP over gRPC needs engine-otel[grpc]")
def test_otlp_over_grpc(tmp_path):
    grpc_receiver = GrpcReceiver(Collected())
    started = Server(plain_project(tmp_path / "project", 1), env=otel_env(
        grpc_receiver.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="grpc"))
    try:
        started.wait_ready()
        header, trace_id, caller = traceparent()
        assert started.client.post("/traced", json={}, headers={"traceparent": header}).status_code == 200
        spans = grpc_receiver.collected.trace(trace_id, ["POST /traced", "predict", "own work"])
        assert spans["POST /traced"].parent_span_id == caller
    finally:
        started.close()
        grpc_receiver.close()
