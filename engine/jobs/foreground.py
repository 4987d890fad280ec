"""`engine run`: one job of a BatchAPI in the foreground, without a server and without binding a port.

    engine run PROJECT_DIR --api NAME --items FILE [-f CONFIG] [--batch-size N] [--workers N] [--config JSON]
               [--timeout SECONDS] [--max-receive-count N] [--state-dir DIR]

FILE is a stream of JSON values (JSON lines; each value one item), read as Cortex's `delimited_files` source reads
one: streamed, so memory stays flat however many items it holds. The job runs as `engine serve` runs one (the same
supervisor, worker processes, retries and SQLite state); progress goes to stderr (a bar redrawn in place on a
terminal, a plain line every few seconds otherwise), then the final status, batch_metrics and where the job's log
is go to stdout. Exit status: 0 when every batch succeeded (status_succeeded), 130 after Ctrl+C (143 after SIGTERM:
the job is stopped, status_stopped, its workers killed), 1 otherwise; when the job did not succeed, the end of its
log (the predictor's tracebacks) is printed to stderr too. -f names the configuration file (--config is the job's).

Without --state-dir the job's state lives in a temporary directory removed at exit, and its log (and dead letters,
with --max-receive-count) are first moved to the system's temporary directory as engine-run-<job_id>.log (and
.dead_letter.jsonl). With --state-dir everything is kept there; a job that an `engine run` killed outright (kill -9)
left in progress in that directory is resumed by the next `engine run` given the same directory and API, instead of a
new job (its finished batches are not run again).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from engine import plugins, tempdirs
from engine.errors import ConfigError, EngineError
from engine.jobs.launchers import ProcessLauncher
from engine.jobs.service import JobService
from engine.jobs.sources import check_paths
from engine.jobs.store import ENQUEUING, SUCCEEDED, JobRow, JobStore
from engine.jobs.submission import SCHEMA_SUFFIX, JobError, Submission, parse_submission
from engine.project.config import read_config
from engine.project.files import remove_view
from engine.project.loading import load_project
from engine.project.validate import find_config

log = logging.getLogger("engine")

TICK = 0.2  # seconds between looks at the job (a redraw of the bar on a terminal; a signal is acted on)
PLAIN_INTERVAL = 5.0  # seconds between plain progress lines
BAR_WIDTH = 30
LOG_TAIL_LINES = 30  # lines of the job's log printed when the job did not succeed
GLOB_SPECIAL = "\\?*[]{},"
FLAGS = {"workers": "--workers", "timeout": "--timeout", "delimited_files: batch_size": "--batch-size",
         "sqs_dead_letter_queue: max_receive_count": "--max-receive-count"}  # submission keys → engine run's flags


@dataclass(frozen=True)
class RunOptions:
    """What `engine run` was given."""

    project_dir: str
    config_file: str | None
    api: str
    items: str
    batch_size: int = 1
    workers: int = 1
    config: dict[str, Any] | None = None
    timeout: int | None = None
    max_receive_count: int | None = None
    state_dir: str | None = None


def run_job(options: RunOptions, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the job to its end and report it; the exit status (EngineError, one paragraph, for a start-up problem)."""
    out, err = out or sys.stdout, err or sys.stderr
    items = _items_file(options.items)
    submission = build_submission(options, items)
    pm = plugins.make_plugin_manager()
    loaded = load_project(options.project_dir, options.config_file, pm=pm, apis=[_batch_api_name(options)])
    for warning in loaded.warnings:
        log.warning("%s", warning)
    api = loaded.batch_apis[0]
    _checked(lambda: check_paths(submission.source, loaded.project.root))
    temporary = options.state_dir is None
    state_dir = tempdirs.make("run") if options.state_dir is None else Path(options.state_dir).resolve()
    try:
        store = JobStore(state_dir)
    except BaseException:
        if temporary:
            tempdirs.remove(state_dir)
        raise
    service = JobService(api, store, ProcessLauncher())
    view = loaded.project.create_view()
    progress = Progress(err)
    with _quiet_job_log(progress), _Signals() as signals:
        try:
            service.start(view, loaded.project.root, loaded.environment_for([api]), plugins.portable(pm))
            resumed = sorted(service.runs)  # job ids sort newest first
            if resumed:
                job_id = resumed[0]
                print(f"resuming job {job_id}, left in progress in {state_dir} by an engine that stopped (its own "
                      "submission is used; --items and the job options given now are not)", file=err)
            else:
                job_id = service.submit(submission)["job_id"]
            _follow(service, job_id, progress, signals)
            return _report(service, job_id, signals.code, temporary, out, err)
        finally:
            service.close()
            store.close()
            remove_view(view)
            if temporary:
                tempdirs.remove(state_dir)


