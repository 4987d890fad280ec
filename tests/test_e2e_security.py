"""Security against a real server: API keys, TLS with generated certificates (client certificates too), Host and
Origin checks (CORS), and responses that leak no path, traceback or exception message unless allowed."""
from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
from support import certificate, wait_tls

from engine.testing import (
    Server,
    api_yaml,
    http_server_features,
    plugin_environment,
    write_project,
)

pytestmark = pytest.mark.e2e

PREDICTOR = """
import os


class PythonPredictor:
    def __init__(self, config):
        self.dir = config["dir"]

    def predict(self, payload):
        open(os.path.join(self.dir, "ran"), "w").close()
        if payload == "fail":
            raise ValueError(f"cannot read {os.path.abspath('secret-notes.txt')}")
        return {"ok": payload}
"""


@pytest.fixture
def project(tmp_path) -> Path:
    config = api_yaml("x", predictor_extra=f"config:\n  dir: {tmp_path}")
    return write_project(tmp_path / "project", {"cortex.yaml": config, "predictor.py": PREDICTOR})


@pytest.fixture
def start(tmp_path):
    servers: list[Server] = []

    def run(project: Path, *args: str, env: dict[str, str] | None = None, alive: bool = True) -> Server:
        server = Server(project, *args, env=env)
        servers.append(server)
        if alive:  # over plain HTTP; a TLS server is waited for with wait_tls
            server.wait_ready()
        return server

    yield run
    for server in servers:
        server.close()


def post(server: Server, payload=1, **headers: str) -> httpx.Response:
    return server.client.post("/x", json=payload, headers=headers)


# --- API keys ----------------------------------------------------------------------------------------------------


def test_api_keys_are_required_on_the_apis_and_metrics_but_not_the_probes(start, project):
    server = start(project, "--api-key", "k1-secret", "--api-key", "k2-secret")
    refused = post(server)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert "a valid API key is required" in refused.json()["error"]
    assert post(server, authorization="Bearer k1-secret").status_code == 200
    assert post(server, **{"x-api-key": "k2-secret"}).status_code == 200
    assert post(server, authorization="Bearer wrong").status_code == 401
    assert post(server, authorization="Basic k1-secret").status_code == 401
    assert server.client.get("/healthz").status_code == 200 and server.client.get("/readyz").status_code == 200
    assert server.client.get("/metrics").status_code == 401
    assert server.client.get("/metrics", headers={"x-api-key": "k1-secret"}).status_code == 200
    assert server.client.get("/nowhere").status_code == 401  # even a 404 needs a key: nothing is told for free
    server.stop()
    assert "k1-secret" not in server.output and "k2-secret" not in server.output


def test_metrics_public_opens_only_metrics(start, project):
    server = start(project, "--api-key", "k", "--metrics-public")
    assert server.client.get("/metrics").status_code == 200
    assert post(server).status_code == 401


def test_keys_from_the_environment_and_a_key_file(start, project, tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("# the team's keys\nfile-key-1\n\n  file-key-2   # for the batch job\n")
    key_file.chmod(0o644)
    server = start(project, "--api-key-file", str(key_file), env={"ENGINE_API_KEY": "env-a, env-b"})
    for key in ("file-key-1", "file-key-2", "env-a", "env-b"):
        assert post(server, authorization=f"Bearer {key}").status_code == 200, key
    assert post(server, authorization="Bearer the").status_code == 401
    assert f"--api-key-file {key_file} can be read by other users of this machine (mode 0o644)" in server.output
    key_file.chmod(0o600)
    private = start(project, "--api-key-file", str(key_file))
    assert post(private, authorization="Bearer file-key-1").status_code == 200
    assert "can be read by other users" not in private.output


ROUTE_PLUGIN = """
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from engine import hookimpl


async def hello(request):
    return PlainTextResponse("a plugin's route")


@hookimpl
def engine_routes():
    return [Route("/plugin-route", hello)]
"""


def test_a_plugin_route_is_protected_like_the_apis(start, project, tmp_path):
    env = plugin_environment(tmp_path / "site", "routes", ROUTE_PLUGIN)
    server = start(project, "--api-key", "k", env=env)
    assert server.client.get("/plugin-route").status_code == 401
    assert server.client.get("/plugin-route", headers={"authorization": "Bearer k"}).text == "a plugin's route"


def test_binding_beyond_loopback_warns_only_without_a_key(start, project):
    open_server = start(project, "--host", "0.0.0.0")
    assert "reachable from the network without authentication" in open_server.output
    keyed = start(project, "--host", "0.0.0.0", "--api-key", "k")
    assert "without authentication" not in keyed.output


# --- TLS ----------------------------------------------------------------------------------------------------------


def test_https_with_a_generated_certificate_http1_and_http2(start, project, tmp_path):
    cert, key, _, _ = certificate(tmp_path, "server")
    server = start(project, "--certfile", str(cert), "--keyfile", str(key), alive=False)
    wait_tls(server, ssl.create_default_context(cafile=str(cert)))
    url = f"https://127.0.0.1:{server.port}"
    assert f"POST/GET {url}/x" in server.output
    with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as client:
        answer = client.post(url + "/x", json=5)
        assert answer.status_code == 200 and answer.json() == {"ok": 5} and answer.http_version == "HTTP/1.1"
    with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), http2=True) as client:
        answer = client.post(url + "/x", json=6)
        expected = "HTTP/2" if "http2" in http_server_features() else "HTTP/1.1"  # negotiated by ALPN
        assert answer.json() == {"ok": 6} and answer.http_version == expected
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)  # no plain HTTP on a TLS port


