"""Python predictor server-side batching end to end: lists in, lists out, per-request routing, partial batches,
and both dispatch policies (most tests use Cortex's `interval`, whose batches are predictable)."""
from __future__ import annotations

import json

import httpx
import pytest
from support import send_together

from engine.testing import api_yaml, in_thread, wait_file

pytestmark = pytest.mark.e2e

BATCHED = """
import json
import os
import time


class PythonPredictor:
    def __init__(self, config):
        self.dir = config["dir"]

    def predict(self, payload, query_params, headers):
        if payload[0].get("hold"):  # keeps its thread busy until the test lets it go
            open(os.path.join(self.dir, "holding"), "w").close()
            while not os.path.exists(os.path.join(self.dir, "go")):
                time.sleep(0.01)
        kinds = sorted({type(payload).__name__, type(query_params).__name__, type(headers).__name__})
        first = payload[0]
        if first.get("fail") == "exception":
            raise RuntimeError("the whole batch failed")
        if first.get("fail") == "not_list":
            return {"not": "a list"}
        if first.get("fail") == "short":
            return [1]
        return [{"id": p["id"], "batch": len(payload), "kinds": kinds, "q": q.get("q"), "h": h.get("x-h"),
                 "pid": os.getpid()}
                for p, q, h in zip(payload, query_params, headers)]

    def post_predict(self, response, payload):
        path = os.path.join(self.dir, f"post-{payload['id']}")
        with open(path + ".tmp", "w") as out:
            json.dump(response, out)
        os.replace(path + ".tmp", path)  # the test waits for this file: it must appear whole
"""


def batched_project(tmp_path, max_batch_size, interval, threads=1, dispatch: str | None = "interval"):
    policy = f"  dispatch: {dispatch}\n" if dispatch else ""  # None: the default
    extra = (f"threads_per_process: {threads}\nserver_side_batching:\n  max_batch_size: {max_batch_size}\n"
             f"  batch_interval: {interval}\n{policy}config:\n  dir: {tmp_path}")
    return {"cortex.yaml": api_yaml("batch", predictor_extra=extra), "predictor.py": BATCHED}


