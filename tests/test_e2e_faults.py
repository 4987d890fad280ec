"""Hostile traffic and faulty predictors against a real server, in one process and with worker processes: deadlines,
disconnects, body limits, slow clients, bad framing, hung and crashing predictors, shutdown, worker recycling.

Every wait is on an event (a file the predictor writes, a response, a log line, a metric), never on a sleep."""
from __future__ import annotations

import json
import re
import socket
import tempfile
import threading
from pathlib import Path

import httpx
import pytest

from engine.testing import api_yaml, in_thread, plugin_environment, wait_file, wait_for

pytestmark = pytest.mark.e2e

FAULTY = """
import os
import signal
import time


def wait_for(path):
    while not os.path.exists(path):
        time.sleep(0.01)


class PythonPredictor:
    def __init__(self, config):
        self.dir = config["dir"]
        self.kept = []
        if config.get("hang_init"):
            wait_for(os.path.join(self.dir, "release-init"))

    def predict(self, payload):
        if not isinstance(payload, dict):
            return {"type": type(payload).__name__}
        open(os.path.join(self.dir, f"entered-{payload['id']}"), "w").close()
        action = payload.get("do")
        if action == "hang":
            wait_for(os.path.join(self.dir, f"release-{payload['id']}"))
        elif action == "exit":
            os._exit(3)
        elif action == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif action == "leak":
            self.kept.append(bytearray(30 * 2**20))
            self.kept[-1][:: 4096] = b"x" * len(range(0, 30 * 2**20, 4096))  # touch every page: resident
        return {"id": payload["id"], "pid": os.getpid()}

    def post_predict(self, response, payload):
        if isinstance(payload, dict) and payload.get("hang_post"):
            wait_for(os.path.join(self.dir, f"release-post-{payload['id']}"))
"""


def faulty(tmp_path: Path, threads: int = 1, limit: int = 100, extra: str = "") -> dict[str, str]:
    predictor = f"threads_per_process: {threads}\nconfig:\n  dir: {tmp_path}\n{extra}"
    return {"cortex.yaml": api_yaml("f", predictor_extra=predictor,
                                    api_extra=f"autoscaling:\n  max_replica_concurrency: {limit}"),
            "predictor.py": FAULTY}


def post(server, timeout: float = 30, **payload) -> httpx.Response:
    return server.client.post("/f", json=payload, timeout=timeout)


