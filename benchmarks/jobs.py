"""BatchAPI jobs: what a batch costs beyond its predict, how a job scales with workers, and memory over a long job.

    .venv/bin/python benchmarks/jobs.py [--batches 2000] [--rounds 3] [--items 100000] [--cpu-batches 600]

One `engine serve` per measurement (its own --state-dir), jobs submitted over HTTP, times taken from the job's own
status (start_time to end_time, recorded by the server):

1. Per-batch overhead: jobs of 20 and of 20 + --batches batches of 10 numbers (workers: 1, a predict that sums its
   payload); the difference divided by --batches is the time per batch in a running job (start-up cancels out).
   Against it, the same batches (JSON texts) decoded and handed to predict in a loop in this process. Goal: the
   overhead, job minus loop, at most 1 ms per batch.
2. Workers: a CPU-bound predict (about 12 ms of pure-Python work per batch), one job of --cpu-batches batches with
   workers 1 and with workers 2, whole (the workers' start-up included). Goal: workers 2 at least 1.8x as fast.
3. Memory: --items tiny items (and a tenth of them) in batches of 10 from an NDJSON file (delimited_files), workers:
   1; the peak resident memory of the server and of the worker, sampled every 50 ms. Goal: flat (the long job's
   peaks within a few MiB of the short one's).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
from suite import REPO, free_port, memory_mb

PREDICTOR = """
class PythonPredictor:
    def __init__(self, config, job_spec):
        self.spin = config.get("spin", 0)

    def predict(self, payload, batch_id):
        total = sum(payload)
        for _ in range(self.spin):  # CPU-bound work, when asked for
            total = (total * 31 + 7) % 1000003
        return total
"""
CONFIG = """
- name: numbers
  kind: BatchAPI
  predictor: {type: python, path: predictor.py}
"""
BATCH = 10
SPIN_PER_BATCH = 200_000  # about 12 ms of pure Python on this machine's cores


class Engine:
    """engine serve on a fresh state directory."""

    def __init__(self, project: Path) -> None:
        self.port = free_port()
        self.state = Path(tempfile.mkdtemp(prefix="engine-jobs-state-"))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", str(project), "--port", str(self.port), "--state-dir",
             str(self.state), "--log-level", "warning"], cwd=REPO, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}/numbers"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("engine serve did not start")
            time.sleep(0.1)

    def run(self, submission: dict) -> dict:
        """Submit a job and wait for its final status."""
        job_id = httpx.post(self.url, json=submission).json()["job_id"]
        while True:
            status = httpx.get(self.url, params={"jobID": job_id}).json()["job_status"]
            if status["status"] not in ("status_enqueuing", "status_running"):
                if status["status"] != "status_succeeded":
                    raise RuntimeError(f"job ended {status['status']}")
                return status
            time.sleep(0.25)  # the job's times are the server's own: polling faster only takes CPU from the workers

    def pids(self) -> list[int]:
        found = subprocess.run(["pgrep", "-s", str(self.process.pid)], capture_output=True, text=True).stdout.split()
        return [int(pid) for pid in found]

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(30)


def seconds(status: dict) -> float:
    """A job's duration as the server recorded it."""
    def parse(text: str) -> float:
        whole, _, fraction = text.rstrip("Z").partition(".")
        return datetime.fromisoformat(whole + "+00:00").timestamp() + float(f"0.{fraction or 0}")
    return parse(status["end_time"]) - parse(status["start_time"])


def items_job(batches: int, workers: int = 1, spin: int = 0) -> dict:
    items = list(range(batches * BATCH))
    return {"workers": workers, "item_list": {"items": items, "batch_size": BATCH}, "config": {"spin": spin}}


def per_batch(project: Path, batches: int, rounds: int, workers: int = 1, spin: int = 0) -> float:
    """Seconds per batch in a running job: (long job − short job) / extra batches, best of `rounds`."""
    engine = Engine(project)
    try:
        engine.run(items_job(2, workers, spin))  # warm the page cache and the imports
        found = []
        for _ in range(rounds):
            short = seconds(engine.run(items_job(20, workers, spin)))
            long = seconds(engine.run(items_job(20 + batches, workers, spin)))
            found.append((long - short) / batches)
        return min(found)
    finally:
        engine.stop()


