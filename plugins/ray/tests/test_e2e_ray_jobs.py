"""BatchAPI jobs on `engine serve --on ray`, joining a one-node Ray cluster started here (`ray start`, in the
loopback-only namespace) with --address, so that the project is uploaded: the job API at the BatchAPI's endpoint
beside a RealtimeAPI, each job's workers Ray actors (two workers: two actors), retries and failed batches with
sqs_dead_letter_queue, an actor killed mid-batch, stop, a job whose workers no node can hold waiting until its
timeout or its stop, and a job resumed after the server restarts (its state in the project's .engine on this
machine, where the BatchAPI's replica runs: the head node).

The predictor records what happened as files in the test's folder: each worker's actor id, pid and where its code
was read from, each batch it finished, where it hangs (its pid, for the test to kill), and on_job_complete."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from engine.testing import wait_for, write_project

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(600)]

ENDPOINT = "/recorder"
FINAL_TIMEOUT = 180  # seconds for a job to reach its final status (actors start in a few seconds each)
IN_PROGRESS = ("status_enqueuing", "status_running")
DEAD_LETTER = {"arn": "arn:aws:sqs:us-west-2:123456789012:recorder-dead-letters", "max_receive_count": 2}

CONFIG = """
- name: echo
  kind: RealtimeAPI
  predictor: {{type: python, path: echo.py}}
  compute: {{cpu: 100m}}
- name: recorder
  kind: BatchAPI
  predictor: {{type: python, path: batch.py, config: {{out: '{out}'}}}}
  compute: {{cpu: 100m}}
- name: too-big
  kind: BatchAPI
  predictor: {{type: python, path: batch.py, config: {{out: '{out}'}}}}
  compute: {{cpu: 100m, mem: 64Gi}}
"""

ECHO = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return payload
"""

# A batch is processed once every worker of the job has started (so that each worker takes one). Items: "fail-once"
# raises the first time its batch is tried, "fail-always" every time; "hang" hangs for good, "hang-once" the first
# time (its pid in hang-<batch_id>, for the test to kill it); anything else is processed.
BATCH = """
import json
import os
import time
from pathlib import Path

import ray


def record(path, text):
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    partial.rename(path)


class PythonPredictor:
    def __init__(self, config, job_spec):
        self.out = Path(config["out"]) / job_spec["job_id"]
        self.out.mkdir(parents=True, exist_ok=True)
        self.workers = job_spec["workers"]
        record(self.out / f"worker-{ray.get_runtime_context().get_actor_id()}",
               json.dumps({"pid": os.getpid(), "file": str(Path(__file__).resolve())}))

    def predict(self, payload, batch_id):
        deadline = time.monotonic() + 120
        while len([path for path in self.out.glob("worker-*") if path.suffix != ".partial"]) < self.workers \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        for item in payload:
            if item == "fail-always":
                raise ValueError("this batch always fails")
            if item == "fail-once" and not (self.out / f"tried-{batch_id}").exists():
                (self.out / f"tried-{batch_id}").touch()
                raise ValueError("this batch fails the first time")
            hang = self.out / f"hang-{batch_id}"
            if item == "hang" or (item == "hang-once" and not hang.exists()):
                record(hang, str(os.getpid()))
                time.sleep(3600)
        record(self.out / f"batch-{batch_id}", json.dumps({"pid": os.getpid(), "items": payload}))

    def on_job_complete(self):
        record(self.out / "on_job_complete", str(os.getpid()))
"""


