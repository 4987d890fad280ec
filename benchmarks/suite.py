"""The benchmark suite: engine on each of its HTTP servers, against the bare-function floor of each server, KServe
and the stack Cortex shipped, side by side.

    .venv/bin/python benchmarks/suite.py [--duration 10] [--rounds 2] [--only echo|mlp] [--kserve PYTHON]
                                         [--servers WORDS] [--baseline PYTHON]

Every server runs pinned to core 0 and wrk to core 1 (taskset); each measurement is preceded by a warm-up, and the
servers alternate within one run so that they share the machine's state. Needs wrk (Debian: apt-get install wrk)
and benchmarks/requirements.txt. Prints one table per workload and the ratios against the goals.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVER_CORE, LOAD_CORE = "0", "1"
ECHO_BODY = json.dumps({"x": [float(i) / 7 for i in range(16)]})
MLP_BODY = json.dumps({"x": [float(i % 13) / 13 for i in range(1024)]})


@dataclass
class Result:
    """One wrk measurement of one server."""

    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    peak_rss_mb: float


@dataclass
class Server:
    """A server under test: how to start it and where to send requests."""

    name: str
    command: list[str]
    path: str
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    port: int = 0
    idle_rss_mb: float = 0.0  # resident memory once it has answered its first request

    def start(self, body: str) -> None:
        """Start the server and wait until it answers the workload's request with 200."""
        self.port = free_port()
        command = [part.replace("{port}", str(self.port)) for part in self.command]
        self.process = subprocess.Popen(["taskset", "-c", SERVER_CORE, *command], cwd=REPO,
                                        env={**os.environ, **self.env}, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                answer = httpx.post(self.url, content=body, headers={"Content-Type": "application/json"})
                if answer.status_code == 200:
                    self.idle_rss_mb = memory_mb(self.pids())
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start: {command}")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def pids(self) -> list[int]:
        found = subprocess.run(["pgrep", "-s", str(self.process.pid)], capture_output=True, text=True).stdout.split()
        return [int(pid) for pid in found] or [self.process.pid]

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (FileNotFoundError, IndexError):
            pass
    return total


def memory_mb(pids: list[int], field: str = "VmRSS") -> float:
    """Sum of the processes' resident memory now (VmRSS) or at its peak (VmHWM)."""
    total = 0
    for pid in pids:
        try:
            match = re.search(rf"{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
            total += int(match.group(1)) if match else 0
        except FileNotFoundError:
            pass
    return total / 1024


def wrk(server: Server, body: str, connections: int, seconds: float) -> Result:
    """Load the server with wrk on the other core; latency percentiles, throughput and server CPU per request."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      # the headers a client sends besides (wrk adds Host and Content-Length)
                      'wrk.headers["User-Agent"] = "python-requests/2.32.3"\nwrk.headers["Accept"] = "*/*"\n'
                      'wrk.headers["Accept-Encoding"] = "gzip, deflate"\nwrk.headers["Connection"] = "keep-alive"\n'
                      f"wrk.body = [[{body}]]\n")
    try:
        pids = server.pids()
        cpu_before = cpu_seconds(pids)
        output = subprocess.run(["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s",
                                 "--latency", "-s", str(script), server.url], capture_output=True, text=True,
                                check=True).stdout
        cpu = cpu_seconds(pids) - cpu_before
    finally:
        script.unlink()
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise RuntimeError(f"{server.name}: {errors.group(1)} failed requests\n{output}")
    return Result(rps=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
                  p50_ms=_percentile(output, "50"), p99_ms=_percentile(output, "99"),
                  cpu_us_per_request=cpu / max(requests, 1) * 1e6, peak_rss_mb=memory_mb(pids, "VmHWM"))


def _percentile(output: str, which: str) -> float:
    value, unit = re.search(rf"\s{which}%\s+([\d.]+)(us|ms|s)", output).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def measure(servers: list[Server], body: str, connections: list[int], seconds: float,
            rounds: int) -> dict[tuple[str, int], list[Result]]:
    """Alternate the servers, round after round; every server is warmed up before each measurement."""
    results: dict[tuple[str, int], list[Result]] = {}
    for round_number in range(rounds):
        for server in servers:
            server.start(body)
            try:
                for count in connections:
                    wrk(server, body, count, min(2.0, seconds))  # warm-up
                    result = wrk(server, body, count, seconds)
                    results.setdefault((server.name, count), []).append(result)
                    print(f"  round {round_number + 1} {server.name:<28} c={count:<3} {result.rps:9.0f} req/s  "
                          f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                          f"{result.cpu_us_per_request:7.0f} us CPU/req  {result.peak_rss_mb:6.0f} MB", flush=True)
            finally:
                server.stop()
    return results


def best(results: dict[tuple[str, int], list[Result]], name: str, connections: int) -> Result:
    """The median of the rounds, field by field."""
    runs = results[(name, connections)]
    return Result(*(statistics.median(getattr(run, f) for run in runs) for f in Result.__dataclass_fields__))


def table(results: dict[tuple[str, int], list[Result]]) -> None:
    print(f"\n{'server':<28} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} {'peak MB':>8}")
    for name, connections in dict.fromkeys(results):
        r = best(results, name, connections)
        print(f"{name:<28} {connections:>5} {r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
              f"{r.cpu_us_per_request:>11.0f} {r.peak_rss_mb:>8.0f}")


def engine_command(project: Path, *flags: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "engine", "serve", str(project), "--port", "{port}", *flags]


def floors(env: dict[str, str] | None = None) -> list[Server]:
    """The bare ASGI function (benchmarks/bare_asgi.py) on each HTTP server: what any app on it can reach at most."""
    app, py, env = "benchmarks.bare_asgi:app", sys.executable, env or {}
    servers = [
        Server("floor: Hypercorn", [py, "-m", "hypercorn", "--worker-class", "uvloop", "--bind", "127.0.0.1:{port}",
                                    "--log-level", "warning", app], "/", env),
        Server("floor: uvicorn", [py, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools", "--port", "{port}",
                                  "--log-level", "warning", "--no-access-log", app], "/", env),
    ]
    if importlib.util.find_spec("granian"):
        servers.append(Server("floor: Granian", [py, "-m", "granian", "--interface", "asgi", "--workers", "1",
                                                 "--runtime-threads", "1", "--loop", "uvloop", "--no-ws", "--port",
                                                 "{port}", "--log-level", "warning", app], "/", env))
    return servers


def engines(project: Path, path: str, env: dict[str, str] | None = None, label: str = "engine",
            access_log_off: bool = True) -> list[Server]:
    """engine on each of its HTTP servers, default settings (access log on), and with the access log off."""
    servers = []
    for server in ("hypercorn", "uvicorn"):
        servers.append(Server(f"{label} {server}", engine_command(project, "--server", server), path, env or {}))
        if access_log_off:
            servers.append(Server(f"{label} {server}, no access log",
                                  engine_command(project, "--server", server, "--log-level", "warning"), path,
                                  env or {}))
    return servers


def kserve(python: str | None, *args: str) -> list[Server]:
    """KServe's Python model server with its defaults, in its own virtual environment (--kserve PYTHON)."""
    if not python:
        return []
    model = "mlp" if args else "echo"
    return [Server("KServe", [python, str(HERE / "kserve" / "server.py"), "{port}", *args],
                   f"/v1/models/{model}:predict")]


def ratio(results: dict, a: str, b: str, connections: int, goal: str = "") -> str:
    """a's throughput over b's at `connections`, with the goal it is held to."""
    if (a, connections) not in results or (b, connections) not in results:
        return ""
    value = best(results, a, connections).rps / best(results, b, connections).rps
    line = f"  {a} / {b} at {connections}: {value:.2f}x" + (f" (goal {goal})" if goal else "")
    print(line)
    return line


def p99_check(results: dict, peer: str, connections: list[int]) -> None:
    """Every server's p99 against the peer's, level by level."""
    for count in connections:
        if (peer, count) not in results:
            return
        theirs = best(results, peer, count).p99_ms
        for name, level in results:
            if level == count and name != peer and not name.startswith("floor"):
                print(f"  p99 at {count}: {name} {best(results, name, count).p99_ms:.2f} ms vs {peer} "
                      f"{theirs:.2f} ms ({best(results, name, count).p99_ms / theirs:.2f}x, goal <= 1x)")


def chosen(servers: list[Server], only: str | None) -> list[Server]:
    """The servers whose names contain one of the comma-separated words of --servers."""
    if not only:
        return servers
    return [server for server in servers if any(word in server.name for word in only.split(","))]


def echo(args: argparse.Namespace) -> None:
    print("echo workload: {\"x\": [16 floats]} -> {\"y\": sum}, threads_per_process 1, server on one core")
    servers = floors() + engines(HERE / "echo", "/echo") + kserve(args.kserve) + [
        Server("Cortex-style FastAPI+uvicorn", [sys.executable, str(HERE / "cortex_style.py"), str(HERE / "echo"),
                                                "{port}"], "/predict")]
    if args.baseline:
        servers.append(Server("engine (baseline)", engine_command(HERE / "echo", python=args.baseline), "/echo"))
    results = measure(chosen(servers, args.servers), ECHO_BODY, [1, 32], args.duration, args.rounds)
    table(results)
    print("\nratios (throughput):")
    ratio(results, "engine uvicorn", "KServe", 32, ">= 2.5x")
    ratio(results, "engine uvicorn", "KServe", 1, ">= 1.3x")
    ratio(results, "engine uvicorn", "floor: uvicorn", 32, ">= 0.7x")
    ratio(results, "engine uvicorn", "floor: uvicorn", 1)
    ratio(results, "engine hypercorn", "floor: Hypercorn", 32, ">= 0.95x")
    ratio(results, "engine hypercorn", "floor: Hypercorn", 1)
    ratio(results, "engine hypercorn", "KServe", 32)
    ratio(results, "engine hypercorn", "KServe", 1)
    for server in ("hypercorn", "uvicorn"):
        for count in (1, 32):
            ratio(results, f"engine {server}", f"engine {server}, no access log", count, ">= 0.95x")
    ratio(results, "engine hypercorn", "Cortex-style FastAPI+uvicorn", 32)
    ratio(results, "engine uvicorn", "Cortex-style FastAPI+uvicorn", 32)
    if args.baseline:
        for count in (1, 32):
            ratio(results, "engine hypercorn", "engine (baseline)", count)
    p99_check(results, "KServe", [1, 32])
    print("idle memory (MB, right after start): " + ", ".join(
        f"{server.name} {server.idle_rss_mb:.0f}" for server in chosen(servers, args.servers)))


def mlp(args: argparse.Namespace) -> None:
    print("heavy workload: ONNX MLP 1024 -> 4096 -> 4096 -> 10, server on one core, onnxruntime with 1 thread")
    root = Path(tempfile.mkdtemp(prefix="engine-bench-"))
    try:
        model_dir = root / "model"
        model_dir.mkdir()
        subprocess.run([sys.executable, str(HERE / "mlp" / "make_model.py"), str(model_dir / "mlp.onnx")], check=True)
        in_process = in_process_rows_per_second(model_dir / "mlp.onnx", args.duration)
        env = {"ENGINE_ONNX_INTRA_OP_THREADS": "1"}
        servers = floors({"BARE_ASGI_MODEL": str(model_dir / "mlp.onnx")})[:2]
        batched = "    server_side_batching:\n      max_batch_size: 64\n      batch_interval: 20ms\n"
        for name, batching in (("unbatched", ""), ("batched", batched)):
            project = root / name
            project.mkdir()
            shutil.copy(HERE / "mlp" / "predictor.py", project)
            (project / "cortex.yaml").write_text(
                f"- name: mlp\n  kind: RealtimeAPI\n  predictor:\n    type: onnx\n    path: predictor.py\n"
                f"    model_path: {model_dir}\n{batching}")
            servers += engines(project, "/mlp", env, label=f"engine {name}", access_log_off=False)
        servers += kserve(args.kserve, str(model_dir / "mlp.onnx"))
        results = measure(chosen(servers, args.servers), MLP_BODY, [1, 64], args.duration, args.rounds)
        table(results)
        print(f"\nin process (no HTTP): {in_process[1]:.0f} rows/s at batch 1, {in_process[32]:.0f} at batch 32, "
              f"{in_process[64]:.0f} at batch 64")
        print("ratios (throughput):")
        for server, floor in (("uvicorn", "floor: uvicorn"), ("hypercorn", "floor: Hypercorn")):
            for count in (1, 64):
                ratio(results, f"engine unbatched {server}", "KServe", count)
                ratio(results, f"engine unbatched {server}", floor, count)
                ratio(results, f"engine batched {server}", "KServe", count)
                ratio(results, f"engine batched {server}", f"engine unbatched {server}", count)
        p99_check(results, "KServe", [1, 64])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def in_process_rows_per_second(model: Path, seconds: float) -> dict[int, float]:
    """onnxruntime called directly on the server's core: the physical limit."""
    code = f"""
import json, time, numpy as np, onnxruntime as ort
options = ort.SessionOptions(); options.intra_op_num_threads = 1; options.inter_op_num_threads = 1
session = ort.InferenceSession({str(model)!r}, options, providers=["CPUExecutionProvider"])
result = {{}}
for batch in (1, 32, 64):
    x = np.random.default_rng(0).random((batch, 1024), dtype=np.float32)
    for _ in range(5): session.run(None, {{"x": x}})
    rows, started = 0, time.perf_counter()
    while time.perf_counter() - started < {seconds}:
        session.run(None, {{"x": x}}); rows += batch
    result[batch] = rows / (time.perf_counter() - started)
print(json.dumps(result))
"""
    output = subprocess.run(["taskset", "-c", SERVER_CORE, sys.executable, "-c", code], capture_output=True,
                            text=True, check=True).stdout
    return {int(k): v for k, v in json.loads(output).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="times each server is measured (default 2)")
    parser.add_argument("--only", choices=["echo", "mlp"], help="run one workload")
    parser.add_argument("--kserve", metavar="PYTHON", help="also measure KServe, installed for this Python (its own "
                        "virtual environment: pip install kserve onnxruntime)")
    parser.add_argument("--servers", metavar="WORDS", help="only the servers whose names contain one of these "
                        "comma-separated words (e.g. 'floor,uvicorn')")
    parser.add_argument("--baseline", metavar="PYTHON", help="echo: also measure the engine installed for this "
                        "Python (e.g. another checkout's .venv/bin/python), side by side")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("two cores are needed: one for the server, one for wrk")
    if args.only in (None, "echo"):
        echo(args)
    if args.only in (None, "mlp"):
        mlp(args)


if __name__ == "__main__":
    main()
