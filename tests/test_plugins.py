"""The plugin system: every hook, built-in defaults losing to installed plugins, and third-party discovery."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pluggy
import pytest
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from engine import Device, PredictorType, hookimpl
from engine.app import create_app
from engine.config import Api
from engine.errors import ConfigError, MissingPluginError
from engine.plugins import (DEFAULT_PLUGINS, create_client, make_plugin_manager, plugin_infos, predictor_type,
                            predictor_types, setup_device)
from engine.testing import Server, api_yaml, fake_distribution, write_project
from engine.validate import validate_project

REPO = Path(__file__).resolve().parents[1]
MSGPACK_PLUGIN_SOURCE = REPO / "examples" / "msgpack-plugin"

ECHO = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return {"payload": payload}
"""


@pytest.fixture
def isolated_process(monkeypatch):
    """Undo what an in-process app does to the process: working directory, sys.path and environment."""
    monkeypatch.chdir(os.getcwd())
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(os, "environ", os.environ.copy())


@contextlib.contextmanager
def serving(app) -> Iterator[TestClient]:
    """The app hosted in-process, once its predictors are ready (they initialise in the background)."""
    with TestClient(app, base_url="http://localhost") as client:  # the Host a loopback server answers
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.01)
        yield client


def make_api(**predictor) -> Api:
    return Api.model_validate({"name": "x", "kind": "RealtimeAPI",
                               "predictor": {"type": "python", "path": "p.py", **predictor}})


def test_fresh_manager_has_the_defaults_and_the_python_plugin(pm):
    names = [name for name, _ in pm.list_name_plugin()]
    assert names[: len(DEFAULT_PLUGINS)] == list(DEFAULT_PLUGINS)
    assert "python" in names
    assert make_plugin_manager() is not pm


def test_engine_predictor_types(pm):
    types = predictor_types(pm)
    assert types["python"].class_name == "PythonPredictor"
    assert types["python"].client_arg == "python_client"


def core_and_python_only() -> pluggy.PluginManager:
    """A manager with the core and the python type only, whatever else is installed."""
    import engine_python_predictor

    pm = make_plugin_manager(load_entry_points=False)
    pm.register(engine_python_predictor, name="python")
    return pm


def test_missing_predictor_type_names_what_to_install():
    pm = core_and_python_only()
    with pytest.raises(MissingPluginError, match=r"no plugin provides predictor type 'onnx'; installed: python\. "
                                                 r"Install engine\[onnx\]\."):
        predictor_type(pm, "onnx")