def test_client_certificates_are_required_with_ca_certs(start, project, tmp_path):
    server_cert, server_key, _, _ = certificate(tmp_path, "server")
    ca_cert, _, ca, ca_key = certificate(tmp_path, "client-ca")
    client_cert, client_key, _, _ = certificate(tmp_path, "client", issuer=(ca, ca_key), client=True)
    server = start(project, "--certfile", str(server_cert), "--keyfile", str(server_key), "--ca-certs", str(ca_cert),
                   alive=False)
    url = f"https://127.0.0.1:{server.port}/x"
    context = ssl.create_default_context(cafile=str(server_cert))
    identified = ssl.create_default_context(cafile=str(server_cert))
    identified.load_cert_chain(str(client_cert), str(client_key))
    wait_tls(server, identified)
    with pytest.raises(httpx.TransportError), httpx.Client(verify=context) as anonymous:
        anonymous.post(url, json=1)
    with httpx.Client(verify=identified) as client:
        assert client.post(url, json=2).json() == {"ok": 2}


def test_tls_flags_that_cannot_work_are_one_line_errors(project, tmp_path):
    import subprocess
    import sys

    for args, message in ((["--certfile", str(tmp_path / "missing.pem"), "--keyfile", "x"], "no such file"),
                          (["--certfile", str(tmp_path / "c.pem")], "needs both --certfile and --keyfile")):
        run = subprocess.run([sys.executable, "-m", "engine", "serve", str(project), *args], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 1 and message in run.stderr and "Traceback" not in run.stderr


# --- Host and Origin -------------------------------------------------------------------------------------------------


def test_on_loopback_only_local_host_names_are_answered(start, project, tmp_path):
    server = start(project)
    rebinding = post(server, host="attacker.example")
    assert rebinding.status_code == 400 and "Host 'attacker.example' is not one this server answers" in \
        rebinding.json()["error"]
    assert not (tmp_path / "ran").exists()
    for host in ("localhost", f"localhost:{server.port}", "127.0.0.1", f"[::1]:{server.port}", "app.localhost"):
        assert post(server, host=host).status_code == 200, host


def test_allowed_hosts_replace_the_default(start, project):
    server = start(project, "--allowed-hosts", "api.example,.internal.example")
    assert post(server, host="api.example").status_code == 200
    assert post(server, host="models.internal.example:8080").status_code == 200
    assert post(server, host="localhost").status_code == 400


def test_a_cross_site_request_is_refused_before_predict_runs(start, project, tmp_path):
    server = start(project)
    forged = server.client.post("/x", content=b'"csrf"', headers={"content-type": "text/plain",
                                                                   "origin": "http://attacker.example"})
    assert forged.status_code == 403 and "cross-origin request from http://attacker.example refused" in \
        forged.json()["error"]
    assert not (tmp_path / "ran").exists()
    same = post(server, origin=f"http://127.0.0.1:{server.port}")  # a page served by this very origin
    assert same.status_code == 200 and "access-control-allow-origin" not in same.headers


def test_cors_origins_get_cors_headers_and_preflight_answers(start, project):
    server = start(project, "--cors-origins", "http://app.example", "--api-key", "k")
    preflight = server.client.options("/x", headers={"origin": "http://app.example",
                                                     "access-control-request-method": "POST",
                                                     "access-control-request-headers": "authorization"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "http://app.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    answer = post(server, origin="http://app.example", authorization="Bearer k")
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "http://app.example"
    assert post(server, origin="http://other.example", authorization="Bearer k").status_code == 403


# --- nothing leaks ---------------------------------------------------------------------------------------------------


def test_a_predictor_exception_shows_its_message_only_when_allowed(start, project, tmp_path):
    local = start(project)  # loopback: --expose-errors auto shows it, without the absolute path
    shown = post(local, "fail")
    assert shown.status_code == 500 and shown.json()["error"] == "ValueError: cannot read secret-notes.txt"
    assert shown.json()["request_id"] == shown.headers["x-request-id"]
    hidden_server = start(project, "--expose-errors", "no")
    hidden = post(hidden_server, "fail")
    assert hidden.status_code == 500 and "cannot read" not in hidden.text and str(tmp_path) not in hidden.text
    request_id = hidden.json()["request_id"]
    assert f"predict failed (request_id={request_id})" in hidden_server.output  # the log has the traceback
    assert "ValueError: cannot read" in hidden_server.output


LOADS_BADLY = """
import os


class PythonPredictor:
    def __init__(self, python_client, config):
        self.client = python_client

    def load_model(self, model_path):
        if "2" in os.path.basename(model_path):
            raise FileNotFoundError(os.path.join(model_path, "weights.bin"))
        return 1

    def predict(self, payload):
        return self.client.get_model()
"""


def test_summaries_and_model_errors_carry_no_absolute_path(start, tmp_path):
    project = write_project(tmp_path / "models-project", {
        "cortex.yaml": api_yaml("x", predictor_extra="model_path: models"),
        "predictor.py": LOADS_BADLY, "models/1/file": "1", "models/2/file": "2"})
    server = start(project)
    server.wait_ready()
    summary = server.client.get("/x").text
    assert "weights.bin" in summary and str(tmp_path) not in summary and "/tmp/" not in summary
    failed = server.client.post("/x?version=2", json=1)
    assert str(tmp_path) not in failed.text
