"""The plugin system: every hook, built-in defaults losing to installed plugins, third-party discovery, plugins'
own settings, and plugins written for the deprecated hooks still serving."""
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
from starlette.testclient import TestClient

from engine import (
    Device,
    HttpRoute,
    PayloadParser,
    PredictorType,
    Setting,
    hookimpl,
    port_number,
)
from engine.app import create_app
from engine.errors import ConfigError, MissingPluginError
from engine.plugins import (
    DEFAULT_PLUGINS,
    create_client,
    make_plugin_manager,
    plugin_infos,
    predictor_type,
    predictor_types,
    settings,
    setup_device,
)
from engine.project.config import Api
from engine.project.validate import validate_project
from engine.settings import ServeSettings
from engine.testing import (
    Server,
    api_yaml,
    fake_distribution,
    plugin_environment,
    write_project,
)

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


def test_a_third_party_predictor_type_is_one_object_with_its_client(pm, tmp_path, isolated_process):
    echo = PredictorType("echo", "EchoPredictor", "echo_client",
                         create_client=lambda api, device, models, batching: {"device": device.kind})

    class EchoType:
        @hookimpl
        def engine_predictor_types(self):
            return [echo]

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


def test_engine_payload_parsers_and_encode_response_plugins_win_over_defaults(pm, tmp_path, isolated_process):
    class Shouting:
        @hookimpl
        def engine_payload_parsers(self):
            return [PayloadParser(("text/shout",), lambda body, content_type, headers, api: body.decode().upper()),
                    PayloadParser(("application/json",), lambda body, content_type, headers, api: None)]

        @hookimpl
        def engine_encode_response(self, result, request_headers, api):
            return PlainTextResponse(f"<{result['payload']}>") if request_headers.get("x-wrap") else None

    pm.register(Shouting())
    write_project(tmp_path, {"cortex.yaml": api_yaml("echo"), "predictor.py": ECHO})
    with serving(create_app(tmp_path, pm=pm)) as client:
        assert client.post("/echo", content=b"hi", headers={"Content-Type": "Text/Shout; x=1"}).json() == \
            {"payload": "HI"}
        assert client.post("/echo", content=b"hi", headers={"Content-Type": "text/shouting"}).json() == \
            {"payload": "HI"}  # a media type that starts with the parser's
        assert client.post("/echo", json={"a": 1}).json() == {"payload": None}  # the plugin's JSON parser wins...
        assert client.post("/echo", content="é".encode("latin-1"),  # ...the built-in ones answer the rest
                           headers={"Content-Type": "text/plain; charset=latin-1"}).json() == {"payload": "é"}
        assert client.post("/echo", json="x", headers={"X-Wrap": "1"}).text == "<None>"
        request_types = client.get("/openapi.json").json()["paths"]["/echo"]["post"]["requestBody"]["content"]
        assert {"text/shout", "application/json", "text/plain"} <= set(request_types)


def test_a_body_no_parser_claims_is_given_as_bytes(pm):
    from engine.serving.parsing import payload_parser

    parse = payload_parser(pm)
    assert parse(body=b"\x00", content_type="image/png", headers={}, api=None) == b"\x00"
    assert parse(body=b"\x00", content_type="", headers={}, api=None) == b"\x00"
    assert parse(body=b"[1]", content_type="APPLICATION/JSON; charset=utf-8", headers={}, api=None) == [1]
    for n in range(600):  # more distinct Content-Types than it remembers (multipart boundaries make them so)
        assert parse(body=b"hi", content_type=f"text/plain; boundary={n}", headers={}, api=None) == "hi"
        assert parse(body=b"hi", content_type=f"x/y; boundary={n}", headers={}, api=None) == b"hi"


def test_engine_http_routes_and_engine_startup(pm, tmp_path, isolated_process):
    started = []

    async def version(request):
        return Response("1.2.3")

    described = {"get": {"operationId": "version", "responses": {"200": {"description": "the version"}}}}

    class Extras:
        @hookimpl
        def engine_http_routes(self):
            return [HttpRoute("/version", version, ("GET",), described)]

        @hookimpl
        def engine_startup(self, apis):
            started.append([api.name for api in apis])

    pm.register(Extras())
    write_project(tmp_path, {"cortex.yaml": api_yaml("echo"), "predictor.py": ECHO})
    with serving(create_app(tmp_path, pm=pm)) as client:
        assert client.get("/version").text == "1.2.3"
        assert client.get("/openapi.json").json()["paths"]["/version"] == described
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


