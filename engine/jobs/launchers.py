"""Where a job's workers run: a WorkerLauncher starts one and gives back its WorkerHandle. Locally each worker is a
process (ProcessLauncher); engine-ray's launcher makes each one a Ray actor. The supervisor never knows which."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol

from engine.jobs import messages

log = logging.getLogger("engine")

Post = Callable[[int, messages.FromWorker], None]  # (worker index, what it said): how answers reach the supervisor


class WorkerHandle(Protocol):
    """One started worker."""

    def send(self, message: messages.ToWorker) -> None:
        """Hand the worker a message; its answer comes back through the launcher's `post`, never from here."""

    def kill(self) -> None:
        """End the worker at once (a running predict with it); its Exited is still posted."""


class WorkerLauncher(Protocol):
    """Starts a job's workers."""

    def launch(self, index: int, name: str, log_file: Path, post: Post) -> WorkerHandle:
        """Start worker `index` (named `name` in logs, its output appended to `log_file`); it waits for Start.
        Everything it says, and finally Exited, goes to post(index, message) from any thread."""


class ProcessLauncher:
    """Each worker a local process running engine.jobs.worker_main."""

    def launch(self, index: int, name: str, log_file: Path, post: Post) -> WorkerHandle:
        """Start the process, with a socket to it and its output in the job's log."""
        ours, theirs = socket.socketpair()
        level = logging.getLevelName(logging.getLogger().level)
        with open(log_file, "ab") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "engine.jobs.worker_main", f"--fd={theirs.fileno()}", f"--parent={os.getpid()}",
                 f"--name={name}", f"--log-level={level}"],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, pass_fds=[theirs.fileno()])
        theirs.close()
        return WorkerProcess(index, process, Connection(ours.detach()), post)


class WorkerProcess:
    """A worker process and the thread that reads what it says."""

    def __init__(self, index: int, process: subprocess.Popen[bytes], connection: Connection, post: Post) -> None:
        self.index = index
        self.process = process
        self.connection = connection
        self._post = post
        self._lock = threading.Lock()
        threading.Thread(target=self._read, name=f"job-worker-{index}", daemon=True).start()

    def send(self, message: messages.ToWorker) -> None:
        """Write the message (a worker that has gone is reported by the reader as Exited)."""
        try:
            with self._lock:
                self.connection.send(message)
        except OSError:
            pass

    def kill(self) -> None:
        """SIGKILL the process."""
        if self.process.poll() is None:
            self.process.kill()

    def _read(self) -> None:
        while True:
            try:
                message = self.connection.recv()
            except (EOFError, OSError):
                break
            self._post(self.index, message)
        self.connection.close()
        self._post(self.index, messages.Exited(self.process.wait()))