def build_submission(options: RunOptions, items: Path) -> Submission:
    """The job's submission (delimited_files over the items file alone), checked as the job API checks one."""
    source = {"s3_paths": [str(items)], "includes": [_glob_literal(str(items))], "batch_size": options.batch_size}
    body: dict[str, Any] = {"workers": options.workers, "delimited_files": source}
    if options.config is not None:
        body["config"] = options.config
    if options.timeout is not None:
        body["timeout"] = options.timeout
    if options.max_receive_count is not None:
        body["sqs_dead_letter_queue"] = {"arn": "local", "max_receive_count": options.max_receive_count}
    submission: Submission = _checked(lambda: parse_submission(json.dumps(body).encode()))
    return submission


def _checked(function: Callable[[], Any]) -> Any:
    """function(), with a JobError (Cortex's words, naming a submission's keys) turned into a start-up EngineError
    that names the flags."""
    try:
        return function()
    except JobError as error:
        message = error.message.removesuffix(SCHEMA_SUFFIX)
        for key, flag in FLAGS.items():
            if message.startswith(key + ": "):
                message = flag + message.removeprefix(key)
        raise EngineError(message) from None


def _items_file(name: str) -> Path:
    """The items file, absolute; EngineError when it is not a readable file."""
    path = Path(os.path.abspath(name))
    try:
        with path.open("rb"):
            pass
        if not path.is_file():
            raise IsADirectoryError(f"{path} is not a file")
    except OSError as error:
        raise EngineError(f"--items {name}: cannot read the items file ({error.strerror or error}); give a file of "
                          "JSON values, one item per value (JSON lines)") from None
    return path


def _glob_literal(text: str) -> str:
    """A glob that matches exactly `text` (the listing of a local path is by prefix: items.jsonl.bak would match)."""
    return "".join("\\" + char if char in GLOB_SPECIAL else char for char in text)


def _batch_api_name(options: RunOptions) -> str:
    """The --api name, checked against the configuration file: a BatchAPI of it; ConfigError otherwise."""
    config_file = find_config(options.project_dir, options.config_file)
    config = read_config(config_file)
    names = [api.name for api in config.batch_apis]
    if options.api in names:
        return options.api
    others = {api.name: "a RealtimeAPI" for api in config.apis}
    others.update({splitter.name: "a TrafficSplitter" for splitter in config.splitters})
    what = f"'{options.api}' is {others[options.api]}, not a BatchAPI" if options.api in others else \
        f"there is no api named '{options.api}'"
    there = f"the BatchAPIs there are: {', '.join(names)}" if names else "it defines no BatchAPI (kind: BatchAPI)"
    raise ConfigError(f"{config_file}: {what}; engine run runs a job of a BatchAPI, and {there}")


def _follow(service: JobService, job_id: str, progress: Progress, signals: _Signals) -> None:
    """Wait for the job's end, showing progress; a signal (Ctrl+C) stops the job, which then ends."""
    run, store = service.runs[job_id], service.store
    stopping = False
    while True:
        run.thread.join(TICK)
        if signals.code and not stopping:
            stopping = True
            progress.clear()
            print(f"stopping job {job_id} ({signal.Signals(signals.code - 128).name})", file=progress.stream)
            with contextlib.suppress(JobError):  # it has ended meanwhile
                service.stop(job_id)
        final = not run.thread.is_alive()
        job = store.job(job_id, service.api.name)
        progress.observe(job, lambda: store.counts(job_id))
        if final or progress.due():
            progress.show(job, store.counts(job_id), final)
        if final:
            return


def _report(service: JobService, job_id: str, code: int, temporary: bool, out: TextIO, err: TextIO) -> int:
    """Print the final status, batch_metrics and where the log is; the exit status."""
    store, api_name = service.store, service.api.name
    job = store.job(job_id, api_name)
    assert job is not None, "the job was just run"
    status = service.job_status(job)
    jobs_dir = store.state_dir / "jobs" / api_name
    files = {"log": jobs_dir / f"{job_id}.log", "dead letters": jobs_dir / f"{job_id}.dead_letter.jsonl"}
    if temporary:
        files = {what: _keep(path) for what, path in files.items() if path.exists()}
    print(f"job {job_id} ({api_name} api): {status['status']}", file=out)
    print(f"batch_metrics: {json.dumps(status['batch_metrics'])}", file=out)
    for what, path in files.items():
        if path.exists():
            print(f"{what}: {path}", file=out)
    if status["status"] != SUCCEEDED and not code and "log" in files:
        lines = files["log"].read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        print("the job's log ends with:\n" + "\n".join(f"  {line}" for line in lines), file=err)
    if code:
        return code  # the job was stopped by a signal: 128 + its number, as a shell reports it
    return 0 if status["status"] == SUCCEEDED else 1


