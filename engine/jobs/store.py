"""The durable state of every job: one SQLite file (WAL) in the state directory.

A job is a row of `jobs`; its batches are rows of `batches`, each queued, running, succeeded or failed. Every change
is one transaction, so a server killed at any moment (kill -9) finds on its next start exactly what had happened:
a batch recorded as finished is never run again, and one that was running goes back to the queue. (Commits are
durable across a crash of the process; synchronous=NORMAL lets a power cut lose the last few.)
"""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import EngineError

ENQUEUING, RUNNING = "status_enqueuing", "status_running"
IN_PROGRESS = (ENQUEUING, RUNNING)
SUCCEEDED, COMPLETED_WITH_FAILURES = "status_succeeded", "status_completed_with_failures"
ENQUEUE_FAILED, UNEXPECTED_ERROR = "status_enqueue_failed", "status_unexpected_error"
WORKER_ERROR, WORKER_OOM = "status_worker_error", "status_worker_oom"
TIMED_OUT, STOPPED, UNKNOWN = "status_timed_out", "status_stopped", "status_unknown"
FILE_NAME = "jobs.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    api_name TEXT NOT NULL,
    spec TEXT NOT NULL,              -- the JobSpec as submitted (total_batch_count is the column below)
    submission TEXT NOT NULL,        -- the submission, to enqueue again after a crash mid-enqueue
    api_spec TEXT NOT NULL,          -- the API's configuration when the job was submitted
    status TEXT NOT NULL,
    end_time TEXT,
    total_batch_count INTEGER NOT NULL DEFAULT 0,
    succeeded INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,   -- failed attempts, as Cortex counted them
    seconds REAL NOT NULL DEFAULT 0      -- the time of the successful batches
);
CREATE INDEX IF NOT EXISTS jobs_by_api ON jobs (api_name, job_id);
CREATE TABLE IF NOT EXISTS batches (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    batch_id TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',   -- queued, running, succeeded, failed
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    PRIMARY KEY (job_id, seq)
);
CREATE INDEX IF NOT EXISTS batches_by_state ON batches (job_id, state, seq);
"""


@dataclass(frozen=True)
class JobRow:
    """A job as stored."""

    job_id: str
    api_name: str
    spec: dict[str, Any]
    submission: dict[str, Any]
    api_spec: dict[str, Any]
    status: str
    end_time: str | None
    total_batch_count: int
    succeeded: int
    failed: int
    seconds: float

    @property
    def in_progress(self) -> bool:
        """True while enqueuing or running."""
        return self.status in IN_PROGRESS

    def batch_metrics(self) -> dict[str, Any]:
        """Cortex's batch_metrics: batches succeeded, attempts failed, the mean time of a successful batch."""
        average = self.seconds / self.succeeded if self.succeeded else None
        return {"succeeded": self.succeeded, "failed": self.failed, "average_time_per_batch": average}


@dataclass(frozen=True)
class Claimed:
    """A batch handed to a worker."""

    seq: int
    batch_id: str
    body: str
    attempts: int  # this one included


