"""Async against threaded predict, side by side in one run, and the time to a stream's first item.

    .venv/bin/python benchmarks/streaming.py [--duration 10] [--rounds 2]

The echo workload (benchmarks/echo, and the same as an `async def predict` in benchmarks/async_echo), served by
engine pinned to core 0, loaded by wrk on core 1 at 1 and 32 connections (as suite.py). Then the time from sending a
request to reading the first item of a streamed response, at the median over many requests.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import suite  # noqa: E402

HERE = Path(__file__).resolve().parent


def first_item_ms(url: str, requests: int = 300) -> tuple[float, float]:
    """Median and p99 milliseconds to the first streamed item, over keep-alive requests."""
    times = []
    with httpx.Client(timeout=30) as client:
        for _ in range(requests):
            started = time.perf_counter()
            with client.stream("POST", url, json={"stream": 5}) as stream:
                chunks = stream.iter_raw()
                next(chunks)
                times.append((time.perf_counter() - started) * 1e3)
                for _ in chunks:
                    pass
    times.sort()
    return statistics.median(times), times[int(0.99 * len(times))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    servers = [suite.Server("engine, threaded predict", suite.engine_command(HERE / "echo"), "/echo"),
               suite.Server("engine, async predict", suite.engine_command(HERE / "async_echo"), "/echo")]
    results = suite.measure(servers, suite.ECHO_BODY, [1, 32], args.duration, args.rounds)
    suite.table(results)
    for connections in (1, 32):
        threaded, asynchronous = (suite.best(results, server.name, connections) for server in servers)
        print(f"at {connections} connection(s): async / threaded throughput = {asynchronous.rps / threaded.rps:.2f}x, "
              f"p99 {asynchronous.p99_ms:.2f} ms against {threaded.p99_ms:.2f} ms")
    stream = servers[1]
    stream.start(suite.ECHO_BODY)
    try:
        median, p99 = first_item_ms(stream.url)
    finally:
        stream.stop()
    print(f"time to the first streamed item (async generator, keep-alive, 300 requests): median {median:.2f} ms, "
          f"p99 {p99:.2f} ms")


if __name__ == "__main__":
    main()
