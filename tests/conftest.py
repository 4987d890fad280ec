"""Shared fixtures: real `engine serve` processes on loopback, fresh plugin managers."""
from __future__ import annotations

import helpers
import pytest
from helpers import Server, write_project

from engine.plugins import make_plugin_manager


@pytest.fixture(scope="module", params=[1, 2], ids=["1-process", "2-processes"])
def processes(request):
    """Run an end-to-end test (module) once in one process and once with processes_per_replica: 2."""
    helpers.PROCESSES = request.param
    yield request.param
    helpers.PROCESSES = 1


@pytest.fixture
def serve(tmp_path, processes):
    """Start `engine serve` on a project written from a dict of files; every server is stopped at teardown."""
    servers: list[Server] = []

    def start(files: dict[str, str], *args: str, ready: bool = True, env: dict[str, str] | None = None,
              name: str = "project") -> Server:
        project = write_project(tmp_path / name, files)
        server = Server(project, *args, env=env)
        servers.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def pm():
    """A fresh plugin manager with the installed plugins."""
    return make_plugin_manager()
