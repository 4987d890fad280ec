"""A local job worker process: `python -m engine.jobs.worker_main --fd N --parent PID`, started by
engine.jobs.launchers; it speaks engine.jobs.messages over the inherited socket and writes its output (the
predictor's prints and logs) to the job's log file, which is its stdout and stderr."""
from __future__ import annotations

import argparse
import io
import signal
import sys
from multiprocessing.connection import Connection

from engine import tracebacks
from engine.jobs import messages
from engine.jobs.worker import JobWorker
from engine.processes import die_with


def main(argv: list[str] | None = None) -> int:
    """Entry point of a job worker process."""
    parser = argparse.ArgumentParser(prog="python -m engine.jobs.worker_main")
    parser.add_argument("--fd", type=int, required=True, help="the socket to the supervisor")
    parser.add_argument("--parent", type=int, required=True, help="the supervisor's pid")
    parser.add_argument("--name", required=True, help="the worker's name in log lines")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    die_with(args.parent)
    # Ctrl+C's SIGINT, and the SIGTERM of a stop that signals the whole group (systemd, kill -- -PGID), are the
    # supervisor's to act on: a worker ending first would end its job as a worker error instead of leaving it in
    # progress to resume. The supervisor ends its workers itself (Stop, SIGKILL), and they die with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # its --log-format is the front's, from the environment; in json mode its prints become log lines
    tracebacks.configure_logging(args.log_level, worker=args.name, capture=True)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    connection = Connection(args.fd)
    worker = JobWorker()
    while True:
        try:
            message: messages.ToWorker = connection.recv()
        except EOFError:  # the supervisor has gone
            return 1
        if isinstance(message, messages.Start):
            answer: messages.FromWorker = worker.start(message)
            connection.send(answer)
            if isinstance(answer, messages.StartFailed):
                return 1
        elif isinstance(message, messages.RunBatch):
            connection.send(worker.run(message))
        elif isinstance(message, messages.Complete):
            connection.send(completed := worker.complete(message))
            if completed.error is not None:
                return 1  # as Cortex's worker: an on_job_complete that raises ends the job as a worker error
        else:
            return 0


if __name__ == "__main__":
    sys.exit(main())
