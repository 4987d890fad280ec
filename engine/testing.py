"""Helpers for testing engine and its plugins end to end: real `engine serve` processes on loopback, throwaway
projects, and pytest fixtures. Part of the public API for plugin authors (it needs httpx and pytest, which engine
itself does not): a plugin's tests import from `engine` and `engine.testing` only.

    # conftest.py of a plugin's test suite
    from engine.testing import pm, processes, serve  # noqa: F401  (fixtures)

End to end: Server, serve (fixture), processes (fixture), write_project, api_yaml, free_port, wait_for, wait_file,
in_thread, fake_distribution, plugin_environment, http_server_features. The core's services, for a plugin's own
tests: plugin_manager, pm (fixture), plugin_infos, predictor_type, check_hardware_target, setup_device,
create_client, validate, load_apis, make_api.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml

from engine import plugins as _plugins
from engine.project.config import Api, load_config
from engine.project.validate import validate_project
from engine.routes import HEALTHZ_PATH, METRICS_PATH, READYZ_PATH

if TYPE_CHECKING:
    from engine import Batching, Device, ModelRepository, PredictorType

# processes_per_replica written into every API of a project that does not set it (the `processes` fixture sets it,
# so that the end-to-end suite runs once with one process and once with worker processes).
PROCESSES = 1


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_project(root: Path, files: dict[str, str]) -> Path:
    """Write `files` (relative path → text, dedented) under root and return root."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        text = textwrap.dedent(text).lstrip("\n")
        path.write_text(with_processes(text) if relative.endswith(".yaml") and PROCESSES > 1 else text)
    return root


def with_processes(config: str) -> str:
    """The config with processes_per_replica = PROCESSES in every API that does not choose (and can use it)."""
    apis = yaml.safe_load(config)
    if not isinstance(apis, list):
        return config
    for api in apis:
        predictor = api.get("predictor") if isinstance(api, dict) else None
        if isinstance(predictor, dict):
            caching = any(isinstance(predictor.get(key), dict) and "cache_size" in predictor[key]
                          for key in ("models", "multi_model_reloading"))
            if not caching:
                predictor.setdefault("processes_per_replica", PROCESSES)
    return yaml.safe_dump(apis, sort_keys=False)


class Server:
    """`engine serve` in a child process, with its output captured in a file."""

    def __init__(self, project: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = project.parent / f"{project.name}-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", str(project), "--port", str(self.port), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
        # It keeps no idle connection: at SIGTERM, the server would wait for one until its keep-alive timeout.
        self.client = httpx.Client(base_url=self.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0))

    @property
    def output(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text()

    def wait_alive(self, timeout: float = 30) -> None:
        """Wait until /healthz answers; fail with the server's output if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.output}")
            try:
                if self.client.get(HEALTHZ_PATH).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server did not come up:\n{self.output}")

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until /readyz is 200."""
        self.wait_alive(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client.get(READYZ_PATH).status_code == 200:
                    return
            except httpx.TransportError:  # it died after /healthz answered: say why below
                pass
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.output}")
            time.sleep(0.05)
        raise AssertionError(f"server did not become ready:\n{self.output}")

    def wait_output(self, text: str, timeout: float = 30) -> None:
        """Wait until the server has printed `text`."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert time.monotonic() < deadline, f"the server never printed {text!r}:\n{self.output}"
            time.sleep(0.02)

    def wait_metric(self, sample: str, timeout: float = 30) -> None:
        """Wait until GET /metrics shows `sample` (a whole line, e.g. `engine_requests_in_flight{api="x"} 3.0`)."""
        deadline = time.monotonic() + timeout
        while sample not in self.client.get(METRICS_PATH).text.splitlines():
            assert time.monotonic() < deadline, f"/metrics never showed {sample!r}"
            time.sleep(0.02)

    def wait_exit(self, timeout: float = 30) -> int:
        """Wait for the process to exit on its own; return its exit code."""
        try:
            return self.process.wait(timeout)
        finally:
            self.close()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def close(self) -> None:
        """Stop the process if it still runs (SIGTERM, then SIGKILL after 10 s) and release the log and client."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.client.close()
        self._log.close()


def api_yaml(name: str = "api", predictor: str = "predictor.py", predictor_extra: str = "", api_extra: str = "",
             type_: str = "python") -> str:
    """One RealtimeAPI entry of cortex.yaml; *_extra are YAML lines added under `predictor:` and under the API."""
    lines = [f"- name: {name}", "  kind: RealtimeAPI", "  predictor:", f"    type: {type_}", f"    path: {predictor}"]
    lines += ["    " + line for line in textwrap.dedent(predictor_extra).strip("\n").splitlines()]
    lines += ["  " + line for line in textwrap.dedent(api_extra).strip("\n").splitlines()]
    return "\n".join(lines) + "\n"


def fake_distribution(site: Path, name: str, version: str, entry_points: dict[str, str]) -> None:
    """An installed distribution as importlib.metadata sees it: a dist-info folder in `site` (put it on sys.path)."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[engine]\n{lines}")


def plugin_environment(site: Path, name: str, source: str) -> dict[str, str]:
    """Install a one-module plugin (its source) in `site`; a Server started with the returned environment loads
    it through its entry point, `name`, as if it were a distribution of its own."""
    module = f"engine_test_plugin_{name}"
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    fake_distribution(site, f"engine-test-plugin-{name}", "0.0.0", {name: module})
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def http_server_features() -> frozenset[str]:
    """What the HTTP server that Servers run on can do (ENGINE_SERVER chooses it; CI runs the suite on each)."""
    from engine.settings import ServeSettings

    name = os.environ.get("ENGINE_SERVER") or ServeSettings.server
    return _plugins.http_server(_plugins.make_plugin_manager(), name).features


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    """Poll `condition` until it returns something true, and return that; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.01)
    return result