def test_a_predictor_type_validates_only_its_own_apis(pm, tmp_path):
    checked = []
    picky = PredictorType("picky", "PickyPredictor", "picky_client",
                          validate=lambda api, root: checked.append(api.name) or [f"{root.name} is not tidy"])

    class Picky:
        @hookimpl
        def engine_predictor_types(self):
            return [picky]

    pm.register(Picky())
    write_project(tmp_path, {"cortex.yaml": api_yaml("echo"), "predictor.py": ECHO})
    validate_project(tmp_path, pm=pm)  # a python API: the picky type is not asked
    assert checked == []
    write_project(tmp_path, {"cortex.yaml": api_yaml("echo", type_="picky"),
                             "predictor.py": "class PickyPredictor:\n    def __init__(self, config):\n        pass\n"
                                             "    def predict(self):\n        return 1\n"})
    with pytest.raises(ConfigError, match=rf"api 'echo': {tmp_path.name} is not tidy"):
        validate_project(tmp_path, pm=pm)
    assert checked == ["echo"]


def test_engine_settings_are_flags_and_variables_of_engine_serve(pm, tmp_path):
    class Knob:
        @hookimpl
        def engine_settings(self):
            return [Setting("knob_port", "the knob's port", parse=port_number, metavar="PORT"),
                    Setting("knob_name", "the knob's name", default="plain")]

    pm.register(Knob())
    declared = settings(pm)
    assert {"knob_port", "knob_name", "grpc_port", "address"} <= {setting.name for setting in declared}
    from_environment = ServeSettings.load(environ={"ENGINE_KNOB_PORT": "9000"}, declared=declared)
    assert (from_environment.knob_port, from_environment.knob_name) == (9000, "plain")
    given = ServeSettings.load({"knob_name": "fancy"}, environ={"ENGINE_KNOB_NAME": "x", "ENGINE_KNOB_PORT": ""},
                               declared=declared)
    assert (given.knob_port, given.knob_name) == (None, "fancy")  # the flag wins; an empty variable is the default
    assert given.replace(knob_name="other", port=1).knob_name == "other"
    with pytest.raises(ConfigError, match="ENGINE_KNOB_PORT='70000': 70000 is not a TCP port"):
        ServeSettings.load(environ={"ENGINE_KNOB_PORT": "70000"}, declared=declared)
    with pytest.raises(AttributeError, match="no installed plugin has a setting of that name|neither engine nor"):
        ServeSettings().knob_port  # noqa: B018


@pytest.mark.e2e
def test_engine_serve_help_lists_the_installed_plugins_settings_and_their_variables_work(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "engine", "serve", "--help"], capture_output=True, text=True,
                               timeout=60, check=True).stdout
    assert "--grpc-port PORT" in help_text and "$ENGINE_GRPC_PORT" in help_text  # engine-oip's
    assert "--address ADDRESS" in help_text and "$ENGINE_ADDRESS" in help_text  # engine-ray's
    without = subprocess.run([sys.executable, "-m", "engine", "serve", "--help"], capture_output=True, text=True,
                             timeout=60, check=True, env={**os.environ, "ENGINE_PLUGINS": "python"}).stdout
    assert "--grpc-port" not in without and "--address" not in without
    project = write_project(tmp_path / "project", {"cortex.yaml": api_yaml("echo"), "predictor.py": ECHO})
    server = Server(project, "--grpc-port", "not-a-port")
    assert server.process.wait(timeout=60) == 1 and "--grpc-port: invalid" in server.output
    server = Server(project, env={"ENGINE_GRPC_PORT": "70000"})
    assert server.process.wait(timeout=60) == 1
    assert "environment variable ENGINE_GRPC_PORT='70000': 70000 is not a TCP port" in server.output