def metric(server, name: str) -> float:
    """The value of an API's sample in /metrics (summed over worker processes by engine)."""
    text = server.client.get("/metrics").text
    found = re.search(rf'^{name}{{api="f"}} ([0-9.e+-]+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def raw(server) -> socket.socket:
    """A plain TCP connection to the server, for requests no HTTP client would send."""
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def read_all(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    return data


# --- deadlines and abandoned requests ---------------------------------------------------------------------------


def test_past_its_deadline_a_request_gets_504_and_its_slot_stays_taken_until_predict_returns(serve, tmp_path,
                                                                                             processes):
    server = serve(faulty(tmp_path, limit=processes), "--request-timeout", "1")
    hung = [post(server, id=f"h{i}", do="hang") for i in range(processes)]
    assert [r.status_code for r in hung] == [504] * processes
    assert "did not answer within the request timeout (1 s)" in hung[0].json()["error"]
    wait_for(lambda: metric(server, "engine_predict_overruns_total") == processes, "the overruns counted")
    refused = post(server, id="b")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"  # the hung predicts hold the slots
    for i in range(processes):
        (tmp_path / f"release-h{i}").touch()
    server.wait_metric('engine_requests_in_flight{api="f"} 0.0')
    assert post(server, id="c").status_code == 200
    assert metric(server, "engine_requests_timed_out_total") == processes
    assert "predict failed" not in server.output and metric(server, "engine_predictor_exceptions_total") == 0


def test_a_request_given_up_while_it_waits_for_a_thread_never_runs(serve, tmp_path, processes):
    server = serve(faulty(tmp_path), "--request-timeout", "1")
    blockers = [in_thread(post, server, id=f"h{i}", do="hang") for i in range(processes)]
    for i in range(processes):
        wait_file(tmp_path / f"entered-h{i}")
    assert post(server, id="queued").status_code == 504  # every thread was busy all along
    for i, (thread, _) in enumerate(blockers):
        (tmp_path / f"release-h{i}").touch()
        thread.join()
    assert post(server, id="after").status_code == 200  # anything queued before it would have run by now
    assert not (tmp_path / "entered-queued").exists()


def test_a_client_that_leaves_while_its_request_waits_is_dropped_and_counted(serve, tmp_path, processes):
    server = serve(faulty(tmp_path))
    blockers = [in_thread(post, server, id=f"h{i}", do="hang") for i in range(processes)]
    for i in range(processes):
        wait_file(tmp_path / f"entered-h{i}")
    body = json.dumps({"id": "left"}).encode()
    connection = raw(server)
    connection.sendall(b"POST /f HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    server.wait_metric(f'engine_requests_in_flight{{api="f"}} {processes + 1}.0')
    connection.close()
    wait_for(lambda: metric(server, "engine_client_disconnects_total") == 1, "the disconnect counted")
    for i, (thread, _) in enumerate(blockers):
        (tmp_path / f"release-h{i}").touch()
        thread.join()
    assert post(server, id="after").status_code == 200
    assert not (tmp_path / "entered-left").exists()
    assert "f POST /f client disconnected" in server.output and "Traceback" not in server.output


def test_a_worker_still_running_a_given_up_request_is_killed_and_replaced(serve, tmp_path, processes):
    server = serve(faulty(tmp_path), "--request-timeout", "1", "--worker-kill-after", "1", "--isolate")
    assert post(server, id="stuck", do="hang").status_code == 504
    server.wait_output("is still running a request given up 1 s ago (--worker-kill-after); killing it")
    server.wait_output("died with exit code -9; starting a replacement")
    server.wait_ready()
    assert post(server, id="fine").status_code == 200


# --- bodies, slow clients, framing --------------------------------------------------------------------------------


def test_a_body_over_the_limit_gets_413_before_it_is_read(serve, tmp_path):
    server = serve(faulty(tmp_path), "--max-body-size", "1KiB")
    declared = server.client.post("/f", content=b"x" * 2000, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and "larger than 1024 bytes" in declared.json()["error"]
    assert declared.headers["connection"] == "close"
    streamed = server.client.post("/f", content=iter([b"[" + b"1," * 400, b"1," * 400 + b"1]"]),
                                  headers={"Content-Type": "application/json"})  # chunked: no Content-Length
    assert streamed.status_code == 413
    assert post(server, id="small").status_code == 200


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(serve, tmp_path):
    server = serve(faulty(tmp_path), "--body-timeout", "1")
    connection = raw(server)
    connection.sendall(b"POST /f HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 100\r\n\r\n{\"id\": ")
    answer = read_all(connection)  # the server closes the connection after its answer
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer


def test_slow_bodies_hold_no_concurrency_slot(serve, tmp_path):
    server = serve(faulty(tmp_path, limit=2))
    slow = [raw(server) for _ in range(20)]
    for connection in slow:
        connection.sendall(b"POST /f HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 1000\r\n\r\n{")
    assert post(server, id="normal").status_code == 200
    for connection in slow:
        connection.close()


def test_json_nested_too_deeply_is_a_400_that_says_so(serve, tmp_path):
    server = serve(faulty(tmp_path))
    answer = server.client.post("/f", content=b"[" * 100_000 + b"]" * 100_000,
                                headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and "nested too deeply" in answer.json()["error"]
    assert metric(server, "engine_predictor_exceptions_total") == 0


SLOW_PARSER = """
import os
import time

from engine import hookimpl


@hookimpl
def engine_parse_payload(body, content_type):
    if content_type != "application/x-slow":
        return None
    gate = os.path.join(os.environ["SLOW_PARSER_DIR"], "release-parse")
    open(gate + "-entered", "w").close()
    while not os.path.exists(gate):  # a parse that takes as long as the test wants
        time.sleep(0.01)
    return {"id": "parsed"}
"""


def test_parsing_a_large_body_leaves_the_event_loop_free(serve, tmp_path):
    env = plugin_environment(tmp_path / "site", "slowparser", SLOW_PARSER)
    server = serve(faulty(tmp_path), env={**env, "SLOW_PARSER_DIR": str(tmp_path)})
    thread, result = in_thread(server.client.post, "/f", content=b"x" * 2**20,
                               headers={"Content-Type": "application/x-slow"})
    wait_file(tmp_path / "release-parse-entered")
    assert server.client.get("/healthz", timeout=10).status_code == 200  # answered while the parse runs
    (tmp_path / "release-parse").touch()
    thread.join()
    assert result["value"].json()["id"] == "parsed"


def test_content_length_with_chunked_is_refused_and_the_connection_closed(serve, tmp_path):
    server = serve(faulty(tmp_path))
    connection = raw(server)
    connection.sendall(b"POST /f HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 12\r\nTransfer-Encoding: chunked\r\n\r\nc\r\n{\"id\": \"x\"}\r\n0\r\n\r\n")
    answer = read_all(connection)
    assert answer.startswith(b"HTTP/1.1 400") and b"connection: close" in answer.lower()


@pytest.mark.parametrize("sent, kept", [("abc-123", True), ("x" * 201, False), ("has space", False),
                                        ("caf\u00e9", False), ("a" * 200, True)])
def test_request_ids_are_echoed_only_when_sane(serve, tmp_path, sent, kept):
    server = serve(faulty(tmp_path))
    answer = server.client.post("/f", json={"id": "r"}, headers={"X-Request-ID": sent.encode()})
    returned = answer.headers["x-request-id"]
    assert (returned == sent) is kept
    if not kept:
        assert re.fullmatch(r"[0-9a-f]{32}", returned) and sent not in server.output


def test_every_503_carries_retry_after(serve, tmp_path):
    server = serve(faulty(tmp_path, extra="  hang_init: true"), ready=False)
    server.wait_alive()
    not_ready = post(server, id="early")
    assert not_ready.status_code == 503 and not_ready.headers["retry-after"] == "1"
    (tmp_path / "release-init").touch()


# --- crashes, recycling, dispatch -----------------------------------------------------------------------------------


@pytest.mark.parametrize("crash", ["exit", "segfault"])
def test_with_isolate_a_predictor_that_kills_its_process_does_not_end_the_service(serve, tmp_path, crash):
    server = serve(faulty(tmp_path), "--isolate")
    assert post(server, id="crash", do=crash).status_code == 502
    server.wait_ready()
    assert post(server, id="after").status_code == 200
    assert server.process.poll() is None


def test_max_requests_per_worker_replaces_workers_without_failing_a_request(serve, tmp_path, processes):
    server = serve(faulty(tmp_path), "--isolate", "--max-requests-per-worker", "3")
    answers: list[httpx.Response] = []

    def three_generations() -> bool:
        answers.append(post(server, id=f"r{len(answers)}"))
        return len({answer.json()["pid"] for answer in answers}) >= processes + 2

    wait_for(three_generations, "workers replaced after 3 requests each")  # an old one serves until its successor can
    assert all(answer.status_code == 200 for answer in answers)
    assert "(--max-requests-per-worker)" in server.output


def test_a_worker_over_its_memory_limit_is_replaced(serve, tmp_path):
    server = serve(faulty(tmp_path), "--isolate", "--worker-memory-limit", "150MiB")
    pids = [post(server, id="l0", do="leak").json()["pid"]]

    def replaced() -> bool:
        pids.append(post(server, id=f"l{len(pids)}", do="leak").json()["pid"])  # 30 MiB more each time
        return "over --worker-memory-limit (150 MiB)" in server.output and len(set(pids)) > len(set(pids[:1])) + 1

    wait_for(replaced, "a worker over the limit replaced by a successor")


def test_a_worker_running_post_predict_is_busy_for_dispatch(serve, tmp_path, processes):
    if processes == 1:
        pytest.skip("dispatch between worker processes")
    server = serve(faulty(tmp_path))
    first = post(server, id="p", hang_post=True).json()["pid"]  # its worker is now in post_predict
    second = post(server, id="q").json()["pid"]
    assert second != first
    (tmp_path / "release-post-p").touch()


# --- shutdown ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["predict", "post_predict", "__init__"])
def test_sigterm_ends_the_server_in_bounded_time_whatever_hangs(serve, tmp_path, processes, where):
    extra = "  hang_init: true" if where == "__init__" else ""
    server = serve(faulty(tmp_path, extra=extra), "--graceful-timeout", "2", ready=where != "__init__")
    if where == "predict":
        in_thread(post, server, id="h", do="hang")
        wait_file(tmp_path / "entered-h")
    elif where == "post_predict":
        assert post(server, id="h", hang_post=True).status_code == 200
    else:
        server.wait_alive()
    pid = server.process.pid
    if where == "__init__" and processes == 2:  # a worker process still in __init__ is killed at once
        assert server.stop(timeout=30) == 0
    else:  # a thread cannot be: after --graceful-timeout the server exits without it
        assert server.stop(timeout=30) == 1
        assert "work still running in api 'f'" in server.output
    assert sorted(Path(tempfile.gettempdir()).glob(f"engine-*-{pid}-*")) == []


def test_responses_during_the_drain_close_their_connection(serve, tmp_path):
    server = serve(faulty(tmp_path))
    thread, result = in_thread(post, server, id="d", do="hang")
    wait_file(tmp_path / "entered-d")
    server.process.terminate()
    server.wait_output("stopping: no new connections")
    (tmp_path / "release-d").touch()
    thread.join()
    assert result["value"].status_code == 200 and result["value"].headers["connection"] == "close"
    assert server.wait_exit() == 0


def test_no_response_the_server_logged_is_lost_at_sigterm(serve, tmp_path):
    server = serve(faulty(tmp_path, threads=4))
    received: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as keep_alive:
            number = 0
            while not stop.is_set():
                number += 1
                try:
                    answer = keep_alive.post("/f", json={"id": f"{threading.get_ident()}-{number}"})
                except httpx.TransportError:
                    return  # the server has gone: nothing more to send
                received.append(answer.headers["x-request-id"])

    clients = [threading.Thread(target=client) for _ in range(16)]
    for thread in clients:
        thread.start()
    wait_for(lambda: len(received) > 200, "traffic")
    server.process.terminate()
    assert server.wait_exit() == 0
    stop.set()
    for thread in clients:
        thread.join()
    logged = re.findall(r"f POST /f 200 [0-9.]+ms request_id=([0-9a-f]+)", server.output)
    assert logged and set(logged) <= set(received)