def whole_job(project: Path, batches: int, rounds: int, workers: int) -> float:
    """Seconds for a whole CPU-bound job of `batches` batches (best of `rounds`), as the server recorded it."""
    engine = Engine(project)
    try:
        engine.run(items_job(2, workers, SPIN_PER_BATCH))
        return min(seconds(engine.run(items_job(batches, workers, SPIN_PER_BATCH))) for _ in range(rounds))
    finally:
        engine.stop()


def loop_per_batch(batches: int, rounds: int) -> float:
    """The same batches' JSON decoded and handed to predict in a loop, in this process: seconds per batch."""
    namespace: dict = {}
    exec(PREDICTOR, namespace)
    predictor = namespace["PythonPredictor"]({}, {})
    bodies = [json.dumps(list(range(start, start + BATCH))) for start in range(0, batches * BATCH, BATCH)]
    found = []
    for _ in range(rounds):
        started = time.perf_counter()
        for index, body in enumerate(bodies):
            predictor.predict(payload=json.loads(body), batch_id=str(index))
        found.append((time.perf_counter() - started) / batches)
    return min(found)


def peak_memory(project: Path, items: int, directory: Path) -> tuple[float, float]:
    """Peak RSS (MiB) of the server and of the worker while `items` items run in batches of 10."""
    data = directory / f"items-{items}.ndjson"
    data.write_text("".join(f"{index}\n" for index in range(items)))
    engine = Engine(project)
    peaks: dict[str, float] = {"server": 0.0, "worker": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            for pid in engine.pids():
                role = "server" if pid == engine.process.pid else "worker"
                peaks[role] = max(peaks[role], memory_mb([pid]))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        engine.run({"workers": 1, "delimited_files": {"s3_paths": [str(data)], "batch_size": BATCH}})
    finally:
        done.set()
        sampler.join()
        engine.stop()
    return peaks["server"], peaks["worker"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=2000, help="extra batches of the long job (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each, the best kept (default 3)")
    parser.add_argument("--items", type=int, default=100_000, help="items of the memory job (default 100000)")
    parser.add_argument("--cpu-batches", type=int, default=600, help="batches of the CPU-bound job (default 600)")
    args = parser.parse_args()
    project = Path(tempfile.mkdtemp(prefix="engine-jobs-bench-"))
    (project / "predictor.py").write_text(PREDICTOR)
    (project / "cortex.yaml").write_text(CONFIG)

    job = per_batch(project, args.batches, args.rounds)
    loop = loop_per_batch(args.batches, args.rounds)
    print(f"per batch, in a job (workers 1):   {job * 1e3:8.3f} ms")
    print(f"per batch, predict in a loop:      {loop * 1e3:8.3f} ms")
    print(f"overhead per batch:                {(job - loop) * 1e3:8.3f} ms   (goal <= 1 ms)")

    one = whole_job(project, args.cpu_batches, args.rounds, workers=1)
    two = whole_job(project, args.cpu_batches, args.rounds, workers=2)
    print(f"CPU-bound job of {args.cpu_batches} batches, workers 1: {one:6.2f} s")
    print(f"CPU-bound job of {args.cpu_batches} batches, workers 2: {two:6.2f} s")
    print(f"workers 2 / workers 1 throughput:  {one / two:8.2f}x   (goal >= 1.8x)")

    with tempfile.TemporaryDirectory() as directory:
        small = peak_memory(project, args.items // 10, Path(directory))
        large = peak_memory(project, args.items, Path(directory))
    print(f"peak RSS, {args.items // 10} items: server {small[0]:.1f} MiB, worker {small[1]:.1f} MiB")
    print(f"peak RSS, {args.items} items: server {large[0]:.1f} MiB, worker {large[1]:.1f} MiB")
    print(f"growth for 10x the items: server {large[0] - small[0]:+.1f} MiB ({large[0] / small[0]:.3f}x), "
          f"worker {large[1] - small[1]:+.1f} MiB ({large[1] / small[1]:.3f}x)   (goal: flat)")


if __name__ == "__main__":
    main()
