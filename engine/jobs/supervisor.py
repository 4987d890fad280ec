"""One job from submission to its final status, on a thread of its own: enqueue its batches, start its workers,
hand each free worker the next batch, record every outcome, call on_job_complete once, and end the job.

Event-driven, where Cortex polled: the final status is recorded as soon as it is known (Cortex: 1–2 minutes
later), and on_job_complete runs as soon as the last batch has settled (Cortex: after 10–20 s of quiet queue).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine import tracebacks
from engine.jobs import messages
from engine.jobs.launchers import WorkerHandle, WorkerLauncher
from engine.jobs.sources import NO_DATA_FOUND, EnqueueError, batches
from engine.jobs.store import (
    COMPLETED_WITH_FAILURES,
    ENQUEUE_FAILED,
    ENQUEUING,
    SUCCEEDED,
    TIMED_OUT,
    UNEXPECTED_ERROR,
    WORKER_ERROR,
    Claimed,
    JobRow,
    JobStore,
)
from engine.jobs.submission import Submission

log = logging.getLogger("engine.jobs")

ENQUEUE_CHUNK = 1000  # batches written per transaction while enqueuing
STOP_GRACE = 10.0  # seconds workers get to exit after Stop before they are killed
MAX_JOB_ID = 2**63 - 1


def new_job_id(now_ns: int) -> str:
    """Cortex's job id: 16 hex digits of 2⁶³−1 minus the Unix time in nanoseconds, so newer jobs sort first."""
    return f"{MAX_JOB_ID - now_ns:016x}"


def job_started_ns(job_id: str) -> int:
    """When the job was submitted (Unix nanoseconds), read back from its id."""
    return MAX_JOB_ID - int(job_id, 16)


def rfc3339(ns: int) -> str:
    """A time as Go's RFC3339Nano writes it in UTC (up to 9 fractional digits, trailing zeros dropped)."""
    seconds, fraction = divmod(ns, 10**9)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{text}.{digits}Z" if digits else f"{text}Z"


def merged(base: dict[str, Any], over: dict[str, Any] | None) -> dict[str, Any]:
    """`over` merged into a copy of `base` as Cortex merged a job's config: nested mappings key by key, everything
    else replaced."""
    result: dict[str, Any] = json.loads(json.dumps(base))
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


@dataclass
class JobPlace:
    """What every job of one BatchAPI runs with."""

    api: Any  # the BatchApi
    store: JobStore
    launcher: WorkerLauncher
    plugins: list[tuple[str, str | bytes]]
    view: Path
    project_root: Path
    environment: dict[str, str]
    jobs_dir: Path  # the API's job logs and dead letters
    on_batch: Callable[[str, bool, float], None] = field(default=lambda job_id, ok, seconds: None)


class JobLog:
    """A job's log file (its workers' output goes there too), each line also on engine's log."""

    def __init__(self, path: Path, job_id: str, api_name: str) -> None:
        self.path = path
        self.prefix = f"job {job_id} ({api_name} api)"

    def __call__(self, line: str, level: int = logging.INFO) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(f"{stamp} {logging.getLevelName(level)} {line}\n")
        log.log(level, "%s: %s", self.prefix, line)


