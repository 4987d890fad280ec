"""What serving on Ray costs: the echo workload on `engine serve`, on `engine serve --on ray` (a local Ray instance,
one replica) and on Ray Serve's own floor (ray_floor.py), side by side at 1 and 32 connections, with each one's
memory (the proportional set size of every process it runs, Ray's included).

    .venv/bin/python plugins/ray/benchmarks/overhead.py [--duration 10] [--rounds 1]

It runs itself inside a loopback-only network namespace (Ray probes cloud-metadata addresses when it starts), with
usage stats off and HOME a fresh folder; servers on core 0 and wrk on core 1, measured by benchmarks/suite.py's wrk.
Needs wrk (apt-get install wrk) and two cores. docs/scaling.md has the figures.
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
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))
from benchmarks.suite import ECHO_BODY, Server, wrk  # noqa: E402

INSIDE = "ENGINE_RAY_BENCH_NETNS"  # set once the script runs in its namespace
CONNECTIONS = (1, 32)
# One replica and no autoscaling, so that the Ray path measures routing, not scaling.
ECHO_CONFIG = """- name: echo
  kind: RealtimeAPI
  predictor:
    type: python
    path: predictor.py
  autoscaling:
    min_replicas: 1
    max_replicas: 1
"""


def enter_namespace() -> None:
    """Run this script again in a loopback-only network namespace, and exit with its code."""
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    home = Path(tempfile.mkdtemp(prefix="engine-ray-bench-"))
    (home / "ray_bootstrap_config.yaml").touch()
    env = {**os.environ, INSIDE: "1", "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    try:
        code = subprocess.run([*unshare, sys.executable, __file__, *sys.argv[1:]], env=env, check=False).returncode
    finally:
        shutil.rmtree(home, ignore_errors=True)
    sys.exit(code)


def namespace_pids() -> list[int]:
    """Every process in this network namespace but this one."""
    mine = os.readlink("/proc/self/ns/net")
    found = []
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            if pid != os.getpid() and os.readlink(f"/proc/{pid}/ns/net") == mine:
                found.append(pid)
        except OSError:
            continue
    return found


def pss_mib(pids: list[int]) -> float:
    """The processes' proportional set size, summed (shared pages divided among their sharers)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def stop(server: Server) -> None:
    """SIGTERM to the server's own process (engine deletes its applications and stops Ray), then whatever is left."""
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(120)
    except subprocess.TimeoutExpired:
        print(f"  {server.name} did not stop within 120 s", flush=True)
    for pid in namespace_pids():
        if pid != server.process.pid:
            print(f"  left running after {server.name}: pid {pid}, killed", flush=True)
            os.kill(pid, signal.SIGKILL)


def servers(project: Path) -> list[Server]:
    engine = [sys.executable, "-m", "engine", "--log-level", "warning", "serve", str(project), "--port", "{port}"]
    return [Server("engine serve", engine, "/echo"),
            Server("engine serve --on ray", [*engine, "--on", "ray"], "/echo"),
            Server("Ray Serve floor", [sys.executable, str(HERE / "ray_floor.py"), "{port}"], "/echo")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--rounds", type=int, default=1, help="times each server is measured (default 1)")
    args = parser.parse_args()
    if shutil.which("wrk") is None or len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs wrk (apt-get install wrk) and two cores")
    if not os.environ.get(INSIDE):
        enter_namespace()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    project = Path(tempfile.mkdtemp(prefix="engine-ray-echo-"))
    shutil.copy(REPO / "benchmarks" / "echo" / "predictor.py", project)
    (project / "cortex.yaml").write_text(ECHO_CONFIG)
    rows: dict[tuple[str, int], list] = {}
    memory: dict[str, list[float]] = {}
    try:
        for round_number in range(args.rounds):
            for server in servers(project):
                started = time.monotonic()
                server.start(ECHO_BODY)
                print(f"round {round_number + 1} {server.name}: answering after {time.monotonic() - started:.1f} s",
                      flush=True)
                try:
                    for connections in CONNECTIONS:
                        wrk(server, ECHO_BODY, connections, min(2.0, args.duration))  # warm-up
                        result = wrk(server, ECHO_BODY, connections, args.duration)
                        rows.setdefault((server.name, connections), []).append(result)
                        print(f"  c={connections:<3} {result.rps:8.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
                              f"p99 {result.p99_ms:6.2f} ms", flush=True)
                    memory.setdefault(server.name, []).append(pss_mib(namespace_pids()))
                finally:
                    stop(server)
    finally:
        shutil.rmtree(project, ignore_errors=True)
    report(rows, memory)


def report(rows: dict[tuple[str, int], list], memory: dict[str, list[float]]) -> None:
    """The medians of the rounds, and the Ray path against engine serve."""
    def median(name: str, connections: int, field: str) -> float:
        return statistics.median(getattr(result, field) for result in rows[(name, connections)])

    print(f"\nload average at the end: {' '.join(f'{load:.1f}' for load in os.getloadavg())} on "
          f"{os.cpu_count()} cores (other work on the machine inflates every figure alike)")
    print(f"\n{'server':<24} {'conns':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'memory MiB':>10}")
    for name, connections in rows:
        print(f"{name:<24} {connections:>5} {median(name, connections, 'rps'):>8.0f} "
              f"{median(name, connections, 'p50_ms'):>7.2f} {median(name, connections, 'p99_ms'):>7.2f} "
              f"{statistics.median(memory[name]):>10.0f}")
    for connections in CONNECTIONS:
        plain, ray, floor = (median(name, connections, "p50_ms") for name in
                             ("engine serve", "engine serve --on ray", "Ray Serve floor"))
        throughput = median("engine serve --on ray", connections, "rps") / median("engine serve", connections, "rps")
        print(f"at {connections} connection(s): Ray path adds {ray - plain:.2f} ms at p50 over engine serve "
              f"({ray - floor:+.2f} ms over Ray Serve's floor); throughput {throughput:.2f}x engine serve's")


if __name__ == "__main__":
    main()