def test_engine_setup_device_cpu_default(pm, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    device = setup_device(pm, make_api(processes_per_replica=2), process_index=1)
    assert (device.kind, device.process_index, device.threads) == ("cpu", 1, 2)
    assert os.environ["OMP_NUM_THREADS"] == "2" and device.env["OMP_NUM_THREADS"] == "2"
    assert os.environ["MKL_NUM_THREADS"] == "7" and "MKL_NUM_THREADS" not in device.env  # the user's choice stays
    single = setup_device(pm, make_api(), process_index=0)
    assert single.threads == 4 and single.env == {}


def test_engine_hardware_targets_missing_gpu_plugin():
    pm = core_and_python_only()
    api = Api.model_validate({"name": "x", "kind": "RealtimeAPI", "compute": {"gpu": 1},
                              "predictor": {"type": "python", "path": "p.py"}})
    with pytest.raises(MissingPluginError, match=r"hardware target 'gpu'.*installed: cpu\. Install engine\[gpu\]"):
        setup_device(pm, api, 0)


def test_an_installed_hardware_plugin_owns_its_target():
    pm = core_and_python_only()
    class FakeGpu:
        @hookimpl
        def engine_hardware_targets(self):
            return ["gpu"]

        @hookimpl
        def engine_setup_device(self, api, process_index):
            return Device(kind="cuda", process_index=process_index, visible_devices=["0"]) if api.compute.gpu else None

    pm.register(FakeGpu())
    api = Api.model_validate({"name": "x", "kind": "RealtimeAPI", "compute": {"gpu": 1},
                              "predictor": {"type": "python", "path": "p.py"}})
    assert setup_device(pm, api, 0).kind == "cuda"
    assert setup_device(pm, make_api(), 0).kind == "cpu"


def test_engine_create_client_and_a_third_party_predictor_type(pm, tmp_path, isolated_process):
    class EchoType:
        @hookimpl
        def engine_predictor_types(self):
            return [PredictorType("echo", "EchoPredictor", "echo_client", requires_models=False)]

        @hookimpl
        def engine_create_client(self, api, device, models):
            return {"device": device.kind} if api.predictor.type == "echo" else None

    pm.register(EchoType())
    source = """
    class EchoPredictor:
        def __init__(self, echo_client, config):
            self.client = echo_client

        def predict(self, payload):
            return {"client": self.client, "payload": payload}
    """
    write_project(tmp_path, {"cortex.yaml": api_yaml("echo", type_="echo"), "predictor.py": source})
    with serving(create_app(tmp_path, pm=pm)) as client:
        assert client.post("/echo", json=3).json() == {"client": {"device": "cpu"}, "payload": 3}
    assert create_client(pm, make_api(), Device(kind="cpu"), None, None) is None  # python without models: no client


def test_engine_parse_payload_and_encode_response_plugins_win_over_defaults(pm, tmp_path, isolated_process):
    class Shouting:
        @hookimpl
        def engine_parse_payload(self, body, content_type, headers, api):
            return body.decode().upper() if content_type == "text/shout" else None

        @hookimpl
        def engine_encode_response(self, result, request_headers, api):
            return PlainTextResponse(f"<{result['payload']}>") if request_headers.get("x-wrap") else None

    pm.register(Shouting())
    write_project(tmp_path, {"cortex.yaml": api_yaml("echo"), "predictor.py": ECHO})
    with serving(create_app(tmp_path, pm=pm)) as client:
        assert client.post("/echo", content=b"hi", headers={"Content-Type": "text/shout"}).json() == {"payload": "HI"}
        assert client.post("/echo", json={"a": 1}).json() == {"payload": {"a": 1}}  # the defaults still answer
        assert client.post("/echo", json="x", headers={"X-Wrap": "1"}).text == "<x>"


def test_engine_routes_and_engine_startup(pm, tmp_path, isolated_process):
    started = []

    class Extras:
        @hookimpl
        def engine_routes(self):
            return [Route("/version", lambda request: Response("1.2.3"), methods=["GET"])]

        @hookimpl
        def engine_startup(self, apis):
            started.append([api.name for api in apis])

    pm.register(Extras())
    write_project(tmp_path, {"cortex.yaml": api_yaml("echo"), "predictor.py": ECHO})
    with serving(create_app(tmp_path, pm=pm)) as client:
        assert client.get("/version").text == "1.2.3"
        assert client.get("/metrics").status_code == 200  # the built-in route is still there
        assert client.post("/echo", json=1).status_code == 200
    assert started == [["echo"]]


def test_engine_validate_api_problems_fail_validation(pm, tmp_path):
    class Strict:
        @hookimpl
        def engine_validate_api(self, api, project_root):
            return [f"compute.mem: required by the strict plugin (project {project_root.name})"]

    pm.register(Strict())
    write_project(tmp_path, {"cortex.yaml": api_yaml("echo"), "predictor.py": ECHO})
    with pytest.raises(ConfigError, match=r"api 'echo': compute.mem: required by the strict plugin"):
        validate_project(tmp_path, pm=pm)


def test_a_third_party_distribution_is_discovered_with_no_core_change(tmp_path, monkeypatch):
    fake_distribution(tmp_path / "site", "engine-msgpack", "0.1.0", {"msgpack": "engine_msgpack"})
    monkeypatch.syspath_prepend(str(MSGPACK_PLUGIN_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    pm = make_plugin_manager()
    infos = {info.name: info for info in plugin_infos(pm)}
    assert infos["msgpack"].distribution == "engine-msgpack 0.1.0"
    assert infos["msgpack"].hooks == ["engine_encode_response", "engine_parse_payload", "engine_payload_media_types"]


@pytest.mark.e2e
def test_msgpack_plugin_end_to_end_and_listed_by_engine_plugins(tmp_path):
    site = tmp_path / "site"
    fake_distribution(site, "engine-msgpack", "0.1.0", {"msgpack": "engine_msgpack"})
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(MSGPACK_PLUGIN_SOURCE)])}
    listing = subprocess.run([sys.executable, "-m", "engine", "plugins"], capture_output=True, text=True,
                             env={**os.environ, **env}, timeout=60)
    assert "msgpack  (engine-msgpack 0.1.0)" in listing.stdout
    assert "hooks: engine_encode_response, engine_parse_payload, engine_payload_media_types" in listing.stdout
    project = write_project(tmp_path / "project", {"cortex.yaml": api_yaml("echo"), "predictor.py": ECHO})
    server = Server(project, env=env)
    try:
        server.wait_ready()
        body = msgpack.packb({"a": [1, 2], "b": b"\x00"})
        packed = server.client.post("/echo", content=body, headers={"Content-Type": "application/msgpack",
                                                                    "Accept": "application/msgpack"})
        assert packed.headers["content-type"] == "application/msgpack"
        assert msgpack.unpackb(packed.content) == {"payload": {"a": [1, 2], "b": b"\x00"}}
        as_json = server.client.post("/echo", content=msgpack.packb([1]), headers={"Content-Type": "application/msgpack"})
        assert as_json.json() == {"payload": [1]}
        broken = server.client.post("/echo", content=b"\xc1", headers={"Content-Type": "application/msgpack"})
        assert broken.status_code == 400 and "invalid msgpack" in broken.json()["error"]
    finally:
        assert server.stop() == 0


def test_every_hook_has_a_test_and_a_doc_entry():
    from engine import hookspecs

    hooks = sorted(name for name in dir(hookspecs) if name.startswith("engine_"))
    tests = "".join(path.read_text() for path in (REPO / "tests").glob("test_*.py") if path.name != "test_plugins.py")
    tests += textwrap.dedent(Path(__file__).read_text().split("def test_every_hook_has_a_test")[0])
    docs = (REPO / "docs" / "plugin_hooks.md").read_text()
    assert hooks, "no hooks found"
    for hook in hooks:
        assert f"def test_{hook}" in tests or f"def {hook}(" in tests, f"{hook} has no test"
        assert f"### `{hook}" in docs, f"{hook} is not documented in docs/plugin_hooks.md"