def test_a_full_batch_runs_at_once_and_each_request_gets_its_own_element(serve, tmp_path, processes):
    server = serve(batched_project(tmp_path, max_batch_size=4 // processes, interval="30s"))
    responses = send_together(server, [{"id": i} for i in range(4)], params={"q": "query"},
                              headers={"X-H": "header"})
    bodies = [r.json() for r in responses]
    assert [b["id"] for b in bodies] == [0, 1, 2, 3]
    assert all(b["batch"] == 4 // processes for b in bodies)  # full batches: no waiting for the 30 s interval
    assert all(b["kinds"] == ["list"] and b["q"] == "query" and b["h"] == "header" for b in bodies)


def test_a_partial_batch_runs_when_the_interval_has_passed(serve, tmp_path):
    server = serve(batched_project(tmp_path, max_batch_size=64, interval="300ms"))
    bodies = [r.json() for r in send_together(server, [{"id": i} for i in range(3)])]
    # Answered: batches far from full ran once their interval had passed (how the three were grouped depends on
    # when each arrived)
    assert sorted(b["id"] for b in bodies) == [0, 1, 2] and all(1 <= b["batch"] <= 3 for b in bodies)
    single = httpx.post(server.url + "/batch", json={"id": 9}, timeout=30).json()
    assert single["batch"] == 1


def test_post_predict_gets_each_request_its_own_element(serve, tmp_path):
    server = serve(batched_project(tmp_path, max_batch_size=2, interval="200ms"))
    send_together(server, [{"id": "a"}, {"id": "b"}])
    for name in ("a", "b"):
        wait_file(tmp_path / f"post-{name}")
        assert json.loads((tmp_path / f"post-{name}").read_text())["id"] == name


@pytest.mark.parametrize("fail, message", [("exception", "RuntimeError: the whole batch failed"),
                                           ("not_list", "please return a list when using server side batching"),
                                           ("short", "returned 1 results for a batch of 2")])
def test_a_failing_batch_fails_every_request_in_it_with_a_json_500(serve, tmp_path, processes, fail, message):
    # An interval of an hour: batches go only when full, so the requests surely fail in pairs
    server = serve(batched_project(tmp_path, max_batch_size=2, interval="1h"))
    responses = send_together(server, [{"id": i, "fail": fail} for i in range(2 * processes)])
    for response in responses:
        assert response.status_code == 500
        assert message in response.json()["error"]
    assert [r.status_code for r in send_together(server, [{"id": "ok"}, {"id": "fine"}])] == [200, 200]


@pytest.mark.parametrize("threads, max_batch_size", [(1, 4), (3, 2), (4, 4)])
def test_any_threads_and_batch_size_combination_works(serve, tmp_path, threads, max_batch_size):
    server = serve(batched_project(tmp_path, max_batch_size=max_batch_size, interval="100ms", threads=threads))
    responses = send_together(server, [{"id": i} for i in range(10)])
    assert sorted(r.json()["id"] for r in responses) == list(range(10))
    assert all(r.json()["batch"] <= max_batch_size for r in responses)



# --- dispatch: when_free (the default) ------------------------------------------------------------------------


def when_free_project(tmp_path, max_batch_size=4):
    """batch_interval an hour: a request that waited for it would never be answered within the test."""
    return batched_project(tmp_path, max_batch_size=max_batch_size, interval="1h", dispatch=None)


def test_a_lone_request_never_waits_for_a_batch(serve, tmp_path, processes):
    server = serve(when_free_project(tmp_path))
    for i in range(3):
        answer = httpx.post(server.url + "/batch", json={"id": i}, timeout=30)
        assert answer.status_code == 200 and answer.json()["batch"] == 1
    assert 'engine_batch_wait_seconds_count{api="batch"} 3.0' in server.client.get("/metrics").text


def test_requests_arriving_while_the_predictor_is_busy_form_the_next_batch(serve, tmp_path, processes):
    server = serve(when_free_project(tmp_path, max_batch_size=4))
    held, held_result = in_thread(httpx.post, server.url + "/batch", json={"id": "first", "hold": True}, timeout=30)
    wait_file(tmp_path / "holding")
    queued = [in_thread(httpx.post, server.url + "/batch", json={"id": i}, timeout=30) for i in range(6)]
    server.wait_metric('engine_requests_in_flight{api="batch"} 7.0')
    (tmp_path / "go").touch()
    held.join(30)
    assert held_result["value"].json()["batch"] == 1  # it ran alone, at once
    bodies = []
    for thread, result in queued:
        thread.join(30)
        bodies.append(result["value"].json())
    assert sorted(b["id"] for b in bodies) == list(range(6))
    assert max(b["batch"] for b in bodies) > 1 and all(b["batch"] <= 4 for b in bodies)


# --- a Cortex project's batching: threads_per_process == max_batch_size, one batch at a time --------------------

CORTEX_LIKE = """
import itertools
import os
import threading
import time

BATCHES = itertools.count()
LOCK = threading.Lock()


class PythonPredictor:
    def __init__(self, config):
        self.go = os.path.join(config["dir"], "go")

    def predict(self, payload):
        with LOCK:
            number = next(BATCHES)
        while not os.path.exists(self.go):  # every batch waits until the test has seen all its requests arrive
            time.sleep(0.01)
        time.sleep(0.05)  # a predictor costing 50 ms
        return [{"id": p["id"], "batch": f"{os.getpid()}-{number}", "size": len(payload)} for p in payload]
"""


def cortex_like_project(tmp_path):
    """Cortex's shape: threads_per_process equal to max_batch_size, an interval too long to ever be waited for."""
    extra = (f"threads_per_process: 4\nserver_side_batching:\n  max_batch_size: 4\n  batch_interval: 1h\n"
             f"config:\n  dir: {tmp_path}")
    return {"cortex.yaml": api_yaml("batch", predictor_extra=extra), "predictor.py": CORTEX_LIKE}


def send_held(server, tmp_path, count):
    """Send `count` requests at once, let the predictor go once all are in flight; the bodies in request order."""
    threads = [in_thread(httpx.post, server.url + "/batch", json={"id": i}, timeout=30) for i in range(count)]
    server.wait_metric(f'engine_requests_in_flight{{api="batch"}} {float(count)}')
    (tmp_path / "go").touch()
    bodies = []
    for thread, result in threads:
        thread.join(30)
        assert result["value"].status_code == 200, result["value"].text
        bodies.append(result["value"].json())
    assert [b["id"] for b in bodies] == list(range(count))
    return bodies


def test_four_simultaneous_requests_take_at_most_two_batches(serve, tmp_path, processes):
    if processes > 1:
        pytest.skip("one process: the two-batch bound is per process")
    server = serve(cortex_like_project(tmp_path))
    bodies = send_held(server, tmp_path, 4)
    batches = {b["batch"] for b in bodies}
    assert len(batches) <= 2  # the first batch went at once (no 1 h interval), the rest formed the next one
    for b in bodies:  # each batch held exactly the requests that name it
        assert b["size"] == sum(1 for c in bodies if c["batch"] == b["batch"])


def test_sixteen_simultaneous_requests_form_batches_of_two_to_four(serve, tmp_path, processes):
    server = serve(cortex_like_project(tmp_path))
    bodies = send_held(server, tmp_path, 16)
    sizes = {b["batch"]: b["size"] for b in bodies}
    assert 1 < max(sizes.values()) <= 4
    assert sum(sizes.values()) == 16  # every request was in exactly one batch