class JobStore:
    """The jobs of one state directory, for one engine at a time (a lock file says which)."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = state_dir
        self.path = state_dir / FILE_NAME
        self._lock_file = _lock(state_dir)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database and let another engine use the directory."""
        with self._lock:
            self._db.close()
        os.close(self._lock_file)

    def _write(self, *statements: tuple[str, Iterable[Any]]) -> list[int]:
        """Run the statements in one transaction; the number of rows each changed."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                changed = [self._db.execute(sql, tuple(args)).rowcount for sql, args in statements]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return changed

    def _read(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- jobs ----------------------------------------------------------------------------------------------------

    def create(self, job_id: str, api_name: str, spec: dict[str, Any], submission: dict[str, Any],
               api_spec: dict[str, Any]) -> None:
        """Record a new job, enqueuing."""
        self._write(("INSERT INTO jobs (job_id, api_name, spec, submission, api_spec, status) VALUES (?,?,?,?,?,?)",
                     (job_id, api_name, json.dumps(spec), json.dumps(submission), json.dumps(api_spec), ENQUEUING)))

    def job(self, job_id: str, api_name: str) -> JobRow | None:
        """One of an API's jobs; None when it has no such job."""
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ? AND api_name = ?", job_id, api_name)
        return _job(rows[0]) if rows else None

    def jobs(self, api_name: str) -> list[JobRow]:
        """An API's jobs, newest first (job ids sort so)."""
        return [_job(row) for row in self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE api_name = ? ORDER BY job_id",
                                                api_name)]

    def in_progress(self, api_name: str) -> list[JobRow]:
        """An API's jobs still enqueuing or running (after a restart: those to resume)."""
        return [job for job in self.jobs(api_name) if job.in_progress]

    def start_running(self, job_id: str, total: int) -> bool:
        """Enqueuing is over: record the batch count and status_running; False when the job had already ended."""
        return self._write(("UPDATE jobs SET status = ?, total_batch_count = ? WHERE job_id = ? AND status = ?",
                            (RUNNING, total, job_id, ENQUEUING)))[0] == 1

    def end(self, job_id: str, status: str, end_time: str) -> bool:
        """Record a final status, unless the job has one already (a final status never changes); True if it did."""
        return self._write(("UPDATE jobs SET status = ?, end_time = ? WHERE job_id = ? AND status IN (?, ?)",
                            (status, end_time, job_id, *IN_PROGRESS)))[0] == 1

    # --- batches ---------------------------------------------------------------------------------------------------

    def add_batches(self, job_id: str, batches: Iterable[tuple[int, str, str]]) -> None:
        """Queue batches (seq, batch_id, body), all in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO batches (job_id, seq, batch_id, body) VALUES (?,?,?,?)",
                                     ((job_id, *batch) for batch in batches))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def clear_batches(self, job_id: str) -> None:
        """Forget a job's batches (to enqueue it again from the start)."""
        self._write(("DELETE FROM batches WHERE job_id = ?", (job_id,)))

    def requeue_running(self, job_id: str) -> int:
        """Batches left running by an engine that died go back to the queue (that attempt was not theirs to lose);
        how many."""
        return self._write(("UPDATE batches SET state = 'queued', attempts = attempts - 1 "
                            "WHERE job_id = ? AND state = 'running'", (job_id,)))[0]

    def claim(self, job_id: str) -> Claimed | None:
        """The next queued batch, now running (one more attempt); None when none is queued."""
        with self._lock:
            row = self._db.execute("UPDATE batches SET state = 'running', attempts = attempts + 1 WHERE rowid = ("
                                   "SELECT rowid FROM batches WHERE job_id = ? AND state = 'queued' ORDER BY seq "
                                   "LIMIT 1) RETURNING seq, batch_id, body, attempts", (job_id,)).fetchone()
        return None if row is None else Claimed(*row)

    def succeeded(self, job_id: str, seq: int, seconds: float) -> None:
        """A batch's predict returned."""
        self._write(("UPDATE batches SET state = 'succeeded', error = NULL WHERE job_id = ? AND seq = ?",
                     (job_id, seq)),
                    ("UPDATE jobs SET succeeded = succeeded + 1, seconds = seconds + ? WHERE job_id = ?",
                     (seconds, job_id)))

    def failed(self, job_id: str, seq: int, error: str, retry: bool, counted: bool = True) -> None:
        """An attempt at a batch failed: queue it again (`retry`) or keep it as failed; `counted` adds it to the
        job's failed attempts (predict raised; a worker lost mid-batch is not a failed predict)."""
        self._write(("UPDATE batches SET state = ?, error = ? WHERE job_id = ? AND seq = ?",
                     ("queued" if retry else "failed", error, job_id, seq)),
                    ("UPDATE jobs SET failed = failed + ? WHERE job_id = ?", (int(counted), job_id)))

    def counts(self, job_id: str) -> dict[str, int]:
        """How many of the job's batches are in each state."""
        return dict(self._read("SELECT state, count(*) FROM batches WHERE job_id = ? GROUP BY state", job_id))

    def failed_batches(self, job_id: str) -> list[dict[str, Any]]:
        """The batches kept as failed: id, attempts, last error and items."""
        return [{"batch_id": batch_id, "attempts": attempts, "error": error, "items": json.loads(body)}
                for batch_id, attempts, error, body in self._read(
                    "SELECT batch_id, attempts, error, body FROM batches WHERE job_id = ? AND state = 'failed' "
                    "ORDER BY seq", job_id)]


_JOB_COLUMNS = ("job_id, api_name, spec, submission, api_spec, status, end_time, total_batch_count, succeeded, "
                "failed, seconds")


def _job(row: tuple[Any, ...]) -> JobRow:
    job_id, api_name, spec, submission, api_spec, *rest = row
    return JobRow(job_id, api_name, json.loads(spec), json.loads(submission), json.loads(api_spec), *rest)


def _lock(state_dir: Path) -> int:
    """Hold the directory's lock file for this process's life; EngineError when another engine holds it."""
    path = state_dir / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise EngineError(f"the state directory {state_dir} is in use by another engine (pid {holder}); give each "
                          "engine its own --state-dir (ENGINE_STATE_DIR)") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd
