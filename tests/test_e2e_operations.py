"""A plugin's own work on the APIs through the public plugin API: operations run where each API's predictor runs
(under its limit and deadline), routes reach them through engine.served, services start and stop with the server."""
from __future__ import annotations

import os
import socket

import pytest

from engine.testing import api_yaml, free_port, plugin_environment

pytestmark = pytest.mark.e2e

PREDICTOR = """
import os


class PythonPredictor:
    def __init__(self, config):
        self.pid = os.getpid()

    def predict(self, payload):
        return {"pid": os.getpid()}
"""

COUNTING = """
import asyncio
import os

from starlette.responses import JSONResponse
from starlette.routing import Route

import engine
from engine import ModelError, Operation, hookimpl


def count(context, body):
    if body == b"missing":
        raise ModelError("no such thing", 404)
    return JSONResponse({"api": context.api.name, "bytes": len(body), "pid": os.getpid(),
                         "predictor_pid": context.predictor.pid, "header": context.headers.get("x-note")})


async def count_route(request):
    served = engine.served(request)
    return await served.operate(request.path_params["api"], "count.bytes", await request.body(),
                                request.headers.raw)


class Announcer:
    def __init__(self, served, port):
        self.served, self.port, self.server = served, port, None

    async def start(self):
        async def greet(reader, writer):
            writer.write(f"ready={self.served.is_ready()} apis={[api.name for api in self.served.apis]}".encode())
            await writer.drain()
            writer.close()
        self.server = await asyncio.start_server(greet, "127.0.0.1", self.port)

    async def stop(self, grace):
        self.server.close()
        await self.server.wait_closed()


@hookimpl
def engine_operations():
    return [Operation("count.bytes", count)]


@hookimpl
def engine_routes():
    return [Route("/count/{api}", count_route, methods=["POST"])]


@hookimpl
def engine_services(served, settings):
    return [Announcer(served, int(os.environ["ANNOUNCE_PORT"]))]
"""


def test_an_operation_runs_where_the_predictor_runs_and_a_service_runs_beside(serve, tmp_path):
    port = free_port()
    env = {**plugin_environment(tmp_path / "site", "counting", COUNTING), "ANNOUNCE_PORT": str(port)}
    server = serve({"cortex.yaml": api_yaml("a") + api_yaml("b"), "predictor.py": PREDICTOR}, env=env)
    answer = server.client.post("/count/b", content=b"12345", headers={"x-note": "hi"})
    body = answer.json()
    assert body["api"] == "b" and body["bytes"] == 5 and body["header"] == "hi"
    assert body["pid"] == body["predictor_pid"]  # in the predictor's own process, whichever that is
    assert "x-request-id" in answer.headers
    assert server.client.post("/count/a", content=b"missing").status_code == 404
    assert server.client.post("/count/nope", content=b"").status_code == 404
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        assert connection.recv(100).decode() == "ready=True apis=['a', 'b']"
    assert server.stop() == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_an_operation_needs_the_api_key_and_counts_against_the_limit(serve, tmp_path):
    env = {**plugin_environment(tmp_path / "site", "counting", COUNTING), "ANNOUNCE_PORT": str(free_port())}
    server = serve({"cortex.yaml": api_yaml("a"), "predictor.py": PREDICTOR}, "--api-key", "k", env=env)
    assert server.client.post("/count/a", content=b"x").status_code == 401
    assert server.client.post("/count/a", content=b"x", headers={"authorization": "Bearer k"}).json()["bytes"] == 1
    metrics = server.client.get("/metrics", headers={"authorization": "Bearer k"}).text
    assert 'engine_requests_total{api="a",method="count.bytes",status_code="200"} 1.0' in metrics
    assert os.environ.get("ANNOUNCE_PORT") is None  # the test's environment is the server's only
