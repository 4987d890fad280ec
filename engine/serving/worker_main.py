"""A worker process: builds one API's Pipeline and answers the calls the front process hands it.

Started by engine.serving.worker_pool as `python -m engine.serving.worker_main ...` when processes_per_replica > 1.
It runs the very same Pipeline as a single-process server (payload parsing, predict, response encoding,
post_predict), with the very same plugins, so behaviour does not depend on the number of processes.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import io
import os
import signal
import sys
import time
from typing import Any

from starlette.responses import Response

from engine import plugins, tracebacks, tracing
from engine.asgi import play
from engine.errors import EngineError
from engine.memory import settle_after_start_up
from engine.processes import die_with
from engine.project.files import enter_view
from engine.serving import messages
from engine.serving.backend import ApiRequest
from engine.serving.eventloop import run_event_loop
from engine.serving.metrics import Metrics
from engine.serving.pipeline import Pipeline


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
    # Ctrl+C's SIGINT reaches the whole process group, and so does a SIGTERM from systemd or `kill -- -PGID`: the
    # front decides, and stops its workers once it has drained what it holds (one left alone dies with the front)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # its --log-format is the front's, from the environment; in json mode its prints become log lines
    tracebacks.configure_logging(args.log_level, worker=f"{args.api}:{args.index}", capture=True)
    if isinstance(sys.stdout, io.TextIOWrapper):  # not when something has replaced it
        sys.stdout.reconfigure(line_buffering=True)
    return run_event_loop(_run(args.socket, args.index))


async def _run(socket: str, index: int) -> int:
    setups: asyncio.Queue[messages.Message] = asyncio.Queue()
    channel = await messages.Channel.connect(socket, setups.put_nowait)
    channel.send(messages.Hello(index))
    setup = await messages.first(setups, channel)
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
        channel.send(messages.Failed(details))
        channel.close()
        return 1
    settle_after_start_up()
    if hasattr(os, "SCHED_BATCH"):
        # A worker woken by a call does not preempt the front on a shared core: the front reads and hands over what
        # else has come first, so one wake-up of each process carries several calls (it is not scheduled less).
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    calls = Calls(pipeline, channel)
    channel.on_message = calls.on_message
    channel.send(messages.Ready())
    await calls.serve()
    await pipeline.stop()
    channel.close()
    return 0


class Calls:
    """A worker's calls: each Call runs as a task, Sent and Cancel reach the call they name, Stop ends the worker
    once the calls in hand are done; the front's going ends it at once (after the calls it handed over)."""

    def __init__(self, pipeline: Pipeline, channel: messages.Channel) -> None:
        self.pipeline = pipeline
        self.channel = channel
        self.stopping = asyncio.Event()
        self.running: dict[int, asyncio.Task[None]] = {}
        self.sent: dict[int, asyncio.Future[None]] = {}  # made by whichever comes first: Sent, or the reply's end
        self._idle = asyncio.Event()
        self._idle.set()
        self._replied_done: set[int] = set()  # calls whose Reply said they are done
        self._began: dict[int, float] = {}  # when each call came
        self._last_end = 0.0  # when the last call was done

    def on_message(self, message: messages.Message) -> None:
        """Act on one message from the front."""
        if isinstance(message, messages.Call):
            self._idle.clear()
            self._began[message.call] = time.monotonic()
            task = self.running[message.call] = asyncio.create_task(self._answer(message))
            task.add_done_callback(functools.partial(self._finished, message.call))
        elif isinstance(message, messages.Sent):
            # it comes before the reply's end when the client left mid-stream: then that end does not wait for it
            if message.call in self.running and not (future := self.sent_future(message.call)).done():
                future.set_result(None)
        elif isinstance(message, messages.Cancel):
            if message.call in self.running:
                self.running[message.call].cancel()
        elif isinstance(message, messages.Stop):
            self.stopping.set()  # the calls in hand still get their Sent and Cancel messages

    def _finished(self, call: int, _: asyncio.Task[None]) -> None:
        """A call's task has ended, post_predict included (or was cancelled, maybe before it started)."""
        self.running.pop(call, None)
        self.sent.pop(call, None)
        if call in self._replied_done:
            self._replied_done.discard(call)
        else:
            self.channel.send(messages.Done(call, self._took(call)))
        if not self.running:
            self._idle.set()

    def _took(self, call: int) -> float:
        """This worker's own time on a call that is done: since it came, or since the one before it was done if that
        was later (a call waiting behind another is not counted twice)."""
        now = time.monotonic()
        took = now - max(self._began.pop(call, now), self._last_end)
        self._last_end = now
        return max(took, 0.0)

    def sent_future(self, call: int) -> asyncio.Future[None]:
        """The future that the front's Sent for `call` resolves."""
        if call not in self.sent:
            self.sent[call] = asyncio.get_running_loop().create_future()
        return self.sent[call]

    async def serve(self) -> None:
        """Until Stop and then until the calls in hand are done, or until the front goes."""
        stopped: asyncio.Future[Any] = asyncio.ensure_future(self._stopped())
        await asyncio.wait({stopped, self.channel.closed}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if self.channel.closed.done():  # nobody will say that a reply was sent any more
            for future in self.sent.values():
                if not future.done():
                    future.set_result(None)
        if self.running:  # the front is gone, but calls it handed us finish before we go
            await asyncio.wait(list(self.running.values()))

    async def _stopped(self) -> None:
        await self.stopping.wait()
        await self._idle.wait()

    async def _answer(self, call: messages.Call) -> None:
        request = ApiRequest(call.scope, call.body)
        try:
            with tracing.resumed(call.scope.get(tracing.TRACE_KEY)):  # the front's server span, when it traces it
                if call.kind == "predict":
                    response = await self.pipeline.predict(request)
                elif call.kind.startswith("operate:"):
                    response = await self.pipeline.operate(call.kind.removeprefix("operate:"), request)
                else:
                    response = await self.pipeline.summary(request)
                await self._reply(call, response)
            for work in request.after:  # post_predict: the worker is busy until it ends
                await asyncio.wrap_future(work)
        except asyncio.CancelledError:
            pass  # given up by the front: predict never ran, or has finished (the pipeline waits for a running one)

    async def _reply(self, call: messages.Call, response: Response) -> None:
        """Send the response: whole as a Reply, or, when it streams, as a ReplyStart and Chunks as they come; with a
        post_predict, wait until the front says the client has it all (post_predict runs then, as `play` ends)."""
        wants_sent = response.background is not None
        async with play(response, call.scope) as played:
            if played.chunks is None:
                if wants_sent:  # registered before sending: Sent may come back before send() returns
                    self.sent_future(call.call)
                else:  # nothing left to run for it: this Reply says so, and no Done follows
                    self._replied_done.add(call.call)
                self.channel.send(messages.Reply(call.call, played.status, played.headers, played.body, wants_sent,
                                                 not wants_sent, 0.0 if wants_sent else self._took(call.call)))
            else:
                self.channel.send(messages.ReplyStart(call.call, played.status, played.headers, wants_sent))
                async for chunk in played.chunks:
                    self.channel.send(messages.Chunk(call.call, chunk, False))
                    await self.channel.drain()
                if wants_sent:
                    self.sent_future(call.call)
                self.channel.send(messages.Chunk(call.call, b"", True))
            if wants_sent:
                await self.sent[call.call]


if __name__ == "__main__":
    sys.exit(main())
