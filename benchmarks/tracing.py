"""engine-otel's cost: the echo workload without the tracing plugin, with it installed and sampling off, and with
every request traced and exported over OTLP/HTTP, on Hypercorn and on uvicorn.

    .venv/bin/python benchmarks/tracing.py [--duration 8] [--rounds 2] [--servers hypercorn,uvicorn]
                                           [--queue-size N]

engine serves benchmarks/echo with default settings (access log on, appended to a file) on core 0, wrk on core 1
(benchmarks/suite.py's helpers), in four configurations that alternate within one run, at 1 and 32 connections
(the order reversed every other round):
  - not installed: ENGINE_PLUGINS names every installed `engine` entry point but engine-otel's, so that engine never
    imports it (nor OpenTelemetry): what a server without the plugin runs, tracing.active None;
  - sampling off: OTEL_EXPORTER_OTLP_ENDPOINT at the receiver, OTEL_TRACES_SAMPLER=always_off;
  - traced: the same with OTEL_TRACES_SAMPLER=always_on: every request's spans exported over OTLP/HTTP, engine-otel's
    exporter process on the server's core with it (everything on one core);
  - traced apart: the same with the exporter process moved to core 1 once the server has started (where wrk and the
    receiver run), as an OpenTelemetry Collector's sidecar would run elsewhere.
The receiver is a separate process on core 1 (with wrk) that takes POST /v1/traces, decodes each
ExportTraceServiceRequest and counts the spans by service (each configuration names its own with OTEL_SERVICE_NAME).
It prints the throughput, CPU-per-request (the server's processes, its exporter process included) and p99 ratios
against not installed (goals: sampling off >= 0.98x, traced >= 0.85x), the server spans received against the
requests each traced server took (its access-log lines: the exporter drops spans when its queue is full;
--queue-size sets OTEL_BSP_MAX_QUEUE_SIZE), and what the tracing parts cost per request measured in this process
(steadier than the throughput on a busy machine): on the serving thread, handing the spans to the exporter process
(the outbox's thread and flushes), and in the exporter process.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import timeit
import urllib.request
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from suite import (
    ECHO_BODY,
    HERE,
    LOAD_CORE,
    REPO,
    SERVER_CORE,
    Result,
    Server,
    best,
    cpu_seconds,
    engine_command,
    measure,
    table,
)

CONNECTIONS = [1, 32]
MODES = ("not installed", "sampling off", "traced", "traced apart")
TRACED = MODES[2:]
ACCESS_LINE = " engine.access INFO echo POST /echo "  # a request's line, answered or its client gone
BLOCK = 127  # requests timed at a time in process, traced: 508 spans, under the exporter's batch of 512
BLOCKS = 100  # blocks per measurement
CPU = time.thread_time  # the in-process timer: the serving thread's CPU time, which other processes' load moves little
EXPORTER = b"engine_otel.exporter"  # in the exporter process's command line
SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER


class Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: POST /v1/traces (protobuf) decoded and counted; GET /counts answers the counts."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's session expects
    counts: dict[str, Counter[str]] = {}  # service name -> span name (and "server spans", "exports") -> count
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != "/v1/traces":
            self._answer(404, b"only POST /v1/traces", "text/plain")
            return
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next((attribute.value.string_value for attribute in resource_spans.resource.attributes
                                if attribute.key == "service.name"), "")
                counted = self.counts.setdefault(service, Counter())
                counted["exports"] += 1
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        counted[span.name] += 1
                        counted["server spans"] += span.kind == SERVER_KIND
        self._answer(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

    def do_GET(self) -> None:  # noqa: N802
        with self.lock:
            self._answer(200, json.dumps(self.counts).encode(), "application/json")

    def _answer(self, status: int, body: bytes, media_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        pass


def receive() -> None:
    """Run the receiver on a free loopback port (printed on the first line of standard output) until killed."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def start_receiver() -> tuple[subprocess.Popen[str], str]:
    """The receiver, its own process on wrk's core; (the process, its base URL)."""
    process = subprocess.Popen(["taskset", "-c", LOAD_CORE, sys.executable, __file__, "--receiver"], cwd=REPO,
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout is not None
    return process, f"http://127.0.0.1:{int(process.stdout.readline())}"


def received(base_url: str) -> dict[str, dict[str, int]]:
    """The receiver's counts, by service name."""
    with urllib.request.urlopen(f"{base_url}/counts") as answer:
        counts: dict[str, dict[str, int]] = json.load(answer)
        return counts


def without_otel() -> str:
    """ENGINE_PLUGINS's value that loads every installed `engine` entry point except engine-otel's."""
    names = sorted({entry.name for entry in importlib.metadata.entry_points(group="engine")})
    if "otel" not in names:
        sys.exit("engine-otel is not installed: .venv/bin/pip install -e plugins/otel")
    return ",".join(name for name in names if name != "otel")


class ExporterApart(Server):
    """A server whose exporter process is moved to wrk's core once it has started."""

    def start(self, body: str) -> None:
        super().start(body)
        found = exporter_pids(self.pids())
        if len(found) != 1:
            raise RuntimeError(f"{self.name}: {len(found)} exporter processes, not one")
        os.sched_setaffinity(found[0], {int(LOAD_CORE)})


def exporter_pids(pids: list[int]) -> list[int]:
    """The engine-otel exporter processes among `pids`."""
    found = []
    for pid in pids:
        try:
            if EXPORTER in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def configured(server: str, mode: str, receiver: str, folder: Path, queue_size: int | None) -> Server:
    """engine on `server` in one of MODES, its stderr (the access log) appended to a file in `folder`."""
    env = environment(mode, receiver, service(server, mode))
    if queue_size and mode != "not installed":
        env["OTEL_BSP_MAX_QUEUE_SIZE"] = str(queue_size)
    command = ["sh", "-c", f'exec "$@" 2>>{log_file(folder, server, mode)}', "sh",
               *engine_command(HERE / "echo", "--server", server)]
    kind = ExporterApart if mode == "traced apart" else Server
    return kind(f"{server} {mode}", command, "/echo", env)


def environment(mode: str, receiver: str, service_name: str) -> dict[str, str]:
    """What engine's environment has in one of MODES: without engine-otel, or exporting to `receiver` as
    `service_name` with the sampler always off or always on."""
    if mode == "not installed":
        return {"ENGINE_PLUGINS": without_otel()}
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver, "OTEL_SERVICE_NAME": service_name,
            "OTEL_TRACES_SAMPLER": "always_off" if mode == "sampling off" else "always_on"}


