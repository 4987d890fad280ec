"""Worker processes end to end: least-loaded dispatch, the limit across workers, faults and draining."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from engine.testing import api_yaml, in_thread, wait_file

pytestmark = pytest.mark.e2e

WORKER = """
import ctypes
import os
import signal
import time


def wait_for(path, timeout=30):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)


class PythonPredictor:
    def __init__(self, config):
        self.dir = config["dir"]
        if config.get("hang"):
            time.sleep(3600)

    def predict(self, payload):
        open(os.path.join(self.dir, f"entered-{payload['id']}"), "w").close()
        action = payload.get("do")
        if action == "exit":
            os._exit(3)
        if action == "segfault":
            ctypes.string_at(0)
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "wait":
            wait_for(os.path.join(self.dir, f"release-{payload['id']}"))
        return {"id": payload["id"], "pid": os.getpid(), "omp": os.environ.get("OMP_NUM_THREADS")}

    def post_predict(self, response, payload):
        if payload.get("post_wait"):
            wait_for(os.path.join(self.dir, f"release-post-{payload['id']}"))
        path = os.path.join(self.dir, f"post-{payload['id']}")
        with open(path + ".tmp", "w") as out:
            out.write(str(response["pid"]))
        os.replace(path + ".tmp", path)  # the test waits for this file: it must appear whole
