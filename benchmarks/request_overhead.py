"""engine's own CPU per request, in process: the bare ASGI function (benchmarks/bare_asgi.py) and engine's app on the
echo project, driven through the ASGI interface directly (no sockets, no HTTP server), on uvloop as `engine serve`
runs. What engine adds over the bare function is its own work, whatever server hosts it.

    .venv/bin/python benchmarks/request_overhead.py [--requests 5000] [--rounds 5] [--connections 1,32]
                                                    [--floats 16] [--headers client|wrk] [--profile]

Each figure is time.process_time() over --requests requests (every thread of the process: the predict thread's
work too), divided by their number; the best of --rounds rounds, the configurations alternating within each round.
Requests carry the headers a client sends (--headers client: Host, User-Agent, Accept, Accept-Encoding, Content-Type,
Content-Length; wrk: Host, Content-Type and Content-Length) and a JSON body of --floats floats. The access log goes to
/dev/null through engine's own handler, as `engine serve` writes it to its standard error. With --profile,
cProfile's view of engine's requests (access log on): the functions that cost most per request, on the event loop.
The floor parses JSON with the standard library's json, as the suite's does; BARE_ASGI_JSON=orjson gives it engine's
JSON library, so that what engine adds over it is engine's own work alone.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import logging
import os
import pstats
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import uvloop  # noqa: E402

from benchmarks import bare_asgi  # noqa: E402
from engine.app import create_app  # noqa: E402
from engine.asgi import Lifespan  # noqa: E402
from engine.settings import ServeSettings  # noqa: E402
from engine.tracebacks import configure_logging  # noqa: E402

App = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
               Awaitable[None]]

HEADERS = {
    "client": [(b"host", b"127.0.0.1:8888"), (b"user-agent", b"python-requests/2.32.3"),
               (b"accept-encoding", b"gzip, deflate"), (b"accept", b"*/*"), (b"connection", b"keep-alive"),
               (b"content-type", b"application/json")],
    "wrk": [(b"host", b"127.0.0.1:8888"), (b"content-type", b"application/json")],
}


class Driver:
    """Plays requests into an ASGI app as an HTTP server would: a fresh scope, the body in one message, then a
    receive() that waits (the client stays) until the response is over."""

    def __init__(self, app: App, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.app = app
        self.path = path
        self.body = body
        self.headers = [*headers, (b"content-length", str(len(body)).encode())]
        self.statuses: dict[int, int] = {}

    async def one(self) -> None:
        """One request, answered."""
        loop = asyncio.get_running_loop()
        body_sent = False
        over = loop.create_future()
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": self.body, "more_body": False}
            await over  # a client that stays: nothing until the response is over (then, a disconnect)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "server": ("127.0.0.1", 8888), "client": ("127.0.0.1", 50000), "scheme": "http", "method": "POST",
                 "root_path": "", "path": self.path, "raw_path": self.path.encode(), "query_string": b"",
                 "headers": list(self.headers)}
        await self.app(scope, receive, send)
        if not over.done():  # (a waiter the app cancelled has cancelled it)
            over.set_result(None)
        self.statuses[status] = self.statuses.get(status, 0) + 1

    async def run(self, requests: int, connections: int) -> float:
        """CPU seconds per request over `requests` requests, on `connections` connections at once."""
        each, extra = divmod(requests, connections)

        async def connection(count: int) -> None:
            for _ in range(count):
                await self.one()

        gc.collect()
        started = time.process_time()
        await asyncio.gather(*(connection(each + (index < extra)) for index in range(connections)))
        return (time.process_time() - started) / requests


def log_to_devnull(level: str) -> None:
    """engine's logging as `engine serve --log-level LEVEL` sets it up, its handler writing to /dev/null."""
    configure_logging(level)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(open(os.devnull, "w"))  # noqa: SIM115  # for the life of the process


