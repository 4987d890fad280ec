"""--log-format json against text: the echo workload with the access log on, on Hypercorn and on uvicorn.

    .venv/bin/python benchmarks/logs.py [--duration 10] [--rounds 2] [--servers hypercorn,uvicorn]

engine serves benchmarks/echo with default settings (log level info: one access-log line per request) on core 0, wrk
on core 1 (benchmarks/suite.py's helpers); its standard error is appended to a file, as a collector's pipe or a
container runtime would take it, rather than thrown away. Text and json alternate within one run, at 1 and 32
connections (json first every other round); then the json/text throughput and CPU-per-request ratios (goal:
throughput >= 0.97x), a check that every line json mode wrote is a JSON object with one access line per request
answered, and what one access line costs in each format, measured in this process (steadier than the throughput on a
busy machine).
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
import sys
import tempfile
import timeit
from pathlib import Path

from suite import ECHO_BODY, HERE, Result, Server, best, engine_command, measure, table

CONNECTIONS = [1, 32]


def logged(server: str, log_format: str, folder: Path) -> Server:
    """engine on `server` with --log-format `log_format`, its stderr appended to a file in `folder`."""
    output = folder / f"{server}-{log_format}.log"
    command = ["sh", "-c", f'exec "$@" 2>>{output}', "sh",
               *engine_command(HERE / "echo", "--server", server, "--log-format", log_format)]
    return Server(f"{server} {log_format}", command, "/echo")


def check_json(path: Path) -> tuple[int, int]:
    """(lines, access lines) of a json-mode output; every line must be a JSON object."""
    lines = access = 0
    with path.open("rb") as output:
        for line in output:
            record = json.loads(line)
            assert isinstance(record, dict) and "message" in record, line[:200]
            lines += 1
            access += record["logger"] == "engine.access"
    return lines, access


def line_costs(path: Path) -> dict[str, float]:
    """Microseconds per access line in each format, in this process, as engine serve writes one (to a file)."""
    from engine.serving.accesslog import AccessLog
    from engine.tracebacks import configure_logging

    costs: dict[str, list[float]] = {"text": [], "json": []}
    for _ in range(5):
        for log_format in costs:
            configure_logging("info", log_format=log_format)
            handler = logging.getLogger().handlers[0]
            with path.open("a") as output:
                handler.setStream(output)  # type: ignore[attr-defined]
                line = functools.partial(AccessLog().request, "echo", "POST", "/echo", 200, 0.0012, "f" * 32)
                seconds = timeit.timeit(line, number=20_000)
            costs[log_format].append(seconds / 20_000 * 1e6)
    logging.getLogger().handlers.clear()
    return {log_format: min(values) for log_format, values in costs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="times each is measured (default 2)")
    parser.add_argument("--servers", default="hypercorn,uvicorn", help="HTTP servers (default hypercorn,uvicorn)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    folder = Path(tempfile.mkdtemp(prefix="engine-logs-bench-"))
    try:
        servers = [logged(server, log_format, folder) for server in args.servers.split(",")
                   for log_format in ("text", "json")]
        print("echo workload, access log on: --log-format text against json, server on one core")
        results: dict[tuple[str, int], list[Result]] = {}
        for round_number in range(args.rounds):  # json first every other round: a drift of the machine evens out
            order = servers if round_number % 2 == 0 else [pair[i] for pair in zip(servers[::2], servers[1::2],
                                                                                    strict=True) for i in (1, 0)]
            for key, runs in measure(order, ECHO_BODY, CONNECTIONS, args.duration, 1).items():
                results.setdefault(key, []).extend(runs)
        table(results)
        print("\nratios, json / text:")
        for server in args.servers.split(","):
            for count in CONNECTIONS:
                json_mode, text = best(results, f"{server} json", count), best(results, f"{server} text", count)
                print(f"  {server} at {count}: throughput {json_mode.rps / text.rps:.3f}x (goal >= 0.97x), CPU per "
                      f"request {json_mode.cpu_us_per_request / text.cpu_us_per_request:.3f}x, p99 "
                      f"{json_mode.p99_ms / text.p99_ms:.2f}x")
        for server in args.servers.split(","):
            lines, access = check_json(folder / f"{server}-json.log")
            print(f"  {server} json output: {lines} lines, every one a JSON object; {access} access lines")
        costs = line_costs(folder / "lines.log")
        print(f"in process, one access line formatted, written and flushed (the best of 5 x 20,000): text "
              f"{costs['text']:.2f} us, json {costs['json']:.2f} us")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
