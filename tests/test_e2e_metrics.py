"""GET /metrics after a known sequence of requests (with one process and with workers), request ids, access logs."""
from __future__ import annotations

import re

import httpx
import pytest
from support import samples, send_together, value

from engine.testing import api_yaml, in_thread, wait_file

pytestmark = pytest.mark.e2e

PREDICTOR = """
import os
import time


class PythonPredictor:
    def __init__(self, config):
        self.dir = config["dir"]

    def predict(self, payload, headers):
        if payload.get("fail"):
            raise ValueError("no")
        if payload.get("wait"):
            open(os.path.join(self.dir, "entered"), "w").close()
            while not os.path.exists(os.path.join(self.dir, "release")):
                time.sleep(0.01)
        return {"request_id": headers.get("x-request-id")}
"""

BATCHED = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return [p for p in payload]
"""


def test_metrics_after_a_known_sequence(serve, tmp_path):
    config = api_yaml("m", predictor_extra=f"threads_per_process: 2\nconfig:\n  dir: {tmp_path}",
                      api_extra="autoscaling:\n  max_replica_concurrency: 1\n  target_replica_concurrency: 1")
    server = serve({"cortex.yaml": config, "predictor.py": PREDICTOR})
    for _ in range(3):
        assert server.client.post("/m", json={}).status_code == 200
    assert server.client.post("/m", json={"fail": True}).status_code == 500
    assert server.client.post("/m", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400
    assert server.client.get("/m").status_code == 200
    blocked, result = in_thread(httpx.post, server.url + "/m", json={"wait": True}, timeout=30)
    wait_file(tmp_path / "entered")
    assert server.client.post("/m", json={}).status_code == 503
    in_flight = value(samples(server), "engine_requests_in_flight", api="m")
    (tmp_path / "release").touch()
    blocked.join()
    found = samples(server)
    assert value(found, "engine_requests_total", api="m", method="POST", status_code="200") == 4
    assert value(found, "engine_requests_total", api="m", method="POST", status_code="500") == 1
    assert value(found, "engine_requests_total", api="m", method="POST", status_code="400") == 1
    assert value(found, "engine_requests_total", api="m", method="POST", status_code="503") == 1
    assert value(found, "engine_requests_total", api="m", method="GET", status_code="200") == 1
    assert value(found, "engine_requests_rejected_total", api="m") == 1
    assert value(found, "engine_predictor_exceptions_total", api="m") == 1  # counted where predict ran
    assert value(found, "engine_request_duration_seconds_count", api="m") == 8
    assert in_flight == 1 and value(found, "engine_requests_in_flight", api="m") == 0


def test_batch_sizes_are_counted_where_batches_run(serve, tmp_path, processes):
    # Cortex's policy: only full batches of 2 run
    extra = "server_side_batching:\n  max_batch_size: 2\n  batch_interval: 30s\n  dispatch: interval"
    server = serve({"cortex.yaml": api_yaml("batch", predictor_extra=extra), "predictor.py": BATCHED})
    for response in send_together(server, [{"i": i} for i in range(2 * processes)]):
        assert response.status_code == 200
    found = samples(server)
    assert value(found, "engine_batch_size_count", api="batch") == processes
    assert value(found, "engine_batch_size_sum", api="batch") == 2 * processes
    assert value(found, "engine_batch_wait_seconds_count", api="batch") == 2 * processes


def test_request_ids_are_kept_or_generated_returned_and_logged(serve, tmp_path):
    config = api_yaml("r", predictor_extra=f"config:\n  dir: {tmp_path}")
    server = serve({"cortex.yaml": config, "predictor.py": PREDICTOR})
    given = server.client.post("/r", json={}, headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    assert given.json() == {"request_id": "abc-123"}  # the predictor sees it in headers
    generated = server.client.post("/r", json={})
    request_id = generated.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert generated.json() == {"request_id": request_id}
    assert server.client.get("/nope").status_code == 404
    assert re.search(rf"engine.access INFO r POST /r 200 \d+\.\dms request_id={request_id}", server.output)
    assert "request_id=abc-123" in server.output