class JobRun:
    """The supervisor of one job (its thread starts with start())."""

    def __init__(self, place: JobPlace, job: JobRow) -> None:
        self.place = place
        self.job_id = job.job_id
        self.job = job
        self.submission = Submission.from_json(job.submission)
        self.log = JobLog(place.jobs_dir / f"{job.job_id}.log", job.job_id, job.api_name)
        self.events: queue.Queue[tuple[int, messages.FromWorker] | None] = queue.Queue()
        self.workers: dict[int, WorkerHandle] = {}
        self.worker_states: dict[int, str] = {}  # Cortex's worker_counts keys, per worker index
        self.in_flight: dict[int, Claimed] = {}  # worker index → its batch
        self.idle: list[int] = []
        self._halt = threading.Event()  # stop, timeout or shutdown: kill the workers and end the thread
        self._next_index = 0
        started = job_started_ns(job.job_id) / 1e9
        self.deadline = started + self.submission.timeout if self.submission.timeout else None
        self.thread = threading.Thread(target=self._run, name=f"job-{job.job_id}", daemon=True)

    def start(self) -> None:
        """Run the job on its thread."""
        self.thread.start()

    def halt(self) -> None:
        """End the thread now (the job was stopped, or the server is going), killing the workers."""
        self._halt.set()
        self.events.put(None)

    def worker_counts(self) -> dict[str, int]:
        """How many workers are in each of Cortex's states."""
        counts = dict.fromkeys(("pending", "initializing", "running", "succeeded", "failed", "stalled", "unknown"), 0)
        for state in list(self.worker_states.values()):
            counts[state] += 1
        return counts

    # --- the thread --------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self._timed_out():  # its timeout passed while no engine was running it
                return
            if self.job.status == ENQUEUING:
                total = self._enqueue()
                if total is None:
                    return
            else:
                requeued = self.place.store.requeue_running(self.job_id)
                total = self.job.total_batch_count
                self.log(f"resuming the job: {requeued} batch(es) that were running when the engine stopped are "
                         "queued again")
            self._work(total)
        except Exception as error:  # a bug of engine's, not the user's: say it, and end the job truthfully
            self.log(f"unexpected error: {tracebacks.format_exception(error)}", logging.ERROR)
            self._end(UNEXPECTED_ERROR)
        finally:
            for handle in self.workers.values():
                handle.kill()

    def _enqueue(self) -> int | None:
        """Turn the submission's source into queued batches; the batch count, or None when the job ended."""
        store, source = self.place.store, self.submission.source
        store.clear_batches(self.job_id)  # a crash mid-enqueue: start again (no worker has seen a batch yet)
        self.log("started enqueuing batches")
        if source.kind == "item_list" and source.items is not None:
            count = -(-len(source.items) // source.batch_size)
            self.log(f"partitioning {len(source.items)} items found in job submission into {count} batches of size "
                     f"{source.batch_size}")
        total, chunk = 0, []
        try:
            for body in batches(source, self.place.project_root):
                if self._halt.is_set() or self._timed_out():
                    return None
                chunk.append((total, str(uuid.uuid4()), body))
                total += 1
                if len(chunk) == ENQUEUE_CHUNK:
                    store.add_batches(self.job_id, chunk)
                    chunk = []
            store.add_batches(self.job_id, chunk)
        except EnqueueError as error:
            self.log(str(error) if error.kind == NO_DATA_FOUND else f"failed to enqueue all batches: {error}",
                     logging.ERROR)
            self._end(ENQUEUE_FAILED)
            return None
        self.log(f"completed enqueuing a total of {total} batches")
        self.log("spinning up workers...")
        return total if store.start_running(self.job_id, total) else None

    def _work(self, total: int) -> None:
        """Start the workers and run every batch; then on_job_complete and the final status."""
        spec = {**self.job.spec, "total_batch_count": total}
        place = self.place
        start = messages.Start(place.api, place.plugins, place.view, place.project_root, spec,
                               merged(place.api.predictor.config, self.submission.config), place.environment, index=0)
        for _ in range(self.submission.workers):
            self._launch(start)
        completing: int | None = None  # the worker running on_job_complete
        while True:
            # the job's status too: a Stop recorded while the last batch settled must not start on_job_complete
            if completing is None and not self.in_flight and self._all_settled() and not self._halt.is_set() \
                    and self._job().in_progress:
                completing = next((index for index, state in self.worker_states.items() if state == "running"),
                                  None)
                if completing is not None:
                    metrics = self._job().batch_metrics()
                    self.workers[completing].send(messages.Complete(metrics))
            event = self._next_event()
            if event is None:
                return
            index, message = event
            if isinstance(message, messages.Ready):
                self.worker_states[index] = "running"
                self.log(f"worker {index}: polling for batches...")
                self._dispatch(index)
            elif isinstance(message, messages.BatchDone):
                self._settle(index, message)
                self._dispatch(index)
            elif isinstance(message, messages.Completed):
                if message.error is not None:
                    self.log(f"worker {index}: failed to handle on_job_complete\n{message.error}", logging.ERROR)
                    self._end(WORKER_ERROR)
                    return
                job = self._job()
                self._end(SUCCEEDED if job.succeeded >= total else COMPLETED_WITH_FAILURES)
                self._stop_workers()
                return
            elif isinstance(message, messages.StartFailed):
                self.worker_states[index] = "failed"
                self.log(f"worker {index} failed to start:\n{message.details}", logging.ERROR)
                self._end(WORKER_ERROR)
                return
            elif isinstance(message, messages.Exited):
                if not self._lost(index, message, start, completing == index):
                    return

    def _next_event(self) -> tuple[int, messages.FromWorker] | None:
        """The next thing a worker said; None when the job must end here (halted, or its timeout has passed)."""
        while True:
            wait = None if self.deadline is None else max(0.0, self.deadline - time.time())
            try:
                event = self.events.get(timeout=wait)
            except queue.Empty:
                event = None
            if self._halt.is_set():
                return None
            if self._timed_out():
                return None
            if event is not None:
                return event

    def _timed_out(self) -> bool:
        """True (and the job ended as timed out) once the job's timeout has passed since its submission."""
        if self.deadline is None or time.time() < self.deadline:
            return False
        if self._end(TIMED_OUT):
            self.log(f"terminating job after exceeding the specified timeout of {self.submission.timeout} seconds")
        return True

    def _launch(self, start: messages.Start) -> None:
        """Start one more worker and hand it `start` (with its own index)."""
        index = self._next_index
        self._next_index += 1
        place = self.place
        handle = place.launcher.launch(index, f"{place.api.name}:{self.job_id}:{index}", self.log.path,
                                       lambda index, message: self.events.put((index, message)))
        self.workers[index] = handle
        self.worker_states[index] = "initializing"
        handle.send(dataclasses.replace(start, index=index))

    def _dispatch(self, index: int) -> None:
        """Give the worker the next queued batch, or let it wait."""
        claimed = self.place.store.claim(self.job_id)
        if claimed is None:
            self.idle.append(index)
            return
        self.in_flight[index] = claimed
        self.workers[index].send(messages.RunBatch(claimed.batch_id, claimed.body))

    def _wake_idle(self) -> None:
        """A batch went back to the queue: hand it to a waiting worker."""
        idle, self.idle = self.idle, []
        for index in idle:
            if self.worker_states.get(index) == "running" and index not in self.in_flight:
                self._dispatch(index)

    def _settle(self, index: int, done: messages.BatchDone) -> None:
        """Record a batch's outcome: succeeded, queued again (retries left), or kept as failed."""
        claimed = self.in_flight.pop(index)
        store = self.place.store
        self.place.on_batch(self.job_id, done.error is None, done.seconds)
        if done.error is None:
            store.succeeded(self.job_id, claimed.seq, done.seconds)
            return
        self.log(f"failed processing batch {claimed.batch_id}", logging.WARNING)
        self._failed(claimed, done.error, counted=True)

    def _failed(self, claimed: Claimed, error: str, counted: bool) -> None:
        dead_letter = self.submission.dead_letter
        retry = dead_letter is not None and claimed.attempts < dead_letter.max_receive_count
        self.place.store.failed(self.job_id, claimed.seq, error, retry, counted)
        if retry:
            self._wake_idle()
        elif dead_letter is not None:
            with open(self.place.jobs_dir / f"{self.job_id}.dead_letter.jsonl", "a", encoding="utf-8") as file:
                file.write(json.dumps({"batch_id": claimed.batch_id, "attempts": claimed.attempts, "error": error,
                                       "items": json.loads(claimed.body)}) + "\n")

    def _lost(self, index: int, exited: messages.Exited, start: messages.Start, completing: bool) -> bool:
        """A worker has gone: with max_receive_count its batch is retried by a new worker (an engine extension),
        otherwise the job ends as a worker error, as in Cortex. True when the job goes on.

        A worker lost in __init__ or on_job_complete is a worker error even with max_receive_count: there is no
        batch to retry, and a new worker would crash there again, forever."""
        initializing = self.worker_states.get(index) == "initializing"
        self.worker_states[index] = "failed"
        self.workers.pop(index, None)
        how = f"exit_code={exited.code}" if exited.code is not None else exited.reason or "unknown reason"
        self.log(f"at least one worker had status failed and terminated ({how})", logging.ERROR)
        claimed = self.in_flight.pop(index, None)
        if self.submission.dead_letter is None or initializing or completing:
            self._end(WORKER_ERROR)
            return False
        if claimed is not None:
            self._failed(claimed, f"the worker processing it exited ({how})", counted=False)
        self.log(f"replacing worker {index} (sqs_dead_letter_queue.max_receive_count is set)")
        self._launch(start)
        return True

    def _all_settled(self) -> bool:
        """True when no batch is queued or running."""
        counts = self.place.store.counts(self.job_id)
        return not counts.get("queued") and not counts.get("running")

    def _job(self) -> JobRow:
        job = self.place.store.job(self.job_id, self.job.api_name)
        assert job is not None, "a running job is never deleted"
        return job

    def _end(self, status: str) -> bool:
        """Record the final status (unless one already is); True when this call did."""
        ended = self.place.store.end(self.job_id, status, rfc3339(time.time_ns()))
        if ended:
            self.log(f"job ended: {status}")
        return ended

    def _stop_workers(self) -> None:
        """Ask every worker to exit, and wait a little for them to (they are killed afterwards anyway)."""
        for handle in self.workers.values():
            handle.send(messages.Stop())
        deadline = time.monotonic() + STOP_GRACE
        while any(state in ("running", "initializing") for state in self.worker_states.values()):
            try:
                event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if event is not None and isinstance(event[1], messages.Exited):
                self.worker_states[event[0]] = "succeeded" if event[1].code == 0 else "failed"
                self.workers.pop(event[0], None)
