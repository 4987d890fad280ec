"""engine serve --reload: the time from saving predictor.py to the first response from the new code, and failed
requests while it reloads.

    .venv/bin/python benchmarks/reload.py [--edits 20]

`engine serve --reload` (default settings, access log on) serves a copy of examples/greeter in a temporary
directory, its output in a file beside the copy. Each of --edits edits rewrites predictor.py in place so that its
answer carries the edit's number; the time runs from the write (after fsync) to the first response carrying that
number, seen by a client polling as fast as it can on its own thread. A second client sends requests one after
another throughout; every answer of both must be a 200 (failures are counted). The next edit starts once the server
has said that the previous reload is done. Goal: the worst edit under 1 s, no failure.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from suite import REPO, free_port

ANSWER = '"signature": os.environ["GREETER_SIGNATURE"]}'  # the end of the greeter's answer, where "edit" goes
GOAL_S = 1.0


class Clients:
    """The poller, which notes when each edit's answer first arrives, and the loop, which only counts."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: dict[int, float] = {}  # edit → perf_counter() when its first answer arrived
        self.arrived = threading.Condition()
        self.requests = 0
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._send, args=(poller,)) for poller in (True, False)]

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def _send(self, poller: bool) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stopping.is_set():
                try:
                    response = client.post(self.url, json={"name": "bench"})
                    received = time.perf_counter()
                    failure = None if response.status_code == 200 else f"{response.status_code} {response.text}"
                except httpx.HTTPError as error:
                    received, failure = time.perf_counter(), f"{type(error).__name__}: {error}"
                with self.arrived:
                    self.requests += 1
                    if failure is not None:
                        self.failures.append(failure)
                    elif poller:
                        edit = response.json().get("edit", 0)
                        if edit not in self.seen:
                            self.seen[edit] = received
                            self.arrived.notify_all()

    def wait(self, edit: int, timeout: float = 60) -> float:
        """When the answer of `edit` first arrived."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: edit in self.seen, timeout):
                raise RuntimeError(f"edit {edit} was never served")
            return self.seen[edit]


def write(path: Path, text: str) -> float:
    """Rewrite the file in place; the time once it is on disk."""
    with open(path, "w") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    return time.perf_counter()


def wait_for_line(log: Path, text: str, count: int, timeout: float = 60) -> None:
    """Wait until the server's output holds `text` `count` times."""
    deadline = time.monotonic() + timeout
    while log.read_text().count(text) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server never said {text!r} {count} times:\n{log.read_text()}")
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=20, help="edits of predictor.py (default 20)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="engine-bench-reload-"))
    project = root / "greeter"
    shutil.copytree(REPO / "examples" / "greeter", project)
    source = (project / "predictor.py").read_text()
    assert ANSWER in source, "examples/greeter/predictor.py changed: update ANSWER"
    log = root / "server.log"  # outside the project: a file written in it would be a change
    port = free_port()
    with open(log, "wb") as output:
        server = subprocess.Popen([sys.executable, "-m", "engine", "serve", str(project), "--reload", "--port",
                                   str(port)], stdout=output, stderr=subprocess.STDOUT)
    times = []
    try:
        wait_for_line(log, "--reload: watching", 1)
        with Clients(f"http://127.0.0.1:{port}/greeter") as clients:
            clients.wait(0)
            for edit in range(1, args.edits + 1):
                saved = write(project / "predictor.py", source.replace(ANSWER, ANSWER[:-1] + f', "edit": {edit}}}'))
                times.append(clients.wait(edit) - saved)
                wait_for_line(log, "reload: rebuilt api 'greeter'", edit)
        requests, failures = clients.requests, clients.failures
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        shutil.rmtree(root, ignore_errors=True)
    print(f"engine serve --reload, examples/greeter, {args.edits} edits of predictor.py: save (after fsync) to the "
          "first response from the new code")
    print("  each (ms): " + " ".join(f"{seconds * 1e3:.0f}" for seconds in times))
    median, worst = statistics.median(times), max(times)
    print(f"  median {median * 1e3:.1f} ms, worst {worst * 1e3:.1f} ms (goal: under {GOAL_S * 1e3:.0f} ms) "
          f"{'ok' if worst < GOAL_S else 'MISSED'}")
    print(f"  requests during the run: {requests}, failed: {len(failures)} (goal: 0) "
          f"{'ok' if not failures else 'MISSED'}" + "".join(f"\n    {failure}" for failure in failures[:5]))
    if failures or worst >= GOAL_S:
        sys.exit(1)


if __name__ == "__main__":
    main()
