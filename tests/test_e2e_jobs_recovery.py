"""BatchAPI jobs that lose a process: a worker SIGKILLed mid-batch (a worker error as in Cortex, or with
max_receive_count a new worker and the batch retried), and `engine serve` SIGKILLed mid-job (its workers die with it;
the next start resumes the job from its SQLite state: every item processed at least once, no finished batch again)."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from support import alive, attempts_by_batch, blocked_pid, markers

from engine.testing import Server, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROBE = Path(__file__).resolve().parent / "projects" / "batch" / "probe.py"
CONFIG = """
- name: probe
  kind: BatchAPI
  predictor:
    type: python
    path: probe.py
"""
IN_PROGRESS = ("status_enqueuing", "status_running")
DEAD_LETTER_QUEUE = {"arn": "arn:aws:sqs:us-west-2:123456789012:dead-letters", "max_receive_count": 2}


def write_probe_project(root: Path) -> Path:
    root.mkdir(parents=True)
    shutil.copy(PROBE, root / "probe.py")
    (root / "cortex.yaml").write_text(CONFIG.lstrip())
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One `engine serve` for the tests that kill only workers."""
    root = tmp_path_factory.mktemp("recovery")
    server = Server(write_probe_project(root / "project"), "--state-dir", str(root / "state"))
    server.wait_ready(60)
    yield server
    server.close()


@pytest.fixture
def probe_dir(tmp_path) -> Path:
    folder = tmp_path / "probe"
    folder.mkdir()
    return folder


def submit(server: Server, body: dict) -> str:
    response = server.client.post("/probe", json=body)
    assert response.status_code == 200, response.text
    return response.json()["job_id"]


def job_status(server: Server, job_id: str) -> dict:
    response = server.client.get("/probe", params={"jobID": job_id})
    assert response.status_code == 200, response.text
    return response.json()["job_status"]


def wait_final(server: Server, job_id: str, state: Path, timeout: float = 120) -> dict:
    """Poll the job's status until it is final (a generous deadline: this waits for an event, it measures nothing)."""
    deadline = time.monotonic() + timeout
    while (status := job_status(server, job_id))["status"] in IN_PROGRESS:
        assert time.monotonic() < deadline, f"job {job_id} still {status['status']}:\n{job_log(state, job_id)}"
        time.sleep(0.05)
    return status


def job_log(state: Path, job_id: str) -> str:
    path = state / "jobs" / "probe" / f"{job_id}.log"
    return path.read_text() if path.exists() else ""


# --- a worker killed mid-batch ----------------------------------------------------------------------------------------


def test_a_worker_killed_mid_batch_is_a_worker_error(server, probe_dir):
    job_id = submit(server, {"workers": 1, "config": {"dir": str(probe_dir)},
                             "item_list": {"items": [{"id": "k", "do": "block"}, {"id": "x"}], "batch_size": 1}})
    os.kill(blocked_pid(probe_dir, "k"), signal.SIGKILL)
    status = wait_final(server, job_id, state_of(server))
    assert status["status"] == "status_worker_error" and status["worker_counts"] is None
    log = job_log(state_of(server), job_id)
    assert "at least one worker had status failed and terminated (exit_code=-9)" in log
    assert len(markers(probe_dir, "init")) == 1  # not replaced
    assert not markers(probe_dir, "complete")


def test_with_max_receive_count_a_killed_worker_is_replaced_and_its_batch_retried(server, probe_dir):
    items = [{"id": "k", "do": "block"}, {"id": "x"}, {"id": "y"}]
    job_id = submit(server, {"workers": 1, "config": {"dir": str(probe_dir)},
                             "item_list": {"items": items, "batch_size": 1},
                             "sqs_dead_letter_queue": DEAD_LETTER_QUEUE})
    killed = blocked_pid(probe_dir, "k")
    os.kill(killed, signal.SIGKILL)
    status = wait_final(server, job_id, state_of(server))
    assert status["status"] == "status_succeeded", job_log(state_of(server), job_id)
    assert status["batch_metrics"]["succeeded"] == 3 and status["batch_metrics"]["failed"] == 0
    attempts = attempts_by_batch(probe_dir)
    assert sorted(len(payloads) for payloads in attempts.values()) == [1, 1, 2]
    (retried,) = [payloads for payloads in attempts.values() if len(payloads) == 2]
    assert retried == [[items[0]], [items[0]]]  # the same batch_id both times
    pids = {init["pid"] for init in markers(probe_dir, "init")}
    assert killed in pids and len(pids) == 2  # a new worker, with its own __init__
    assert "replacing worker 0 (sqs_dead_letter_queue.max_receive_count is set)" in job_log(state_of(server), job_id)
    (complete,) = markers(probe_dir, "complete")
    assert complete["pid"] != killed


def test_a_sigterm_reaching_a_worker_is_left_to_its_supervisor(server, probe_dir):
    """As Ctrl+C's SIGINT: a SIGTERM to the whole process group (systemd's stop, kill -- -PGID) must not end the job
    as a worker error before engine serve has stopped, leaving it in progress to resume."""
    job_id = submit(server, {"workers": 1, "config": {"dir": str(probe_dir)},
                             "item_list": {"items": [{"id": "t", "do": "block"}], "batch_size": 1}})
    pid = blocked_pid(probe_dir, "t")
    os.kill(pid, signal.SIGTERM)  # pending from here on: the worker would die before it could see the gate
    (probe_dir / "gate-t").touch()
    status = wait_final(server, job_id, state_of(server))
    assert status["status"] == "status_succeeded", job_log(state_of(server), job_id)