def service(server: str, mode: str) -> str:
    return f"bench-{server}-{mode.replace(' ', '-')}"


def log_file(folder: Path, server: str, mode: str) -> Path:
    return folder / f"{server}-{mode.replace(' ', '-')}.log"


def logged_requests(path: Path) -> int:
    """The requests a server took, by its access-log lines: answered (warm-ups and start-up probes included) or
    given up by their client (wrk's connections as it stops)."""
    with path.open(errors="replace") as output:
        return sum(ACCESS_LINE in line for line in output)


def request_path() -> Callable[[], None]:
    """What the tracing points of one echo request do (admission's and the pipeline's calls, in their order)."""
    from engine import tracing

    scope = {"type": "http", "method": "POST", "path": "/echo",
             "headers": [(b"host", b"127.0.0.1:8888"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(ECHO_BODY)).encode())]}
    payload = json.loads(ECHO_BODY)

    def predict(arguments: dict[str, list[float]]) -> dict[str, list[float]]:
        return arguments  # tracing's cost alone

    def one_request() -> None:
        traced = tracing.start_request(scope, "POST /echo", "echo", "0" * 32)
        tracing.within("predict", predict, True)(payload)
        with tracing.span("encode"):
            pass
        if traced is not None:
            tracing.end_request(traced, 200)
    return one_request


def costs_here(mode: str) -> dict[str, float]:
    """CPU microseconds per request of tracing's points in this process's serving thread, its tracer installed as
    engine serve installs it (from this process's environment: see tracing_costs); traced, also the handing of the
    spans to the exporter process (the outbox's thread, and the flushes on this thread) and the exporter process's
    own CPU time (taking them, and exporting them over OTLP)."""
    from engine import plugins, tracing

    plugins.install_tracer(plugins.make_plugin_manager())
    assert (tracing.active is None) == (mode == "not installed"), (mode, tracing.active)
    one_request = request_path()
    if mode != "traced":
        return {"points": min(timeit.timeit(one_request, number=20_000, timer=CPU) for _ in range(5)) / 20_000 * 1e6}
    from engine_otel.tracer import OtelTracer

    assert isinstance(tracing.active, OtelTracer) and tracing.active.outbox.exporter is not None
    outbox = tracing.active.outbox
    exporter = outbox.exporter.process.pid
    sender = time.pthread_getcpuclockid(outbox.thread.ident or 0)
    # Blocks of BLOCK requests fill a batch of 4 x BLOCK spans (under the exporter's 512: its BatchSpanProcessor
    # sleeps); each block is timed, then flushed: sent, and exported by the exporter process, which this waits for.
    runs: list[tuple[float, float, float]] = []
    for _ in range(5):
        points_s = hop_s = 0.0
        sender_before, exporter_before = time.clock_gettime(sender), cpu_seconds([exporter])
        for _ in range(BLOCKS):
            points_s += timeit.timeit(one_request, number=BLOCK, timer=CPU)
            started = CPU()
            assert outbox.flush(), "the exporter process did not answer"
            hop_s += CPU() - started
        hop_s += time.clock_gettime(sender) - sender_before
        runs.append((points_s, hop_s, cpu_seconds([exporter]) - exporter_before))
    requests = BLOCKS * BLOCK
    return {"points": min(run[0] for run in runs) / requests * 1e6, "hop": min(run[1] for run in runs) / requests * 1e6,
            "exporter": min(run[2] for run in runs) / requests * 1e6, "batch": 4 * BLOCK}


def tracing_costs(receiver: str) -> dict[str, dict[str, float]]:
    """costs_here of each configuration (traced once), each in a process of its own on the server's core (the
    exporter's BatchSpanProcessor asleep: it exports only when flushed)."""
    costs = {}
    for mode in MODES[:3]:
        output = subprocess.run(["taskset", "-c", SERVER_CORE, sys.executable, __file__, "--costs", mode], cwd=REPO,
                                env={**os.environ, **environment(mode, receiver, "bench-in-process"),
                                     "OTEL_BSP_SCHEDULE_DELAY": "600000"}, capture_output=True,
                                text=True, check=True).stdout
        costs[mode] = json.loads(output.splitlines()[-1])
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="times each is measured (default 2)")
    parser.add_argument("--servers", default="hypercorn,uvicorn", help="HTTP servers (default hypercorn,uvicorn)")
    parser.add_argument("--queue-size", type=int, help="OTEL_BSP_MAX_QUEUE_SIZE when traced (SDK default 2048)")
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)  # run as the OTLP receiver
    parser.add_argument("--costs", choices=MODES, help=argparse.SUPPRESS)  # print costs_here(mode) as JSON
    args = parser.parse_args()
    if args.receiver:
        receive()
        return
    if args.costs:
        print(json.dumps(costs_here(args.costs)))
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        del os.environ[name]  # each configuration says what it sets; nothing else from the calling shell
    names = args.servers.split(",")
    folder = Path(tempfile.mkdtemp(prefix="engine-tracing-bench-"))
    receiver, receiver_url = start_receiver()
    try:
        groups = [[configured(server, mode, receiver_url, folder, args.queue_size) for mode in MODES]
                  for server in names]
        print("echo workload, access log on: engine-otel not installed, sampling off, every request traced (its "
              "exporter process on the server's core, then apart on core 1); server on one core")
        results: dict[tuple[str, int], list[Result]] = {}
        for round_number in range(args.rounds):  # reversed every other round: a drift of the machine evens out
            order = [server for group in groups for server in (group if round_number % 2 == 0 else group[::-1])]
            for key, runs in measure(order, ECHO_BODY, CONNECTIONS, args.duration, 1).items():
                results.setdefault(key, []).extend(runs)
        table(results)
        print("\nratios against not installed:")
        for server in names:
            for count in CONNECTIONS:
                base = best(results, f"{server} not installed", count)
                for mode, goal in (("sampling off", 0.98), ("traced", 0.85), ("traced apart", 0.85)):
                    run = best(results, f"{server} {mode}", count)
                    print(f"  {server} {mode:<12} at {count:>2}: throughput {run.rps / base.rps:.3f}x (goal >= "
                          f"{goal}x), CPU per request {run.cpu_us_per_request / base.cpu_us_per_request:.3f}x "
                          f"({run.cpu_us_per_request - base.cpu_us_per_request:+.0f} us), p99 "
                          f"{run.p99_ms / base.p99_ms:.2f}x")
        counts = received(receiver_url)
        print("\nspans received (the exporter drops spans when its queue is full):")
        for server in names:
            for mode in MODES[1:]:
                got = counts.get(service(server, mode), {})
                requests = logged_requests(log_file(folder, server, mode))
                print(f"  {server} {mode}: {requests} requests logged, {got.get('server spans', 0)} server spans "
                      f"({got.get('server spans', 0) / max(requests, 1):.1%}), spans by name "
                      f"{ {k: v for k, v in got.items() if k not in ('server spans', 'exports')} }, in "
                      f"{got.get('exports', 0)} exports")
        costs = tracing_costs(receiver_url)
        traced = costs["traced"]
        print(f"\nin process, CPU time of tracing's points in one echo request on the serving thread, its tracer "
              f"installed as engine serve does (best of 5): not installed {costs['not installed']['points']:.2f} us, "
              f"sampling off {costs['sampling off']['points']:.2f} us, traced {traced['points']:.2f} us (its server, "
              f"admission, predict and encode spans recorded); handing them to the exporter process "
              f"{traced['hop']:.2f} us (the serving process's outbox: marshal, send); in the exporter process "
              f"{traced['exporter']:.2f} us (made ReadableSpans, batched, OTLP-encoded and sent to the receiver in "
              f"batches of {traced['batch']:.0f} spans)")
    finally:
        receiver.terminate()
        receiver.wait()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
