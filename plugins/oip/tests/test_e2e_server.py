"""The protocol served beside the APIs: the same API keys, readiness, concurrency limit, deadline and body limit as
the API's own route, over REST and gRPC; gRPC only with --grpc-port, stopped with the server, over TLS with the
server's certificate; and schemathesis finds nothing wrong in the routes' OpenAPI description."""
from __future__ import annotations

import datetime
import ipaddress
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import schemathesis
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from tritonclient.utils import InferenceServerException

from engine.testing import (
    api_yaml,
    free_port,
    in_thread,
    wait_file,
    wait_for,
    write_project,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]


def key() -> dict[str, str]:
    """The API key as headers: a new dict each time, since tritonclient.http adds its own headers to the one given."""
    return {"authorization": "Bearer sesame"}


GATED = """
import os
import time
from pathlib import Path

import numpy as np


class PythonPredictor:
    def __init__(self, config):
        self.gate = Path(config["gate"])
        deadline = time.monotonic() + 60
        while not (self.gate / "init").exists() and time.monotonic() < deadline:  # the test opens it
            time.sleep(0.01)

    def predict(self, payload):
        return "ok"

    def predict_tensors(self, inputs):
        if "hold" in inputs:  # until the test lets hold N go: this request keeps the api's only slot
            step = int(inputs["hold"][0])
            (self.gate / f"held{step}").touch()
            deadline = time.monotonic() + 60
            while not (self.gate / f"release{step}").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return {"y": inputs["x"] * 2}
"""


def tensor(module, name: str, array: np.ndarray):
    made = module.InferInput(name, list(array.shape), "FP32")
    made.set_data_from_numpy(array)
    return made


def code_of(call) -> str:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return str(raised.value.status())


def held_call(module, address: str, step: int) -> str:
    """An inference that the predictor holds until the test releases hold `step`: the status it fails with."""
    client = module.InferenceServerClient(address)  # a client of its own: tritonclient.http's may not change threads
    inputs = [tensor(module, "x", np.array([1.0], dtype=np.float32)),
              tensor(module, "hold", np.array([step], dtype=np.float32))]
    return code_of(lambda: client.infer("gated", inputs, headers=key()))


def test_keys_readiness_limit_and_deadline_are_the_apis_own(servers, tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    project = write_project(tmp_path / "project", {
        "cortex.yaml": api_yaml("gated", predictor_extra=f"config:\n  gate: {gate}",
                                api_extra="autoscaling:\n  max_replica_concurrency: 1"),
        "predictor.py": GATED})
    server = servers(project, "--api-key", "sesame", "--request-timeout", "2", "--max-body-size", "8KiB")
    server.wait_alive()
    server.client.headers.update(key())  # for /metrics
    http = httpclient.InferenceServerClient(server.http)
    grpc = grpcclient.InferenceServerClient(server.grpc)
    x = np.array([1.0, 2.0], dtype=np.float32)

    # initialising: live, not ready, inference unavailable
    assert http.is_server_live(headers=key()) and grpc.is_server_live(headers=key())
    assert not http.is_server_ready(headers=key()) and not grpc.is_server_ready(headers=key())
    assert not http.is_model_ready("gated", headers=key()) and not grpc.is_model_ready("gated", headers=key())
    assert code_of(lambda: http.infer("gated", [tensor(httpclient, "x", x)], headers=key())) == "503"
    assert code_of(lambda: grpc.infer("gated", [tensor(grpcclient, "x", x)], headers=key())) == \
        "StatusCode.UNAVAILABLE"
    (gate / "init").touch()
    server.wait_ready()
    assert http.is_server_ready(headers=key()) and grpc.is_model_ready("gated", headers=key())

    # the API key, on every route and call, health included
    assert not http.is_server_live() and code_of(lambda: grpc.is_server_live()) == "StatusCode.UNAUTHENTICATED"
    assert code_of(lambda: http.infer("gated", [tensor(httpclient, "x", x)])) == "401"
    assert code_of(lambda: grpc.infer("gated", [tensor(grpcclient, "x", x)])) == "StatusCode.UNAUTHENTICATED"
    assert code_of(lambda: grpc.get_model_metadata("gated", headers={"authorization": "Bearer wrong"})) == \
        "StatusCode.UNAUTHENTICATED"
    assert http.infer("gated", [tensor(httpclient, "x", x)], headers=key()).as_numpy("y").tolist() == [2.0, 4.0]
    assert grpc.infer("gated", [tensor(grpcclient, "x", x)], headers={"x-api-key": "sesame"}) \
        .as_numpy("y").tolist() == [2.0, 4.0]

    # one slot: a held request takes it past its deadline (504: DEADLINE_EXCEEDED); the next ones find it taken (503)
    for step, module, address in ((1, grpcclient, server.grpc), (2, httpclient, server.http)):
        hold, held = in_thread(held_call, module, address, step)
        wait_file(gate / f"held{step}")
        assert code_of(lambda: grpc.infer("gated", [tensor(grpcclient, "x", x)], headers=key())) == \
            "StatusCode.UNAVAILABLE"
        assert code_of(lambda: http.infer("gated", [tensor(httpclient, "x", x)], headers=key())) == "503"
        hold.join(30)
        assert held["value"] == ("StatusCode.DEADLINE_EXCEEDED" if module is grpcclient else "504")
        (gate / f"release{step}").touch()
        server.wait_metric('engine_requests_in_flight{api="gated"} 0.0')
    assert grpc.infer("gated", [tensor(grpcclient, "x", x)], headers=key()).as_numpy("y").tolist() == [2.0, 4.0]

    # --max-body-size bounds REST bodies (413) and gRPC messages (RESOURCE_EXHAUSTED) alike
    big = np.zeros(4096, dtype=np.float32)  # 16 KiB
    assert code_of(lambda: http.infer("gated", [tensor(httpclient, "x", big)], headers=key())) == "413"
    assert code_of(lambda: grpc.infer("gated", [tensor(grpcclient, "x", big)], headers=key())) == \
        "StatusCode.RESOURCE_EXHAUSTED"

    # the gRPC server stops with the HTTP server
    assert server.stop() == 0
    assert code_of(lambda: grpc.is_server_live(headers=key())) == "StatusCode.UNAVAILABLE"


def test_grpc_is_served_only_with_grpc_port_and_a_taken_port_stops_the_server(servers, tmp_path):
    project = write_project(tmp_path / "project", {"cortex.yaml": api_yaml("gated", predictor_extra=(
        f"config:\n  gate: {tmp_path}")), "predictor.py": GATED})
    (tmp_path / "init").touch()
    plain = servers(project, grpc=False)
    plain.wait_ready()
    assert plain.client.get("/v2/health/ready").json() == {"ready": True}
    assert "over gRPC" not in plain.output
    plain.stop()

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "engine", "serve", str(project), "--port", str(free_port()),
                              "--grpc-port", str(port)], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1
    assert f"--grpc-port: cannot listen on 127.0.0.1:{port}" in run.stdout + run.stderr


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    cert, private = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert, private