def wait_file(path: Path, timeout: float = 20) -> None:
    """Wait until `path` exists (a predictor in a test creates files to say what it reached)."""
    wait_for(path.exists, f"{path} appearing", timeout)


def in_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `function` in a new thread; its return value lands in the dict under "value"."""
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", function(*args, **kwargs)))
    thread.start()
    return thread, result


# --- the core's services a plugin's tests need ----------------------------------------------------------------


def plugin_manager(*plugins: object, entry_points: bool = False, **named: object) -> _plugins.PluginManager:
    """A plugin manager: engine's built-in plugins, the installed ones if `entry_points`, then `plugins` and `named`."""
    pm = _plugins.make_plugin_manager(load_entry_points=entry_points)
    for plugin in plugins:
        pm.register(plugin)
    for name, plugin in named.items():
        pm.register(plugin, name=name)
    _plugins.check(pm)
    return pm


def plugin_infos(pm: _plugins.PluginManager) -> list[_plugins.PluginInfo]:
    """Each registered plugin as `engine plugins` lists it: name, distribution ("name version"), hooks, built_in."""
    return _plugins.plugin_infos(pm)


def predictor_type(pm: _plugins.PluginManager, name: str) -> PredictorType:
    """The predictor type `name` as engine finds it (MissingPluginError or PluginError when it cannot)."""
    return _plugins.predictor_type(pm, name)


def check_hardware_target(pm: _plugins.PluginManager, api: Api) -> None:
    """Raise MissingPluginError unless a plugin owns the hardware target (cpu, gpu, inf) `api.compute` asks for."""
    _plugins.check_hardware_target(pm, api)


def api_problems(pm: _plugins.PluginManager, api: Api, project_root: Path = Path(".")) -> list[str]:
    """What the API's predictor type and the engine_validate_api hooks find wrong with `api`, as validate asks."""
    return _plugins.api_problems(pm, api, project_root)


def setup_device(pm: _plugins.PluginManager, api: Api, process_index: int = 0) -> Device:
    """Set up this process for `api` through the hardware plugins, as a worker does before it loads the predictor."""
    return _plugins.setup_device(pm, api, process_index)


def create_client(pm: _plugins.PluginManager, api: Api, device: Device, models: ModelRepository | None,
                  batching: Batching | None = None) -> Any:  # Any: a plugin's test calls its own client's methods
    """The model client engine builds for `api` (its type's create_client); None when its type needs none."""
    return _plugins.create_client(pm, api, device, models, batching)


def validate(project_dir: str | Path, pm: _plugins.PluginManager | None = None) -> list[Api]:
    """Check a project as `engine serve` does before it starts, against `pm` (default: the installed plugins)."""
    return validate_project(project_dir, pm=pm).apis


def load_apis(config_file: str | Path) -> list[Api]:
    """The APIs of a cortex.yaml, read and checked as `engine serve` reads them (one ConfigError for all problems)."""
    return load_config(config_file)


def make_api(entry: dict[str, Any] | str) -> Api:
    """One API from its cortex.yaml entry, a dict or YAML text (e.g. api_yaml's); a pydantic ValidationError if bad."""
    if isinstance(entry, str):
        entry = yaml.safe_load(entry)
        if isinstance(entry, list):
            (entry,) = entry
    return Api.model_validate(entry)


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[1, 2], ids=["1-process", "2-processes"])
def processes(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run an end-to-end test (module) once in one process and once with processes_per_replica: 2."""
    global PROCESSES
    PROCESSES = request.param
    yield request.param
    PROCESSES = 1


@pytest.fixture
def serve(tmp_path: Path, processes: int) -> Iterator[Callable[..., Server]]:
    """Start `engine serve` on a project written from a dict of files; every server is stopped at teardown."""
    servers: list[Server] = []

    def start(files: dict[str, str], *args: str, ready: bool = True, env: dict[str, str] | None = None,
              name: str = "project", timeout: float = 30) -> Server:
        project = write_project(tmp_path / name, files)
        server = Server(project, *args, env=env)
        servers.append(server)
        if ready:
            server.wait_ready(timeout)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def pm() -> _plugins.PluginManager:
    """A fresh plugin manager with the installed plugins."""
    return plugin_manager(entry_points=True)