"""


def project(tmp_path, processes=2, threads=1, extra="", hang=False):
    predictor = (f"processes_per_replica: {processes}\nthreads_per_process: {threads}\n"
                 f"config:\n  dir: {tmp_path}\n  hang: {hang}")
    return {"cortex.yaml": api_yaml("work", predictor_extra=predictor, api_extra=extra), "predictor.py": WORKER}


def post(server, **payload):
    return httpx.post(server.url + "/work", json=payload, timeout=30)


@pytest.fixture(scope="module")
def processes():
    """These tests choose processes_per_replica themselves: run them once."""
    return 2


@pytest.fixture(autouse=True)
def one_cpu_count_per_worker(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_a_slow_request_does_not_hold_up_one_an_idle_worker_can_serve(serve, tmp_path):
    server = serve(project(tmp_path))
    slow, slow_result = in_thread(post, server, id="slow", do="wait")
    wait_file(tmp_path / "entered-slow")
    fast = post(server, id="fast")
    assert fast.status_code == 200
    (tmp_path / "release-slow").touch()
    slow.join()
    assert slow_result["value"].status_code == 200
    assert slow_result["value"].json()["pid"] != fast.json()["pid"]  # two processes served them


def test_requests_queue_for_a_free_worker_thread(serve, tmp_path):
    server = serve(project(tmp_path))
    blocked = [in_thread(post, server, id=name, do="wait") for name in ("a", "b")]
    wait_file(tmp_path / "entered-a")
    wait_file(tmp_path / "entered-b")
    queued, queued_result = in_thread(post, server, id="c")
    server.wait_metric('engine_requests_in_flight{api="work"} 3.0')  # c has reached the front process
    assert not (tmp_path / "entered-c").exists(), "no worker has a free thread, so c must wait in the front process"
    (tmp_path / "release-a").touch()
    queued.join()
    assert queued_result["value"].status_code == 200
    (tmp_path / "release-b").touch()
    for thread, _ in blocked:
        thread.join()


def test_max_replica_concurrency_counts_requests_across_workers(serve, tmp_path):
    extra = "autoscaling:\n  max_replica_concurrency: 2\n  target_replica_concurrency: 1"
    server = serve(project(tmp_path, extra=extra))
    blocked = [in_thread(post, server, id=name, do="wait") for name in ("a", "b")]
    wait_file(tmp_path / "entered-a")
    wait_file(tmp_path / "entered-b")
    rejected = post(server, id="c")
    assert rejected.status_code == 503 and "max_replica_concurrency" in rejected.json()["error"]
    for name in ("a", "b"):
        (tmp_path / f"release-{name}").touch()
    for thread, result in blocked:
        thread.join()
        assert result["value"].status_code == 200


@pytest.mark.parametrize("action, code", [("exit", "3"), ("segfault", "-11"), ("kill", "-9")])
def test_a_dying_worker_fails_only_its_requests_and_is_replaced(serve, tmp_path, action, code):
    server = serve(project(tmp_path))
    other, other_result = in_thread(post, server, id="other", do="wait")
    wait_file(tmp_path / "entered-other")
    dying = post(server, id="dying", do=action)
    assert dying.status_code == 502
    assert f"died (exit code {code})" in dying.json()["error"]
    (tmp_path / "release-other").touch()
    other.join()
    assert other_result["value"].status_code == 200  # the request on the other worker is unaffected
    assert f"worker 0 died with exit code {code}; starting a replacement" in server.output \
        or f"worker 1 died with exit code {code}; starting a replacement" in server.output
    deadline = time.monotonic() + 30
    pids = set()
    while len(pids) < 2:  # the replacement serves too: two different processes answer concurrent requests
        assert time.monotonic() < deadline, server.output
        pair = [in_thread(post, server, id=f"p{len(pids)}-{i}", do="wait") for i in range(2)]
        for i in range(2):
            wait_file(tmp_path / f"entered-p{len(pids)}-{i}")
        for i in range(2):
            (tmp_path / f"release-p{len(pids)}-{i}").touch()
        for thread, _ in pair:
            thread.join()
        pids = {result["value"].json()["pid"] for _, result in pair}


def test_a_worker_stuck_in_init_fails_start_up_after_the_timeout(serve, tmp_path):
    server = serve(project(tmp_path, hang=True), "--worker-init-timeout", "1", ready=False)
    assert server.wait_exit() == 1
    assert "did not finish __init__ within 1 s" in server.output


def test_sigterm_drains_every_worker(serve, tmp_path):
    server = serve(project(tmp_path))
    thread, result = in_thread(post, server, id="s", do="wait", post_wait=True)
    wait_file(tmp_path / "entered-s")
    server.process.terminate()
    server.wait_output("stopping: no new connections")
    assert server.process.poll() is None, "the server must wait for its in-flight request"
    (tmp_path / "release-s").touch()
    thread.join()
    assert result["value"].status_code == 200
    (tmp_path / "release-post-s").touch()
    assert server.wait_exit() == 0
    worker_pid = int((tmp_path / "post-s").read_text())  # post_predict finished before the worker exited
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)


def test_a_sigterm_to_the_whole_process_group_is_left_to_the_front(serve, tmp_path):
    """systemd's stop and `kill -- -PGID` reach the workers too: they go on until the front has drained and stops
    them, so a request queued in the front when the signal came is still answered."""
    server = serve(project(tmp_path))
    blocked = [in_thread(post, server, id=name, do="wait") for name in ("a", "b")]
    wait_file(tmp_path / "entered-a")
    wait_file(tmp_path / "entered-b")
    queued, queued_result = in_thread(post, server, id="c")
    server.wait_metric('engine_requests_in_flight{api="work"} 3.0')
    pid = server.process.pid
    workers = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for process in (pid, *workers):
        os.kill(process, signal.SIGTERM)
    server.wait_output("stopping: no new connections")
    for name in ("a", "b"):
        (tmp_path / f"release-{name}").touch()
    for thread, result in [*blocked, (queued, queued_result)]:
        thread.join()
        assert result["value"].status_code == 200, result["value"].text
    assert server.wait_exit() == 0
    assert "died" not in server.output


def test_each_worker_gets_its_share_of_the_cores(serve, tmp_path):
    server = serve(project(tmp_path))
    cores = len(os.sched_getaffinity(0))
    assert post(server, id="x").json()["omp"] == str(max(1, cores // 2))