def test_grpc_serves_tls_with_the_servers_certificate(servers, tmp_path):
    cert, key = self_signed(tmp_path)
    project = write_project(tmp_path / "project", {"cortex.yaml": api_yaml("gated", predictor_extra=(
        f"config:\n  gate: {tmp_path}")), "predictor.py": GATED})
    (tmp_path / "init").touch()
    server = servers(project, "--certfile", str(cert), "--keyfile", str(key))
    secure = grpcclient.InferenceServerClient(server.grpc, ssl=True, root_certificates=str(cert))

    def ready() -> bool:
        assert server.process.poll() is None, server.output
        try:
            return secure.is_server_ready()
        except InferenceServerException:
            return False

    wait_for(ready, "the gRPC server ready over TLS", 60)
    x = np.array([1.0, 2.0], dtype=np.float32)
    assert secure.infer("gated", [tensor(grpcclient, "x", x)]).as_numpy("y").tolist() == [2.0, 4.0]
    plain = grpcclient.InferenceServerClient(server.grpc)
    assert code_of(lambda: plain.is_server_live()) == "StatusCode.UNAVAILABLE"


def test_schemathesis_finds_no_5xx_and_no_contradiction_in_the_protocol_routes(servers, tmp_path, onnx_models):
    onnx_models["identity"](tmp_path / "project" / "model" / "1" / "model.onnx")
    echo = "class ONNXPredictor:\n    def __init__(self, onnx_client, config):\n        pass\n\n" \
           "    def predict(self, payload):\n        return payload\n"
    project = write_project(tmp_path / "project", {
        "cortex.yaml": api_yaml("echo", type_="onnx", predictor_extra="model_path: model")
        + api_yaml("gated", predictor="gated.py", predictor_extra=f"config:\n  gate: {tmp_path}"),
        "predictor.py": echo, "gated.py": GATED})
    (tmp_path / "init").touch()
    server = servers(project)
    server.wait_ready()
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()
                  if result.ok().path.startswith("/v2")]
    assert len(operations) == 12
    for operation in operations:

        @given(operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case):
            if "model_name" in (case.path_parameters or {}) and case.path_parameters["model_name"][:1] in "eg":
                case.path_parameters["model_name"] = "echo"  # mostly a model that exists, else every call is a 404
            case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                           response_schema_conformance])

        call()


def test_numpy_and_the_codecs_load_with_the_first_protocol_request_not_at_start(servers, tmp_path):
    """Having the plugin installed costs an engine serve that never speaks the protocol no memory for them."""
    project = write_project(tmp_path / "lazy", {"cortex.yaml": api_yaml("plain"),
                                                "predictor.py": "class PythonPredictor:\n"
                                                                "    def __init__(self, config):\n        pass\n\n"
                                                                "    def predict(self, payload):\n        return 1\n"})
    server = servers(project, grpc=False)
    server.wait_ready()
    assert server.client.post("/plain", json=1).json() == 1
    mapped = Path(f"/proc/{server.process.pid}/maps")
    assert "numpy" not in mapped.read_text() and "grpc" not in mapped.read_text()
    assert server.client.get("/v2/models/plain").status_code == 200
    assert "numpy" in mapped.read_text()