def _keep(path: Path) -> Path:
    """Move a job file out of the temporary state directory, to the system's temporary directory."""
    kept = Path(tempfile.gettempdir()) / f"engine-run-{path.name}"
    shutil.move(path, kept)
    return kept


class _Signals:
    """While entered, SIGINT and SIGTERM are noted (code: 128 + the first one's number) instead of ending the process:
    the job is then stopped, its workers killed, and the state cleaned up."""

    def __init__(self) -> None:
        self.code = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._note) for signum in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.code = self.code or 128 + signum


@contextlib.contextmanager
def _quiet_job_log(progress: Progress) -> Iterator[None]:
    """The supervisor's info lines go to the job's log only (the progress says it); warnings and errors still reach
    the terminal, and clear the bar first."""
    jobs_log = logging.getLogger("engine.jobs")
    level = jobs_log.level
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        jobs_log.setLevel(logging.WARNING)
    clear = _ClearBar(progress)
    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(clear)
    try:
        yield
    finally:
        jobs_log.setLevel(level)
        for handler in handlers:
            handler.removeFilter(clear)


class _ClearBar(logging.Filter):
    """Clears the progress bar before a log line is written below it."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self.progress.clear()
        return True


class Progress:
    """The job's progress on `stream`: a bar redrawn in place on a terminal, else a plain line every few seconds."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._drawn = False  # a bar is on the terminal's current line
        self._lock = threading.Lock()
        self._started: tuple[float, int] | None = None  # when batches began to be done (time, batches done then)
        self._last_plain = -PLAIN_INTERVAL

    def due(self) -> bool:
        """True when the progress should be shown now (at every tick on a terminal)."""
        return self.tty or time.monotonic() - self._last_plain >= PLAIN_INTERVAL

    def observe(self, job: JobRow | None, counts: Callable[[], dict[str, int]]) -> None:
        """Note when the job began running (the rate counts from then); called at every tick."""
        if self._started is None and job is not None and job.status != ENQUEUING:
            self._started = (time.monotonic(), _done(counts()))

    def show(self, job: JobRow | None, counts: dict[str, int], final: bool) -> None:
        """Show where the job is: its batches by state (the store's counts)."""
        done, failed = _done(counts), counts.get("failed", 0)
        now = time.monotonic()
        if job is None or job.status == ENQUEUING:
            line = f"enqueuing: {sum(counts.values())} batches so far"
        else:
            total = job.total_batch_count
            rate = self._rate(now, done)
            left = "" if final or not rate or done >= total else f", about {_duration((total - done) / rate)} left"
            speed = "" if rate is None else f", {rate:.1f} batches/s"
            line = f"{done}/{total} batches done, {failed} failed{speed}{left}"
            if self.tty:
                filled = BAR_WIDTH * done // total if total else BAR_WIDTH
                line = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {line}"
        with self._lock:
            if self.tty:
                self.stream.write(f"\r{line}\033[K" + ("\n" if final else ""))
                self._drawn = not final
            else:
                self.stream.write(line + "\n")
            self._last_plain = now
            self.stream.flush()

    def clear(self) -> None:
        """Erase the bar (a line is about to be written): it is drawn again at the next show."""
        with self._lock:
            if self._drawn:
                self.stream.write("\r\033[K")
                self.stream.flush()
                self._drawn = False

    def _rate(self, now: float, done: int) -> float | None:
        """Batches per second since batches began to be done (None before any could be measured)."""
        if self._started is None:
            return None
        since, first = self._started
        return (done - first) / (now - since) if now > since and done > first else None


def _done(counts: dict[str, int]) -> int:
    """Batches that are done: succeeded, or kept as failed (a batch to be retried is not done)."""
    return counts.get("succeeded", 0) + counts.get("failed", 0)


def _duration(seconds: float) -> str:
    """A rough duration: 5 s, 4 min, 1.5 h."""
    if seconds < 90:
        return f"{math.ceil(seconds)} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