@pytest.mark.parametrize("dead_letter_queue", [None, DEAD_LETTER_QUEUE], ids=["no-dlq", "dlq"])
def test_an_idle_worker_killed(server, probe_dir, dead_letter_queue):
    """Without max_receive_count any lost worker is a worker error (Cortex); with it an idle one is replaced."""
    job_id = submit(server, {"workers": 2, "config": {"dir": str(probe_dir)},
                             "item_list": {"items": [{"id": "busy", "do": "block"}, {"id": 1}], "batch_size": 1},
                             "sqs_dead_letter_queue": dead_letter_queue})
    busy = blocked_pid(probe_dir, "busy")

    def other_idle() -> bool:  # ready, and its batch recorded as done: it holds nothing
        status = job_status(server, job_id)
        return status["worker_counts"]["running"] == 2 and status["batch_metrics"]["succeeded"] == 1

    wait_for(other_idle, "the other worker idle", timeout=60)
    (idle,) = {init["pid"] for init in markers(probe_dir, "init")} - {busy}
    os.kill(idle, signal.SIGKILL)
    if dead_letter_queue is None:
        assert wait_final(server, job_id, state_of(server))["status"] == "status_worker_error"
        wait_for(lambda: not alive(busy), "the other worker killed", timeout=60)
        return
    wait_for(lambda: "replacing worker" in job_log(state_of(server), job_id), "the idle worker replaced", timeout=60)
    (probe_dir / "gate-busy").touch()
    status = wait_final(server, job_id, state_of(server))
    assert status["status"] == "status_succeeded", job_log(state_of(server), job_id)
    assert all(len(payloads) == 1 for payloads in attempts_by_batch(probe_dir).values())


@pytest.mark.parametrize("crash", ["init_kill", "complete_kill"])
def test_with_max_receive_count_a_worker_that_crashes_outside_a_batch_is_a_worker_error(server, probe_dir, crash):
    """A crash in __init__ or on_job_complete is not a batch's to retry: replacing the worker would crash again."""
    job_id = submit(server, {"workers": 1, "config": {"dir": str(probe_dir), crash: True},
                             "sqs_dead_letter_queue": DEAD_LETTER_QUEUE,
                             "item_list": {"items": [{"id": 1}], "batch_size": 1}})
    status = wait_final(server, job_id, state_of(server))
    assert status["status"] == "status_worker_error", job_log(state_of(server), job_id)
    assert len(markers(probe_dir, f"killed-{crash.removesuffix('_kill')}")) == 1  # not replaced
    assert "at least one worker had status failed and terminated (exit_code=-9)" in job_log(state_of(server), job_id)


def test_a_second_engine_on_the_same_state_directory_is_refused(server, tmp_path):
    other = Server(write_probe_project(tmp_path / "project"), "--state-dir", str(state_of(server)))
    assert other.wait_exit(60) == 1
    assert f"the state directory {state_of(server)} is in use by another engine (pid {server.process.pid})" in \
        other.output


def state_of(server: Server) -> Path:
    return Path(server.process.args[server.process.args.index("--state-dir") + 1])


# --- engine serve killed mid-job -------------------------------------------------------------------------------------


@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_job_survives_its_server(tmp_path, probe_dir, signal_number):
    """kill -9 (the workers die with the server) or a clean stop (the server kills them, the job stays in progress):
    the next start resumes the job."""
    project, state = write_probe_project(tmp_path / "project"), tmp_path / "state"
    items = [{"id": index, "do": "block"} if index in (4, 5) else {"id": index} for index in range(10)]
    first = Server(project, "--state-dir", str(state))
    try:
        first.wait_ready(60)
        job_id = submit(first, {"workers": 2, "config": {"dir": str(probe_dir)},
                                "item_list": {"items": items, "batch_size": 1}})
        workers = {blocked_pid(probe_dir, 4), blocked_pid(probe_dir, 5)}  # both workers hold a batch
        first.process.send_signal(signal_number)
        assert first.process.wait(60) == (0 if signal_number == signal.SIGTERM else -signal.SIGKILL)
        wait_for(lambda: not any(alive(pid) for pid in workers), "the workers dying with the server", timeout=60)
    finally:
        first.close()

    with sqlite3.connect(state / "jobs.sqlite3") as db:
        recorded = dict(db.execute("SELECT batch_id, state FROM batches WHERE job_id = ?", (job_id,)).fetchall())
    finished = {batch_id for batch_id, batch_state in recorded.items() if batch_state == "succeeded"}
    assert sorted(recorded.values()).count("running") == 2 and len(finished) >= 4

    second = Server(project, "--state-dir", str(state))
    try:
        second.wait_ready(60)
        status = job_status(second, job_id)  # truthful from the first answer on: in progress or done, no less
        assert status["status"] in ("status_running", "status_succeeded")
        assert status["batch_metrics"]["succeeded"] >= len(finished) and status["total_batch_count"] == 10
        status = wait_final(second, job_id, state)
    finally:
        second.close()
    assert status["status"] == "status_succeeded", job_log(state, job_id)
    assert status["batch_metrics"]["succeeded"] == 10
    attempts = attempts_by_batch(probe_dir)
    assert set(attempts) == set(recorded)
    assert all(len(attempts[batch_id]) == 1 for batch_id in finished)  # a finished batch never runs again
    processed = [item["id"] for record in markers(probe_dir, "done") for item in record["payload"]]
    assert sorted(set(processed)) == list(range(10))  # every item at least once
    assert len(markers(probe_dir, "complete")) == 1
    assert "resuming the job: 2 batch(es) that were running when the engine stopped are queued again" in \
        job_log(state, job_id)