# A plugin written for the hooks that engine_predictor_types' PredictorType, engine_payload_parsers and
# engine_http_routes replace: it keeps working for one release, with a warning that names it.
DEPRECATED_HOOKS_PLUGIN = """
from starlette.responses import JSONResponse
from starlette.routing import Route

from engine import PredictorType, hookimpl

LEGACY = PredictorType("legacy", "LegacyPredictor", "legacy_client")


@hookimpl
def engine_predictor_types():
    return [LEGACY]


@hookimpl
def engine_create_client(api, device):
    return {"built_for": api.name, "device": device.kind} if api.predictor.type == "legacy" else None


@hookimpl
def engine_parse_payload(body, content_type):
    return {"legacy": body.decode()} if content_type.startswith("application/x-legacy") else None


@hookimpl
def engine_payload_media_types():
    return ["application/x-legacy"]


async def legacy_route(request):
    return JSONResponse({"route": "legacy"})


@hookimpl
def engine_routes():
    return [Route("/legacy", legacy_route, methods=["GET"])]


@hookimpl
def engine_openapi_paths(apis):
    return {"/legacy": {"get": {"operationId": "legacy", "responses": {"200": {"description": "legacy"}}}}}
"""

LEGACY_PREDICTOR = """
class LegacyPredictor:
    def __init__(self, legacy_client, config):
        self.client = legacy_client

    def predict(self, payload):
        return {"client": self.client, "payload": payload}
"""


@pytest.mark.e2e
def test_a_plugin_written_for_the_deprecated_hooks_still_serves(tmp_path):
    env = plugin_environment(tmp_path / "site", "legacy", DEPRECATED_HOOKS_PLUGIN)
    project = write_project(tmp_path / "project", {"cortex.yaml": api_yaml("old", type_="legacy"),
                                                   "predictor.py": LEGACY_PREDICTOR})
    server = Server(project, env=env)
    try:
        server.wait_ready()
        answer = server.client.post("/old", content=b"hi", headers={"Content-Type": "application/x-legacy"})
        assert answer.json() == {"client": {"built_for": "old", "device": "cpu"}, "payload": {"legacy": "hi"}}
        assert server.client.post("/old", json=[1]).json()["payload"] == [1]  # the built-in parsers still answer
        assert server.client.get("/legacy").json() == {"route": "legacy"}
        spec = server.client.get("/openapi.json").json()
        assert spec["paths"]["/legacy"]["get"]["operationId"] == "legacy"
        assert "application/x-legacy" in spec["paths"]["/old"]["post"]["requestBody"]["content"]
        for hook in ("engine_create_client", "engine_parse_payload", "engine_payload_media_types", "engine_routes",
                     "engine_openapi_paths"):
            assert f"plugin 'legacy' (engine-test-plugin-legacy 0.0.0) implements {hook}, which is deprecated" \
                in server.output
        assert server.output.count("implements engine_routes, which is deprecated") == 1  # once, not per process
    finally:
        assert server.stop() == 0


def test_a_third_party_distribution_is_discovered_with_no_core_change(tmp_path, monkeypatch):
    fake_distribution(tmp_path / "site", "engine-msgpack", "0.1.0", {"msgpack": "engine_msgpack"})
    monkeypatch.syspath_prepend(str(MSGPACK_PLUGIN_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    pm = make_plugin_manager()
    infos = {info.name: info for info in plugin_infos(pm)}
    assert infos["msgpack"].distribution == "engine-msgpack 0.1.0"
    assert infos["msgpack"].hooks == ["engine_encode_response", "engine_payload_parsers"]


@pytest.mark.e2e
def test_msgpack_plugin_end_to_end_and_listed_by_engine_plugins(tmp_path):
    site = tmp_path / "site"
    fake_distribution(site, "engine-msgpack", "0.1.0", {"msgpack": "engine_msgpack"})
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(MSGPACK_PLUGIN_SOURCE)])}
    listing = subprocess.run([sys.executable, "-m", "engine", "plugins"], capture_output=True, text=True,
                             env={**os.environ, **env}, timeout=60)
    assert "msgpack  (engine-msgpack 0.1.0)" in listing.stdout
    assert "hooks: engine_encode_response, engine_payload_parsers" in listing.stdout
    project = write_project(tmp_path / "project", {"cortex.yaml": api_yaml("echo"), "predictor.py": ECHO})
    server = Server(project, env=env)
    try:
        server.wait_ready()
        body = msgpack.packb({"a": [1, 2], "b": b"\x00"})
        packed = server.client.post("/echo", content=body, headers={"Content-Type": "application/msgpack",
                                                                    "Accept": "application/msgpack"})
        assert packed.headers["content-type"] == "application/msgpack"
        assert msgpack.unpackb(packed.content) == {"payload": {"a": [1, 2], "b": b"\x00"}}
        as_json = server.client.post("/echo", content=msgpack.packb([1]),
                                     headers={"Content-Type": "application/msgpack"})
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