class Served:
    """The module's `engine serve --on ray` (the restart test replaces it), and the folder its predictor writes."""

    def __init__(self, start, project: Path, out: Path, address: str) -> None:
        self.start, self.project, self.out, self.address = start, project, out, address
        self.server = start(project, "--address", address)
        self.server.wait_ready()

    def restart(self) -> None:
        assert self.server.stop() == 0, self.server.output
        self.server = self.start(self.project, "--address", self.address)
        self.server.wait_ready()

    def submit(self, endpoint: str = ENDPOINT, **submission) -> str:
        answer = self.server.client.post(endpoint, json=submission)
        assert answer.status_code == 200, answer.text + self.server.output[-5000:]
        return answer.json()["job_id"]

    def status(self, job_id: str, endpoint: str = ENDPOINT) -> dict:
        answer = self.server.client.get(endpoint, params={"jobID": job_id})
        assert answer.status_code == 200, answer.text
        return answer.json()["job_status"]

    def final(self, job_id: str, endpoint: str = ENDPOINT) -> dict:
        """The job's status once it is final."""
        def ended() -> dict | None:
            status = self.status(job_id, endpoint)
            return status if status["status"] not in IN_PROGRESS else None
        return wait_for(ended, f"job {job_id} ending\n{self.server.output[-5000:]}", FINAL_TIMEOUT)

    def records(self, job_id: str, prefix: str) -> dict[str, str]:
        """The job's files named prefix-<key>: key → text."""
        folder = self.out / job_id
        return {path.name.removeprefix(prefix + "-"): path.read_text() for path in folder.glob(f"{prefix}-*")
                if path.suffix != ".partial"}

    def workers(self, job_id: str) -> dict[str, dict]:
        """Each worker of the job that started: its actor id → its pid and the predictor's file."""
        return {actor: json.loads(text) for actor, text in self.records(job_id, "worker").items()}

    def batches_done(self, job_id: str) -> list[str]:
        """The items of each batch the job's predict finished, as JSON texts, sorted."""
        return sorted(json.dumps(json.loads(text)["items"]) for text in self.records(job_id, "batch").values())

    def hanging_pid(self, job_id: str) -> int:
        """The pid of the actor hanging in a batch of the job, once it does."""
        found = wait_for(lambda: self.records(job_id, "hang"), f"job {job_id} hanging", FINAL_TIMEOUT)
        return int(next(iter(found.values())))


@pytest.fixture(scope="module")
def served(ray_cluster, ray_server, tmp_path_factory) -> Served:
    out = tmp_path_factory.mktemp("out")
    project = write_project(tmp_path_factory.mktemp("jobs") / "project",
                            {"cortex.yaml": CONFIG.format(out=out), "echo.py": ECHO, "batch.py": BATCH})
    return Served(ray_server, project, out, ray_cluster)


