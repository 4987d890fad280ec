"""Model repository: how long a new version takes to be served, and memory before and after an LRU eviction.

    .venv/bin/python benchmarks/models.py [--poll 10] [--size-mb 200]

1. Serves a python predictor over a versioned model directory with the default poll interval, moves a new version
   directory in (as a deploy script would, with a rename) and times until "latest" answers with it; five times.
2. Serves a models.dir of two models of --size-mb each with cache_size 1 and prints the server's resident memory at
   start, with model a loaded, and after model b was loaded (a evicted).
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PREDICTOR = """
import os


class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client

    def load_model(self, model_path):
        with open(os.path.join(model_path, "model.bin"), "rb") as model_file:
            return bytearray(model_file.read())  # a model of the file's size in memory

    def predict(self, query_params):
        model = self.client.get_model(query_params.get("model"), query_params.get("version"))
        return {"first_byte": model[0], "size": len(model)}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_version(directory: Path, marker: int, size: int) -> None:
    directory.mkdir(parents=True)
    (directory / "model.bin").write_bytes(bytes([marker]) * size)


def serve(project: Path, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "engine", "--log-level", "warning", "serve", str(project),
                                "--port", str(port), *args])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.05)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def time_to_serve(root: Path, poll: float, tries: int) -> list[float]:
    project = root / "reload"
    (project / "models").mkdir(parents=True)
    (project / "predictor.py").write_text(PREDICTOR)
    (project / "cortex.yaml").write_text("- name: m\n  kind: RealtimeAPI\n  predictor:\n    type: python\n"
                                         "    path: predictor.py\n    model_path: models/\n")
    write_version(project / "models" / "1", 1, 1024)
    process, url = serve(project, "--model-poll-interval", str(poll))
    delays = []
    try:
        for version in range(2, 2 + tries):
            time.sleep(random.uniform(0, poll))  # land at a random point of the poll cycle
            staging = root / f"staging-{version}"
            write_version(staging, version, 1024)
            moved = time.monotonic()
            staging.rename(project / "models" / str(version))
            while httpx.post(url + "/m").json()["first_byte"] != version:
                time.sleep(0.02)
            delays.append(time.monotonic() - moved)
            print(f"  version {version} served {delays[-1]:.2f} s after it was moved in")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    return delays


def eviction_memory(root: Path, size_mb: int) -> tuple[float, float, float]:
    project = root / "cache"
    (project / "models").mkdir(parents=True)
    (project / "predictor.py").write_text(PREDICTOR)
    (project / "cortex.yaml").write_text(
        "- name: m\n  kind: RealtimeAPI\n  predictor:\n    type: python\n    path: predictor.py\n"
        "    models:\n      dir: models/\n      cache_size: 1\n      disk_cache_size: 2\n")
    for marker, name in ((1, "a"), (2, "b")):
        write_version(project / "models" / name, marker, size_mb * 2**20)
    process, url = serve(project)
    try:
        start = rss_mb(process.pid)
        assert httpx.post(url + "/m", params={"model": "a"}, timeout=60).json()["first_byte"] == 1
        with_a = rss_mb(process.pid)
        assert httpx.post(url + "/m", params={"model": "b"}, timeout=60).json()["first_byte"] == 2
        after = rss_mb(process.pid)
        loaded = [name for name, model in httpx.get(url + "/m").json()["model_metadata"].items() if model["loaded"]]
        print(f"  loaded after both requests: {loaded}")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    return start, with_a, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--poll", type=float, default=10.0, help="--model-poll-interval (default 10, engine's default)")
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        print(f"new versions with a {args.poll:g} s poll interval:")
        delays = time_to_serve(root, args.poll, args.tries)
        print(f"  median {statistics.median(delays):.2f} s, max {max(delays):.2f} s "
              f"(bound: poll interval + settle time of {min(1.0, args.poll / 2):g} s)")
        print(f"LRU with cache_size 1 and two models of {args.size_mb} MB:")
        start, with_a, after = eviction_memory(root, args.size_mb)
        print(json.dumps({"rss_mb_at_start": round(start), "rss_mb_with_a": round(with_a),
                          "rss_mb_after_b_evicted_a": round(after)}))


if __name__ == "__main__":
    main()
