"""engine serve --server uvicorn: what only this server does (the whole end-to-end suite also runs on it, with
ENGINE_SERVER=uvicorn: see the Makefile's test target)."""
from __future__ import annotations

import httpx
import pytest

from engine.testing import (
    Server,
    api_yaml,
    in_thread,
    plugin_environment,
    wait_file,
    write_project,
)

pytestmark = pytest.mark.e2e

# Each call says it started (a file), then waits until the test lets it go (another file).
HOLDING = """
import pathlib, time

class PythonPredictor:
    def __init__(self, config):
        self.folder = pathlib.Path(config["folder"])

    def predict(self, payload):
        (self.folder / f"started-{payload}").touch()
        while not (self.folder / "go").exists():
            time.sleep(0.01)
        return {"ok": payload}
"""


@pytest.fixture
def project(tmp_path):
    extra = f"threads_per_process: 4\nconfig:\n  folder: {tmp_path}\n"
    return write_project(tmp_path / "project", {"cortex.yaml": api_yaml("x", predictor_extra=extra),
                                                "predictor.py": HOLDING})


def test_max_connections_answers_503_beyond_the_bound_and_recovers(project, tmp_path):
    server = Server(project, "--server", "uvicorn", "--max-connections", "2")
    try:
        server.wait_ready()
        assert "(uvicorn)" in server.output
        server.client.close()  # its keep-alive connection would count
        held = [in_thread(httpx.post, f"{server.url}/x", json=n, timeout=30) for n in (1, 2)]
        for n in (1, 2):
            wait_file(tmp_path / f"started-{n}")
        beyond = httpx.post(f"{server.url}/x", json=3, timeout=30)
        assert beyond.status_code == 503
        (tmp_path / "go").touch()
        for thread, result in held:
            thread.join(30)
            assert result["value"].status_code == 200
        assert sorted(result["value"].json()["ok"] for _, result in held) == [1, 2]
        assert httpx.post(f"{server.url}/x", json=4, timeout=30).json() == {"ok": 4}
        assert not (tmp_path / "started-3").exists()  # refused before the predictor saw it
    finally:
        assert server.stop() == 0


def test_a_response_sent_while_draining_closes_its_connection(project, tmp_path):
    server = Server(project, "--server", "uvicorn")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            thread, result = in_thread(client.post, "/x", json=1)
            wait_file(tmp_path / "started-1")
            server.process.terminate()
            server.wait_output("stopping: no new connections")
            (tmp_path / "go").touch()
            thread.join(30)
        answer = result["value"]
        assert answer.status_code == 200 and answer.json() == {"ok": 1}
        assert answer.headers["connection"] == "close"
        assert server.wait_exit() == 0
    finally:
        server.close()



FAILING_SERVICE = """
from engine import EngineError, hookimpl


class Failing:
    async def start(self):
        raise EngineError("the failing service cannot start: its port is taken")

    async def stop(self, grace):
        pass


@hookimpl
def engine_services(served, settings):
    return [Failing()]
"""


def test_a_start_up_failure_is_engines_one_paragraph_not_uvicorns_traceback(project, tmp_path):
    env = plugin_environment(tmp_path / "site", "failing", FAILING_SERVICE)
    server = Server(project, "--server", "uvicorn", env=env)
    assert server.wait_exit() == 1
    assert "error: the failing service cannot start: its port is taken" in server.output
    assert "Traceback" not in server.output
