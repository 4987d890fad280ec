"""A worker process: builds one API's Pipeline and answers the calls the front process hands it.

Started by engine.serving.worker_pool as `python -m engine.serving.worker_main ...` when processes_per_replica > 1.
It runs the very same Pipeline as a single-process server (payload parsing, predict, response encoding,
post_predict), with the very same plugins, so behaviour does not depend on the number of processes.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import functools
import io
import os
import signal
import sys

from starlette.responses import Response

from engine import plugins, tracebacks, tracing
from engine.asgi import play
from engine.errors import EngineError
from engine.memory import settle_after_start_up
from engine.project.files import enter_view
from engine.serving import messages
from engine.serving.backend import ApiRequest
from engine.serving.eventloop import run_event_loop
from engine.serving.metrics import Metrics
from engine.serving.pipeline import Pipeline

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def main(argv: list[str] | None = None) -> int:
    """Entry point of a worker process."""
    parser = argparse.ArgumentParser(prog="python -m engine.serving.worker_main")
    parser.add_argument("--socket", required=True, help="the front process's Unix socket")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True, help="the front process's pid")
    parser.add_argument("--api", required=True, help="the API's name, for log lines")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    die_with(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the whole process group; the front decides
    # its --log-format is the front's, from the environment; in json mode its prints become log lines
    tracebacks.configure_logging(args.log_level, worker=f"{args.api}:{args.index}", capture=True)
    if isinstance(sys.stdout, io.TextIOWrapper):  # not when something has replaced it
        sys.stdout.reconfigure(line_buffering=True)
    return run_event_loop(_run(args.socket, args.index))


def die_with(parent: int) -> None:
    """Ask Linux to kill this worker if the front process dies without stopping it (e.g. SIGKILL, OOM)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: losing the connection to the front still ends the worker
        pass
    if os.getppid() != parent:  # the front died before we asked
        os._exit(1)


async def _run(socket: str, index: int) -> int:
    reader, writer = await asyncio.open_unix_connection(socket)
    await messages.send(writer, messages.Hello(index))
    setup = await messages.receive(reader)
    if not isinstance(setup, messages.Setup):
        return 1
    try:
        pm = plugins.from_portable(setup.plugins)
        plugins.install_tracer(pm)
        pipeline = Pipeline(setup.api, pm, Metrics(), setup.model_poll_interval, process_index=index,
                            shows_errors=setup.shows_errors)
        enter_view(setup.view, [setup.api.predictor.python_path or ""])
        tracebacks.register_view(setup.view, setup.project_root)
        await pipeline.start(setup.view, setup.project_root)
    except Exception as error:
        details = str(error) if isinstance(error, EngineError) else tracebacks.format_exception(error)
        await messages.send(writer, messages.Failed(details))
        return 1
    settle_after_start_up()
    await messages.send(writer, messages.Ready())
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await _serve(pipeline, reader, writer, stopping)
    await pipeline.stop()
    writer.close()
    return 0


async def _serve(pipeline: Pipeline, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 stopping: asyncio.Event) -> None:
    """Answer calls until Stop (or SIGTERM), then until the calls in hand are done; end at once if the front goes."""
    sent: dict[int, asyncio.Future[None]] = {}
    calls: dict[int, asyncio.Task[None]] = {}
    idle = asyncio.Event()
    idle.set()

    def finished(call: int, _: asyncio.Task[None]) -> None:
        calls.pop(call, None)
        if not calls:
            idle.set()

    receiving = asyncio.ensure_future(messages.receive(reader))
    waiter = asyncio.ensure_future(stopping.wait())  # then, once stopping, for the calls in hand to end
    while True:
        await asyncio.wait({receiving, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if waiter.done() and stopping.is_set():
            if idle.is_set():
                break
            waiter = asyncio.ensure_future(idle.wait())
        if not receiving.done():
            continue
        message = receiving.result()
        if message is None:  # the front is gone: nobody will say that a reply was sent any more
            for future in sent.values():
                if not future.done():
                    future.set_result(None)
            break
        receiving = asyncio.ensure_future(messages.receive(reader))
        if isinstance(message, messages.Stop):
            stopping.set()  # the calls in hand still get their Sent and Cancel messages
        elif isinstance(message, messages.Sent):
            # it comes before the reply's end when the client left mid-stream: then that end does not wait for it
            if message.call in calls and not (future := _sent_future(sent, message.call)).done():
                future.set_result(None)
        elif isinstance(message, messages.Cancel):
            if message.call in calls:
                calls[message.call].cancel()
        elif isinstance(message, messages.Call):
            idle.clear()
            task = calls[message.call] = asyncio.create_task(_answer(pipeline, writer, sent, message))
            task.add_done_callback(functools.partial(finished, message.call))
    receiving.cancel()
    waiter.cancel()
    if calls:  # the front is gone, but calls it handed us finish before we go
        await asyncio.wait(calls.values())


async def _answer(pipeline: Pipeline, writer: asyncio.StreamWriter, sent: dict[int, asyncio.Future[None]],
                  call: messages.Call) -> None:
    request = ApiRequest(call.scope, call.body)
    try:
        with tracing.resumed(call.scope.get(tracing.TRACE_KEY)):  # the front's server span, when it traces it
            if call.kind == "predict":
                response = await pipeline.predict(request)
            elif call.kind.startswith("operate:"):
                response = await pipeline.operate(call.kind.removeprefix("operate:"), request)
            else:
                response = await pipeline.summary(request)
            await _reply(call, response, writer, sent)
        for work in request.after:  # post_predict: the worker is busy until it ends
            await asyncio.wrap_future(work)
    except asyncio.CancelledError:
        pass  # given up by the front: predict never ran, or has finished (the pipeline waits for a running one)
    finally:
        sent.pop(call.call, None)
        await messages.send(writer, messages.Done(call.call))


def _sent_future(sent: dict[int, asyncio.Future[None]], call: int) -> asyncio.Future[None]:
    """The future that the front's Sent for `call` resolves, made by whichever comes first: Sent or the reply's end."""
    if call not in sent:
        sent[call] = asyncio.get_running_loop().create_future()
    return sent[call]


async def _reply(call: messages.Call, response: Response, writer: asyncio.StreamWriter,
                 sent: dict[int, asyncio.Future[None]]) -> None:
    """Send the response: whole as a Reply, or, when it streams, as a ReplyStart and Chunks as they come; with a
    post_predict, wait until the front says the client has it all (post_predict runs then, as `play` ends)."""
    wants_sent = response.background is not None
    async with play(response, call.scope) as played:
        if played.chunks is None:
            if wants_sent:  # registered before sending: Sent may come back before send() returns
                _sent_future(sent, call.call)
            await messages.send(writer, messages.Reply(call.call, played.status, played.headers, played.body,
                                                       wants_sent))
        else:
            await messages.send(writer, messages.ReplyStart(call.call, played.status, played.headers, wants_sent))
            async for chunk in played.chunks:
                await messages.send(writer, messages.Chunk(call.call, chunk, False))
            if wants_sent:
                _sent_future(sent, call.call)
            await messages.send(writer, messages.Chunk(call.call, b"", True))
        if wants_sent:
            await sent[call.call]


if __name__ == "__main__":
    sys.exit(main())