async def engine_app() -> tuple[App, Lifespan]:
    """engine's app on the echo project, as `engine serve benchmarks/echo` builds it, started and ready."""
    app = create_app(HERE / "echo", settings=ServeSettings.load())
    lifespan = Lifespan(app)
    await lifespan.start()
    while not app.state.engine.ready:
        await asyncio.sleep(0.01)
    return app, lifespan


async def measure(args: argparse.Namespace) -> None:
    body = json.dumps({"x": [float(i) / 7 for i in range(args.floats)]}).encode()
    headers = HEADERS[args.headers]
    app, lifespan = await engine_app()
    configurations = {"bare ASGI function": (Driver(bare_asgi.app, "/", body, headers), "warning"),
                      "engine, access log off": (Driver(app, "/echo", body, headers), "warning"),
                      "engine, access log on": (Driver(app, "/echo", body, headers), "info")}
    try:
        if args.profile:
            await profile(configurations["engine, access log on"][0], args)
            return
        print(f"CPU µs per request (best of {args.rounds} rounds of {args.requests}; median in brackets), "
              f"{args.floats} floats, {args.headers} headers:")
        for connections in args.connections:
            figures: dict[str, list[float]] = {name: [] for name in configurations}
            for driver, level in configurations.values():  # warm-up
                log_to_devnull(level)
                await driver.run(min(1000, args.requests), connections)
            for _ in range(args.rounds):
                for name, (driver, level) in configurations.items():
                    log_to_devnull(level)
                    figures[name].append(await driver.run(args.requests, connections) * 1e6)
            bare = min(figures["bare ASGI function"])
            for name, runs in figures.items():
                over = f"  (+{min(runs) - bare:5.1f} over bare)" if name != "bare ASGI function" else ""
                print(f"  c={connections:<3} {name:<24} {min(runs):7.1f} [{statistics.median(runs):7.1f}]{over}")
        for name, (driver, _) in configurations.items():
            if set(driver.statuses) != {200}:
                raise SystemExit(f"{name}: answers other than 200: {driver.statuses}")
    finally:
        log_to_devnull("warning")
        await lifespan.stop()


async def profile(driver: Driver, args: argparse.Namespace) -> None:
    """cProfile over engine's requests (access log on): the top functions by own time, in µs per request."""
    log_to_devnull("info")
    await driver.run(1000, 1)
    profiler = cProfile.Profile()
    profiler.enable()
    await driver.run(args.requests, args.connections[0])
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime")
    print(f"own time per request (µs, {args.requests} requests, c={args.connections[0]}; the event loop's thread, "
          "under cProfile, which inflates every call):")
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)  # type: ignore[attr-defined]
    for (filename, line, function), (_, calls, own, cumulative, _) in rows[:args.top]:
        where = f"{Path(filename).name}:{line}" if line else filename
        print(f"  {own / args.requests * 1e6:6.2f} own {cumulative / args.requests * 1e6:7.2f} cum "
              f"{calls / args.requests:5.1f}x  {function} ({where})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000, help="requests per measurement (default 5000)")
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each configuration (default 5)")
    parser.add_argument("--connections", default="1,32", help="concurrent requests, comma-separated (default 1,32)")
    parser.add_argument("--floats", type=int, default=16, help="floats in the JSON body (default 16)")
    parser.add_argument("--headers", choices=sorted(HEADERS), default="client", help="request headers (default client)")
    parser.add_argument("--profile", action="store_true", help="cProfile engine's requests instead")
    parser.add_argument("--top", type=int, default=40, help="--profile: functions shown (default 40)")
    parser.add_argument("--core", type=int, default=-1, help="run on this one core, as a server pinned to one core "
                        "does: its event loop and predict thread then share it (default: any core)")
    args = parser.parse_args()
    if args.core >= 0:
        os.sched_setaffinity(0, {args.core})
    args.connections = [int(count) for count in args.connections.split(",")]
    log_to_devnull("warning")
    uvloop.run(measure(args))


if __name__ == "__main__":
    main()
