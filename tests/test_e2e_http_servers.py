"""The HTTP server is a plugin (engine_http_servers): engine serve --server NAME runs the app on the one a plugin
provides, and refuses at start a flag that server cannot honour."""
from __future__ import annotations

import pytest

from engine.testing import Server, api_yaml, plugin_environment, write_project

pytestmark = pytest.mark.e2e

PREDICTOR = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return {"echo": payload}
"""

RECORDING_SERVER = """
from engine import hookimpl


class Recording:
    name = "recording"
    features = frozenset({"websockets"})

    async def serve(self, app, listener, settings, shutdown):
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"fd://{listener.detach()}"]
        config.graceful_timeout = settings.graceful_timeout
        print("served by the recording plugin", flush=True)
        await serve(app, config, shutdown_trigger=shutdown)


@hookimpl
def engine_http_servers():
    return [Recording()]
"""


@pytest.fixture
def setup(tmp_path):
    project = write_project(tmp_path / "project", {"cortex.yaml": api_yaml("x"), "predictor.py": PREDICTOR})
    return project, plugin_environment(tmp_path / "site", "recording", RECORDING_SERVER)


def test_serve_runs_on_the_server_a_plugin_provides(setup):
    project, env = setup
    server = Server(project, "--server", "recording", env=env)
    try:
        server.wait_ready()
        assert server.client.post("/x", json=3).json() == {"echo": 3}
        assert "served by the recording plugin" in server.output and "(recording)" in server.output
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("flags, refused", [
    (["--max-connections", "4"], "--max-connections: the recording server cannot do that"),
    (["--certfile", "cert.pem", "--keyfile", "key.pem"], "--certfile: the recording server cannot do that"),
])
def test_a_flag_the_server_cannot_honour_is_refused_at_start(setup, flags, refused):
    project, env = setup
    server = Server(project, "--server", "recording", *flags, env=env)
    assert server.wait_exit() == 1
    assert refused in server.output and "Traceback" not in server.output
    assert "served by the recording plugin" not in server.output
