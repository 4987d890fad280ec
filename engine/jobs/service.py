"""The jobs of one BatchAPI: submit, status, list, stop and failed batches, as Cortex's operator answered them;
jobs a previous engine left in progress resume when the service starts."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.jobs.launchers import WorkerLauncher
from engine.jobs.store import ENQUEUING, RUNNING, STOPPED, JobRow, JobStore
from engine.jobs.submission import JobError, Submission
from engine.jobs.supervisor import JobPlace, JobRun, new_job_id, rfc3339

if TYPE_CHECKING:
    from engine.project.batch import BatchApi

NOT_IN_PROGRESS = "batchapi.job_is_not_in_progress"
NOT_FOUND = "batchapi.job_not_found"


class JobService:
    """Runs and answers for the jobs of one BatchAPI."""

    def __init__(self, api: BatchApi, store: JobStore, launcher: WorkerLauncher,
                 on_batch: Callable[[str, bool, float], None] | None = None) -> None:
        self.api = api
        self.store = store
        self.launcher = launcher
        self.on_batch = on_batch
        self.runs: dict[str, JobRun] = {}
        self.place: JobPlace | None = None
        self.api_spec = _api_spec(api)

    def start(self, view: Path, project_root: Path, environment: dict[str, str],
              plugins: list[tuple[str, str | bytes]]) -> None:
        """Be ready for submissions, and resume the jobs left in progress (at least once for their unfinished
        batches, never again for a finished one)."""
        jobs_dir = self.store.state_dir / "jobs" / self.api.name
        jobs_dir.mkdir(parents=True, exist_ok=True)
        self.place = JobPlace(self.api, self.store, self.launcher, plugins, view, project_root, environment, jobs_dir)
        if self.on_batch is not None:
            self.place.on_batch = self.on_batch
        for job in self.store.in_progress(self.api.name):
            self._run(job)

    def update(self, api: BatchApi, view: Path | None) -> None:
        """Run new jobs with this configuration of the API, and the project's code from `view` (engine serve
        --reload); jobs under way keep what they started with."""
        self.api, self.api_spec = api, _api_spec(api)
        if self.place is not None:
            self.place = dataclasses.replace(self.place, api=api, view=view or self.place.view)

    def close(self) -> None:
        """Kill the workers of the running jobs, leaving the jobs in progress for the next start to resume."""
        for run in self.runs.values():
            run.halt()
        for run in self.runs.values():
            run.thread.join(timeout=30)

    def _run(self, job: JobRow) -> None:
        assert self.place is not None, "start() comes first"
        self.runs = {job_id: run for job_id, run in self.runs.items() if run.thread.is_alive()}
        run = self.runs[job.job_id] = JobRun(self.place, job)
        run.start()

    # --- the operations of the job API ----------------------------------------------------------------------------

    def submit(self, submission: Submission) -> dict[str, Any]:
        """Record the job (enqueuing) and start it; its JobSpec, total_batch_count 0 (enqueuing goes on after)."""
        now = time.time_ns()
        job_id = new_job_id(now)
        spec = {"job_id": job_id, "api_name": self.api.name, "workers": submission.workers,
                "sqs_dead_letter_queue": submission.to_json().get("sqs_dead_letter_queue"),
                "config": submission.config, "timeout": submission.timeout, "api_id": self.api_spec["id"],
                "spec_id": self.api_spec["spec_id"], "predictor_id": self.api_spec["predictor_id"],
                "sqs_url": f"sqlite://{self.store.path}#{self.api.name}-{job_id}", "total_batch_count": 0,
                "start_time": rfc3339(now)}
        self.store.create(job_id, self.api.name, spec, submission.to_json(), self.api_spec)
        job = self.store.job(job_id, self.api.name)
        assert job is not None
        self._run(job)
        return spec

    def status(self, job_id: str, base_url: str) -> dict[str, Any]:
        """Cortex's status answer: the JobStatus, the API's spec and the job's URL."""
        job = self._job(job_id)
        return {"job_status": self.job_status(job), "api_spec": job.api_spec, "endpoint": f"{base_url}/{job_id}"}

    def job_status(self, job: JobRow) -> dict[str, Any]:
        """The JobStatus of a job: its JobSpec then its progress, in Cortex's keys and order."""
        counts = self.store.counts(job.job_id) if job.in_progress else {}
        run = self.runs.get(job.job_id)
        live = run is not None and run.thread.is_alive() and job.status == RUNNING
        total = job.total_batch_count if job.status != ENQUEUING else sum(counts.values())
        return {**job.spec, "total_batch_count": total, "end_time": job.end_time, "status": job.status,
                "batches_in_queue": counts.get("queued", 0) + counts.get("running", 0),
                "batch_metrics": None if job.status == ENQUEUING else job.batch_metrics(),
                "worker_counts": run.worker_counts() if live and run is not None else None}

    def jobs(self) -> list[dict[str, Any]]:
        """Every job of the API, newest first (engine's extension: Cortex required a jobID)."""
        return [self.job_status(job) for job in self.store.jobs(self.api.name)]

    def stop(self, job_id: str) -> dict[str, Any]:
        """Stop a job in progress: status_stopped at once, its workers killed (on_job_complete does not run)."""
        self._job(job_id)
        if not self.store.end(job_id, STOPPED, rfc3339(time.time_ns())):
            raise JobError(NOT_IN_PROGRESS, f"{job_id} ({self.api.name} api): cannot stop batch job because it is "
                                            "not in progress")
        run = self.runs.get(job_id)
        if run is not None:
            run.log("request received to stop job; performing cleanup...")
            run.halt()
        return {"message": f"stopped job {job_id}"}

    def failed_batches(self, job_id: str) -> dict[str, Any]:
        """The batches kept as failed (the local dead-letter queue): id, attempts, last error, items."""
        self._job(job_id)
        return {"job_id": job_id, "failed_batches": self.store.failed_batches(job_id)}

    def _job(self, job_id: str) -> JobRow:
        job = self.store.job(job_id, self.api.name)
        if job is None:
            raise JobError(NOT_FOUND, f"failed to get job state: unable to find batch job {job_id} "
                                      f"({self.api.name} api)")
        return job


def _api_spec(api: BatchApi) -> dict[str, Any]:
    """The API's configuration as the status answer shows it, with Cortex's ids (hashes of what they name)."""
    spec: dict[str, Any] = api.model_dump(mode="json")
    predictor_id = _digest(spec["predictor"])
    spec_id = _digest({key: spec[key] for key in ("predictor", "compute")})
    return {**spec, "id": _digest(spec), "spec_id": spec_id, "predictor_id": predictor_id}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:32]
