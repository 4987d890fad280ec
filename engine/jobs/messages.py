"""What a job's supervisor and its workers say to each other: one worker runs one batch at a time.

A worker's life: Start → Ready (or StartFailed, and it exits 1); then RunBatch → BatchDone, as many times as there
are batches for it; Complete → Completed on the one worker chosen once every batch has settled; Stop, and it exits
0. The supervisor learns that a worker has gone (its process exited, its actor died) as Exited.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.project.batch import BatchApi


# --- supervisor → worker -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """Build the predictor: the API, the plugins (engine.plugins.portable), the project view, the job."""

    api: BatchApi
    plugins: list[tuple[str, str | bytes]]
    view: Path
    project_root: Path
    job_spec: dict[str, Any]  # the JobSpec given to __init__
    config: dict[str, Any]  # predictor.config with the job's config merged over it
    environment: dict[str, str]  # the variables the predictor runs with (predictor.env, then .env)
    index: int


@dataclass(frozen=True, slots=True)
class RunBatch:
    """Call predict with one batch: `body` is its JSON array text."""

    batch_id: str
    body: str


@dataclass(frozen=True, slots=True)
class Complete:
    """Every batch has settled: call on_job_complete (if the class has one) with the job's outcome."""

    batch_metrics: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Stop:
    """Exit cleanly (status 0)."""


# --- worker → supervisor -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """__init__ has returned: send batches."""


@dataclass(frozen=True, slots=True)
class StartFailed:
    """The predictor could not be built; `details` is what the user must read (a traceback or an error)."""

    details: str


@dataclass(frozen=True, slots=True)
class BatchDone:
    """predict has returned (error None) or raised (error: its traceback) after `seconds`."""

    batch_id: str
    seconds: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Completed:
    """on_job_complete has returned, or raised (error: its traceback), or the class has none."""

    error: str | None = None


@dataclass(frozen=True, slots=True)
class Exited:
    """The worker has gone: its exit code (negative: killed by that signal; None: unknown, e.g. a lost actor)."""

    code: int | None
    reason: str = ""


ToWorker = Start | RunBatch | Complete | Stop
FromWorker = Ready | StartFailed | BatchDone | Completed | Exited