def gone(pid: int) -> bool:
    """True once the process has exited (a zombie counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, ProcessLookupError, IndexError):  # gone, before the open or during the read
        return True


def test_a_job_runs_every_batch_on_two_actors(served):
    job_id = served.submit(workers=2, item_list={"items": list(range(20)), "batch_size": 3})
    status = served.final(job_id)
    assert status["status"] == "status_succeeded", served.server.output[-5000:]
    assert (status["total_batch_count"], status["batch_metrics"]["succeeded"], status["batch_metrics"]["failed"]) \
        == (7, 7, 0)
    batches = [json.loads(text) for text in served.records(job_id, "batch").values()]
    assert sorted(item for batch in batches for item in batch["items"]) == list(range(20))
    workers = served.workers(job_id)
    pids = {worker["pid"] for worker in workers.values()}
    assert len(workers) == 2 and len(pids) == 2, workers  # two actors, in two processes
    assert {batch["pid"] for batch in batches} == pids
    assert int((served.out / job_id / "on_job_complete").read_text()) in pids
    # the actors read the project Ray uploaded, not the folder here
    assert not any(worker["file"].startswith(str(served.project)) for worker in workers.values()), workers
    # the state is kept in the project's .engine on this machine, the workers' output in Ray's logs
    job_log = (served.project / ".engine" / "ray" / "recorder" / "jobs" / "recorder" / f"{job_id}.log").read_text()
    assert "is Ray actor" in job_log and "job ended: status_succeeded" in job_log, job_log
    listed = served.server.client.get(ENDPOINT).json()["job_statuses"]
    assert job_id in [job["job_id"] for job in listed]
    assert served.server.client.post("/echo", json={"x": 1}).json() == {"x": 1}  # the RealtimeAPI beside it
    assert "BatchAPI 'recorder': jobs at" in served.server.output


def test_failed_batches_are_retried_then_kept(served):
    job_id = served.submit(workers=2, item_list={"items": [1, "fail-once", "fail-always", 2], "batch_size": 1},
                           sqs_dead_letter_queue=DEAD_LETTER)
    status = served.final(job_id)
    assert status["status"] == "status_completed_with_failures", served.server.output[-5000:]
    # failed counts failed attempts, as Cortex's metric did: fail-once once, fail-always twice
    assert (status["batch_metrics"]["succeeded"], status["batch_metrics"]["failed"]) == (3, 3)
    assert served.batches_done(job_id) == ['["fail-once"]', "[1]", "[2]"]
    failed = served.server.client.get(f"{ENDPOINT}/{job_id}/failed_batches").json()["failed_batches"]
    assert [(batch["items"], batch["attempts"]) for batch in failed] == [(["fail-always"], 2)]
    assert "this batch always fails" in failed[0]["error"]


def test_an_actor_killed_mid_batch(served):
    # without max_receive_count the job ends as a worker error (Cortex); with it a new actor retries the batch
    fatal = served.submit(workers=1, item_list={"items": ["hang"], "batch_size": 1})
    retried = served.submit(workers=1, item_list={"items": ["hang-once", 1], "batch_size": 1},
                            sqs_dead_letter_queue=DEAD_LETTER)
    for job_id in (fatal, retried):
        os.kill(served.hanging_pid(job_id), signal.SIGKILL)
    assert served.final(fatal)["status"] == "status_worker_error"
    status = served.final(retried)
    assert (status["status"], status["batch_metrics"]["succeeded"]) == ("status_succeeded", 2)
    assert len(served.records(retried, "worker")) == 2  # the actor killed and its replacement
    assert served.batches_done(retried) == ['["hang-once"]', "[1]"]


def test_stop_kills_the_jobs_actors(served):
    job_id = served.submit(workers=1, item_list={"items": ["hang"], "batch_size": 1})
    pid = served.hanging_pid(job_id)
    answer = served.server.client.delete(ENDPOINT, params={"jobID": job_id})
    assert answer.json() == {"message": f"stopped job {job_id}"}
    assert served.status(job_id)["status"] == "status_stopped"
    wait_for(lambda: gone(pid), "the stopped job's actor ending", FINAL_TIMEOUT)
    assert served.final(job_id)["status"] == "status_stopped"


def test_a_job_whose_workers_no_node_can_hold_waits(served):
    # a cluster may add a larger node later: a warning at start; a job's workers wait, initializing, until its
    # timeout, or until it is stopped
    assert "api 'too-big': one job worker asks for CPU 0.1, memory 64.0 GiB; no node of the Ray cluster has that" in \
        served.server.output
    timed = served.submit("/too-big", workers=1, timeout=3, item_list={"items": [1], "batch_size": 1})
    waiting = served.submit("/too-big", workers=2, item_list={"items": [1], "batch_size": 1})
    wait_for(lambda: (served.status(waiting, "/too-big")["worker_counts"] or {}).get("initializing") == 2,
             "two workers initializing", FINAL_TIMEOUT)
    assert served.final(timed, "/too-big")["status"] == "status_timed_out"
    served.server.client.delete("/too-big", params={"jobID": waiting})
    assert served.final(waiting, "/too-big")["status"] == "status_stopped"
    assert not (served.out / timed).exists() and not (served.out / waiting).exists()  # no worker ever started


def test_a_job_resumes_after_the_server_restarts(served):
    job_id = served.submit(workers=1, item_list={"items": [1, "hang-once", 2], "batch_size": 1})
    pid = served.hanging_pid(job_id)
    served.restart()  # SIGTERM: the actors go with the BatchAPI's replica; the job stays in progress in SQLite
    wait_for(lambda: gone(pid), "the actor ending with the server", FINAL_TIMEOUT)
    status = served.final(job_id)
    assert (status["status"], status["batch_metrics"]["succeeded"]) == ("status_succeeded", 3), \
        served.server.output[-5000:]
    assert served.batches_done(job_id) == ['["hang-once"]', "[1]", "[2]"]
    # the state is not uploaded with the project
    uploaded = {Path(worker["file"]).parent for worker in served.workers(job_id).values()}
    assert uploaded and not any((folder / ".engine").exists() for folder in uploaded), uploaded
