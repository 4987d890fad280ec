"""A worker process: builds one API's predictor and serves the requests the front process hands it.

Started by engine.workers as `python -m engine.worker ...` when processes_per_replica > 1. It runs the very same
ApiRuntime pipeline as a single-process server (payload parsing, predict, response encoding, post_predict), so
behaviour does not depend on the number of processes.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
from pathlib import Path

from starlette.requests import Request

from engine import ipc, tracebacks
from engine.config import load_config
from engine.errors import EngineError
from engine.memory import settle_after_start_up
from engine.metrics import Metrics
from engine.plugins import make_plugin_manager
from engine.project import enter_view
from engine.runtime import ApiRuntime
from engine.server import run_event_loop
from engine.validate import on_cpu

log = logging.getLogger("engine")

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def main(argv: list[str] | None = None) -> int:
    """Entry point of a worker process."""
    parser = argparse.ArgumentParser(prog="python -m engine.worker")
    for name in ("socket", "config", "api", "view", "project"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--model-poll-interval", type=float, required=True)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--parent", type=int, required=True, help="the front process's pid")
    parser.add_argument("--cpu", action="store_true", help="serve on the CPU whatever the API's compute asks for")
    args = parser.parse_args(argv)
    _die_with(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the whole process group; the front decides
    tracebacks.configure_logging(args.log_level, name=f"%(name)s[{args.api}:{args.index}]")
    sys.stdout.reconfigure(line_buffering=True)
    return run_event_loop(_run(args))


def _die_with(parent: int) -> None:
    """Ask Linux to kill this worker if the front process dies without stopping it (e.g. SIGKILL, OOM)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: losing the connection to the front still ends the worker
        pass
    if os.getppid() != parent:  # the front died before we asked
        os._exit(1)


async def _run(args: argparse.Namespace) -> int:
    reader, writer = await asyncio.open_unix_connection(args.socket)
    await ipc.send(writer, ("hello", args.index))
    runtime = _build_runtime(args)
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(runtime.pool, runtime.initialise, Path(args.view), Path(args.project))
    except Exception as error:
        details = str(error) if isinstance(error, EngineError) else tracebacks.format_exception(error)
        await ipc.send(writer, ("failed", details))
        return 1
    settle_after_start_up()
    await ipc.send(writer, ("ready",))
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    await _serve(runtime, reader, writer, stopping)
    await loop.run_in_executor(None, runtime.drain)
    writer.close()
    return 0


def _build_runtime(args: argparse.Namespace) -> ApiRuntime:
    apis = load_config(Path(args.config))
    if args.cpu:
        on_cpu(apis)
    api = next(api for api in apis if api.name == args.api)
    runtime = ApiRuntime(api, make_plugin_manager(), Metrics(), args.model_poll_interval, process_index=args.index,
                         observe_requests=False)
    runtime.max_in_flight = sys.maxsize  # the front process enforces max_replica_concurrency across workers
    enter_view(Path(args.view), [api.predictor.python_path or ""])
    tracebacks.register_view(Path(args.view), Path(args.project))
    return runtime


async def _serve(runtime: ApiRuntime, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 stopping: asyncio.Event) -> None:
    acks: dict[int, asyncio.Future] = {}
    tasks: set[asyncio.Task] = set()
    stop_task = asyncio.ensure_future(stopping.wait())
    while True:
        receive_task = asyncio.ensure_future(ipc.receive(reader))
        await asyncio.wait({receive_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        message = receive_task.result() if receive_task.done() else None
        if message is None or message[0] == "stop":
            receive_task.cancel()
            break
        if message[0] == "ack":
            acks.pop(message[1]).set_result(None)
        elif message[0] == "request":
            task = asyncio.create_task(_handle(runtime, writer, acks, *message[1:]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    stop_task.cancel()
    if message is None:  # the front is gone: nobody will acknowledge responses any more
        for ack in acks.values():
            if not ack.done():
                ack.set_result(None)
    if tasks:  # requests the front already handed us finish before we go
        await asyncio.wait(tasks)


async def _handle(runtime: ApiRuntime, writer: asyncio.StreamWriter, acks: dict[int, asyncio.Future],
                  request_id: int, method: str, scope: dict, body: bytes) -> None:
    body_sent = False
    finished = asyncio.Event()

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()  # like a client that stays connected until the response is complete
        return {"type": "http.disconnect"}

    request = Request(scope, receive)
    response = await (runtime.handle_post(request) if method == "POST" else runtime.handle_get(request))
    wants_ack = response.background is not None  # post_predict must wait until the client has the response
    start: dict = {}
    chunks: list[bytes] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            return
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            if wants_ack:  # registered before sending: the ack may come back before send() returns
                acks[request_id] = asyncio.get_running_loop().create_future()
            await ipc.send(writer, ("response", request_id, start["status"], start["headers"], b"".join(chunks),
                                    wants_ack))
            if wants_ack:
                await acks[request_id]

    try:
        await response(scope, receive, send)
    finally:
        finished.set()
    await ipc.send(writer, ("done", request_id))


if __name__ == "__main__":
    sys.exit(main())
