"""Worker processes: the Backend of an API served by processes_per_replica workers (or by one, with --isolate).

Each worker runs the API's Pipeline (engine.serving.worker_main); this side starts them, hands each request to the
least-loaded one (engine.serving.messages), replaces those that die, retires those past their request or memory limit
(a successor first), kills one that keeps running a request given up long ago, and stops them. The admission layer in
front has already counted each request.
"""
from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from engine import plugins, tempdirs, tracing
from engine.errors import EngineError
from engine.project.config import Api
from engine.serving import messages
from engine.serving.backend import ApiRequest
from engine.serving.metrics import worker_exited
from engine.serving.pipeline import error_response
from engine.settings import ServeSettings

log = logging.getLogger("engine")

# The parts of an ASGI scope a worker needs to rebuild the request (the rest does not cross processes).
_SCOPE_KEYS = ("type", "http_version", "method", "scheme", "path", "raw_path", "root_path", "query_string", "headers",
               "client", "server", tracing.TRACE_KEY)
MEMORY_CHECK_INTERVAL = 1.0  # seconds between looks at the workers' memory, when --worker-memory-limit is set
# A worker whose calls are short (their time in the worker, as it reports it, under SHORT_CALL on a moving average) is
# handed up to PREFETCH calls more than it runs at once: they wait in it, so that it starts the next as one ends, and
# one wake-up of each process carries several calls. Longer calls are not queued in a worker, where they could wait
# behind a long one while another worker is free; a new worker counts as slow until it has finished a short call.
SHORT_CALL = 0.002  # seconds
PREFETCH = 3

Chunks = asyncio.Queue[messages.Chunk | None]  # a streamed reply's chunks; None: the worker died
Answer = messages.Reply | tuple[messages.ReplyStart, Chunks]  # a call's reply, a streamed one with its chunks


class WorkerDied(Exception):
    """The worker running a request exited before answering."""


class Worker:
    """The front's handle on one worker process."""

    def __init__(self, index: int, process: asyncio.subprocess.Process) -> None:
        self.index = index
        self.process = process
        self.channel: messages.Channel  # set once it has connected (WorkerGroup._verdict)
        self.ready = False
        self.replacing = False  # its successor is starting; until it is ready, this one serves on
        self.retiring = False  # its successor serves in its place; it finishes what it has, then exits
        self.load = 0  # calls handed to it and not yet Done (post_predict included)
        self.answered = 0
        self.call_time = SHORT_CALL  # its time on a call, moving average of what it reports (seconds)
        self.pending: dict[int, asyncio.Future[Answer]] = {}  # calls waiting for their Reply (or ReplyStart)
        self.streams: dict[int, Chunks] = {}  # the Chunks of streamed replies, by call
        self.given_up: dict[int, asyncio.Future[None]] = {}  # calls cancelled while it had them → resolved by Done

    async def call(self, call: messages.Call) -> Answer:
        """Hand a call over and wait for its reply (a streamed one comes with the queue of its chunks)."""
        if not self.channel.send(call):
            raise WorkerDied(f"worker process {self.index} has gone")
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.pending[call.call] = future
        return await future

    async def sent(self, call: int) -> None:
        """Tell the worker its reply reached the client, so post_predict may run."""
        self.channel.send(messages.Sent(call))

    def fail_pending(self, reason: str) -> None:
        """Fail every call this worker was running, streams cut off."""
        for future in self.pending.values():
            if not future.done():
                future.set_exception(WorkerDied(reason))
        self.pending.clear()
        for queue in self.streams.values():
            queue.put_nowait(None)
        self.streams.clear()

    def memory(self) -> int:
        """Its resident memory in bytes (0 once it has gone)."""
        try:
            with open(f"/proc/{self.process.pid}/statm") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            return 0


class ForwardedResponse(Response):
    """A worker's reply, sent as it was made; `on_sent` runs once it has been sent (or failed to be)."""

    def __init__(self, reply: messages.Reply, on_sent: Callable[[], Awaitable[None]] | None = None) -> None:
        # not Response.__init__: the worker has rendered the body and its headers already
        self.status_code = reply.status
        self.body = reply.body
        self.raw_headers = reply.headers
        self.background = None
        self.on_sent = on_sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.on_sent is not None:
                await self.on_sent()


class ForwardedStream(Response):
    """A worker's streamed reply, sent chunk by chunk as the worker sends them; a client that leaves cancels it."""

    def __init__(self, start: messages.ReplyStart, chunks: Chunks, on_gone: Callable[[], Awaitable[None]],
                 on_sent: Callable[[], Awaitable[None]] | None) -> None:
        self.status_code = start.status
        self.raw_headers = list(start.headers)
        self.background = None
        self.chunks = chunks
        self.on_gone = on_gone
        self.on_sent = on_sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        gone = asyncio.ensure_future(receive())  # a disconnect, the only message left to receive
        try:
            while True:
                chunk = asyncio.ensure_future(self.chunks.get())
                await asyncio.wait({chunk, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not chunk.done():
                    chunk.cancel()
                    await self.on_gone()
                    return
                got = chunk.result()
                if got is None:  # the worker died mid-stream: cut the response off
                    raise WorkerDied("the worker streaming this response died")
                await send({"type": "http.response.body", "body": got.data, "more_body": not got.last})
                if got.last:
                    return
        finally:
            gone.cancel()
            if self.on_sent is not None:
                await self.on_sent()


class WorkerGroup:
    """The worker processes of one API: a Backend."""

    def __init__(self, api: Api, pm: plugins.PluginManager, *, capacity: int, settings: ServeSettings,
                 on_fatal: Callable[[str], None]) -> None:
        self.api = api
        self.size = api.predictor.processes_per_replica
        self.capacity = capacity  # calls one worker can work on at once (threads, times batch size if batching)
        self.batching = api.predictor.server_side_batching is not None
        self.failure: str | None = None
        self.workers: dict[int, Worker] = {}  # the serving worker of each index
        self._retiring: set[Worker] = set()
        self._starting: set[Worker] = set()  # started, still in __init__
        self._plugins = plugins.portable(pm)  # exactly these plugins in every worker
        self._settings = settings
        self._on_fatal = on_fatal
        self._setup: messages.Setup | None = None
        self._waiting: deque[asyncio.Future[Worker]] = deque()
        self._connections: dict[int, asyncio.Future[tuple[messages.Channel, asyncio.Queue[messages.Message]]]] = {}
        self._calls = itertools.count()
        self._stopping = False
        self._socket_dir: Path | None = None
        self._server: asyncio.Server | None = None
        self._started_once: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # the event loop keeps only weak references to tasks
        # operations run by every worker (Operation.everywhere), one at a time; the latest call of each distinct
        # (operation, body) that succeeded, oldest first, is replayed by a worker that starts later
        self._everywhere = {name for name, found in plugins.operations(pm).items() if found.everywhere}
        self._everywhere_lock = asyncio.Lock()
        self._replayed: dict[tuple[str, bytes], messages.Call] = {}

    @property
    def ready(self) -> bool:
        """True once every worker has finished __init__ once, while at least one is serving."""
        return len(self._started_once) == self.size and any(w.ready for w in self.workers.values())

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self, view: Path, project_root: Path) -> None:
        """Start every worker in parallel and wait until all have finished __init__."""
        self._setup = messages.Setup(self.api, self._plugins, view, project_root, self._settings.model_poll_interval,
                                     self._settings.shows_errors)
        self._socket_dir = tempdirs.make("workers")
        self._server = await asyncio.get_running_loop().create_unix_server(
            self._accept, path=str(self._socket_dir / "workers.sock"))
        await asyncio.gather(*(self._start_worker(index) for index in range(self.size)))
        log.info("api '%s': %d worker process%s ready (%d requests at a time each)", self.api.name, self.size,
                 "es" if self.size > 1 else "", self.capacity)
        if self._settings.worker_memory_limit:
            self._keep(self._watch_memory(self._settings.worker_memory_limit))

    async def _start_worker(self, index: int) -> Worker:
        """Start a worker and wait for its __init__; once ready it serves as `index` (in place of any other)."""
        assert self._socket_dir is not None, "start() makes it first"
        self._connections[index] = asyncio.get_running_loop().create_future()
        log_level = logging.getLevelName(logging.getLogger().level)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine.serving.worker_main", f"--socket={self._socket_dir / 'workers.sock'}",
            f"--index={index}", f"--parent={os.getpid()}", f"--api={self.api.name}", f"--log-level={log_level}")
        worker = Worker(index, process)
        self._keep(self._watch(worker))
        self._starting.add(worker)
        try:
            verdict = await self._verdict(worker)
        finally:
            self._starting.discard(worker)
        if not isinstance(verdict, messages.Ready):
            reason = verdict.details if isinstance(verdict, messages.Failed) \
                else f"the process exited with code {await process.wait()}"
            raise EngineError(f"api '{self.api.name}': worker {index} failed to start:\n{reason}")
        worker.channel.on_message = functools.partial(self._received, worker)
        async with self._everywhere_lock:  # serving from the end of its replay, before any other such call
            await self._replay(worker)
            worker.ready = True
            self.workers[index] = worker
        self._started_once.add(index)
        self._hand_out()
        return worker

    async def _replay(self, worker: Worker) -> None:
        """Run in a new worker the calls of `everywhere` operations the others have run (see Operation)."""
        for recorded in list(self._replayed.values()):
            worker.load += 1
            call = messages.Call(next(self._calls), recorded.kind, recorded.scope, recorded.body)
            try:
                reply = await worker.call(call)
            except WorkerDied:
                raise EngineError(f"api '{self.api.name}': worker {worker.index} exited while it caught up with "
                                  f"the others ({recorded.kind})") from None
            if isinstance(reply, messages.Reply) and reply.status >= 400:
                log.warning("api '%s': worker %d could not catch up with the others: %s answered %d: %s",
                            self.api.name, worker.index, recorded.kind, reply.status,
                            reply.body[:500].decode("utf-8", "replace"))

    def _keep(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _verdict(self, worker: Worker) -> messages.Message | None:
        """The worker's word on its __init__ (Ready or Failed); None if it exits first; a timeout is fatal."""
        async def connect_and_receive() -> messages.Message | None:
            worker.channel, received = await self._connections[worker.index]
            return await messages.first(received, worker.channel)

        receiving = asyncio.ensure_future(connect_and_receive())
        exited = asyncio.ensure_future(worker.process.wait())
        timeout = self._settings.worker_init_timeout
        done, _ = await asyncio.wait({receiving, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        if receiving in done:
            return receiving.result()
        receiving.cancel()
        if not done:
            worker.process.kill()
            raise EngineError(f"api '{self.api.name}': worker {worker.index} did not finish __init__ within "
                              f"{timeout:g} s (raise --worker-init-timeout if it needs longer)")
        return None

    def _accept(self) -> messages.Channel:
        """A worker's connection: until it says Hello (naming its index), nothing else is heard from it."""
        channel = messages.Channel()
        channel.on_message = functools.partial(self._hello, channel)
        return channel

    def _hello(self, channel: messages.Channel, message: messages.Message) -> None:
        assert self._setup is not None, "start() makes it before it accepts"
        if isinstance(message, messages.Hello) and not self._connections[message.worker].done():
            received: asyncio.Queue[messages.Message] = asyncio.Queue()  # its verdict on __init__, for _verdict
            channel.on_message = received.put_nowait
            channel.send(self._setup)
            self._connections[message.worker].set_result((channel, received))

    def _received(self, worker: Worker, message: messages.Message) -> None:
        """A serving worker's message."""
        if isinstance(message, (messages.Reply, messages.ReplyStart)):
            # a streamed reply's chunks go to a queue, handed out with it
            answer: Answer = message if isinstance(message, messages.Reply) else \
                (message, worker.streams.setdefault(message.call, asyncio.Queue()))
            future = worker.pending.pop(message.call, None)
            if future is not None and not future.done():
                future.set_result(answer)
            if isinstance(message, messages.Reply) and message.done:
                self._done(worker, message.call, message.took)
        elif isinstance(message, messages.Chunk):
            queue = worker.streams.get(message.call)
            if queue is not None:
                queue.put_nowait(message)
                if message.last:
                    del worker.streams[message.call]
        elif isinstance(message, messages.Done):
            self._done(worker, message.call, message.took)

    def _done(self, worker: Worker, call: int, took: float) -> None:
        worker.load -= 1
        worker.answered += 1
        worker.call_time += (took - worker.call_time) / 8
        given_up = worker.given_up.pop(call, None)
        if given_up is not None:
            given_up.set_result(None)
        limit = self._settings.max_requests_per_worker
        if limit and worker.answered >= limit and not worker.replacing:
            self._retire(worker, f"it has answered {worker.answered} requests (--max-requests-per-worker)")
        self._hand_out()

    async def _watch(self, worker: Worker) -> None:
        code = await worker.process.wait()
        worker_exited(worker.process.pid)
        worker.ready = False
        self._retiring.discard(worker)
        serving = self.workers.get(worker.index) is worker
        if serving:
            del self.workers[worker.index]
        for given_up in worker.given_up.values():
            given_up.set_result(None)
        worker.given_up.clear()
        worker.fail_pending(f"worker process {worker.index} of api '{self.api.name}' died (exit code {code}) while "
                            "handling this request")
        if self._stopping or not serving or worker.retiring:
            return
        log.error("api '%s': worker %d died with exit code %s; starting a replacement", self.api.name, worker.index,
                  code)
        try:
            await self._start_worker(worker.index)
        except EngineError as error:
            self.failure = str(error)
            self._on_fatal(str(error))

    def _retire(self, worker: Worker, why: str) -> None:
        """Replace a worker gracefully: its successor starts first, then it finishes what it has and exits."""
        worker.replacing = True
        log.info("api '%s': replacing worker %d (pid %d): %s", self.api.name, worker.index, worker.process.pid, why)

        async def replace() -> None:
            try:
                await self._start_worker(worker.index)
            except EngineError as error:
                log.error("api '%s': the successor of worker %d failed to start, so it serves on: %s", self.api.name,
                          worker.index, error)
                worker.replacing = False
                return
            worker.retiring = True  # the successor serves in its place from now on
            self._retiring.add(worker)
            worker.channel.send(messages.Stop())

        self._keep(replace())

    async def _watch_memory(self, limit: int) -> None:
        while not self._stopping:
            await asyncio.sleep(MEMORY_CHECK_INTERVAL)
            for worker in list(self.workers.values()):
                used = worker.memory()
                if used > limit and not worker.replacing:
                    self._retire(worker, f"it uses {used / 2**20:.0f} MiB, over --worker-memory-limit "
                                         f"({limit / 2**20:.0f} MiB)")

    async def stop(self) -> None:
        """Let every worker finish its requests and post_predicts, then exit; those still busy when this is
        cancelled (the shutdown's time is up) are killed, and so at once are those still in __init__."""
        self._stopping = True
        for worker in self._starting:
            worker.process.kill()
        workers: list[Worker] = []
        try:
            if self._waiting:  # requests read before the stop, queued for a free worker: handed out before it goes
                await asyncio.wait(list(self._waiting))
            workers = [*self.workers.values(), *self._retiring]
            for worker in workers:
                worker.channel.send(messages.Stop())
            await asyncio.gather(*(worker.process.wait() for worker in workers))
        finally:
            for worker in {*workers, *self.workers.values(), *self._retiring}:
                if worker.process.returncode is None:
                    worker.process.kill()
            if self._server is not None:
                self._server.close()
            if self._socket_dir is not None:
                tempdirs.remove(self._socket_dir)

    # --- requests ------------------------------------------------------------------------------------

    async def predict(self, request: ApiRequest) -> Response:
        """Forward a prediction to a worker with a free thread."""
        return await self._forward("predict", request)

    async def summary(self, request: ApiRequest) -> Response:
        """The API's summary, from one of its workers."""
        return await self._forward("summary", request)

    async def operate(self, operation: str, request: ApiRequest) -> Response:
        """A plugin's operation, run by one of its workers (by every one, for an `everywhere` operation)."""
        if operation in self._everywhere:
            return await self._everywhere_call(operation, request)
        return await self._forward(f"operate:{operation}", request)

    async def _everywhere_call(self, operation: str, request: ApiRequest) -> Response:
        """Run an operation in every serving worker: the first failure, else the first answer."""
        async with self._everywhere_lock:
            workers = [worker for worker in self.workers.values() if worker.ready]
            if not workers:
                return error_response(503, f"api '{self.api.name}' has no worker process serving right now",
                                      headers={"Retry-After": "1"})
            for worker in workers:
                worker.load += 1  # beyond its threads if need be: it queues behind its requests
            answers = await asyncio.gather(*(self._send(worker, f"operate:{operation}", request)
                                             for worker in workers))
            if any(answer.status_code < 400 for answer in answers):
                key = (operation, request.body)
                self._replayed.pop(key, None)
                scope = {name: request.scope[name] for name in _SCOPE_KEYS
                         if name in request.scope and name != tracing.TRACE_KEY}
                self._replayed[key] = messages.Call(0, f"operate:{operation}", scope, request.body)
        return next((answer for answer in answers if answer.status_code >= 400), answers[0])

    async def _forward(self, kind: str, request: ApiRequest) -> Response:
        return await self._send(await self._acquire(), kind, request)

    async def _send(self, worker: Worker, kind: str, request: ApiRequest) -> Response:
        """Hand a request to a worker whose load already counts it, and forward its reply."""
        call = messages.Call(next(self._calls), kind, {key: request.scope[key] for key in _SCOPE_KEYS
                                                       if key in request.scope}, request.body)
        try:
            reply = await worker.call(call)
        except WorkerDied as error:
            return error_response(502, str(error))
        except asyncio.CancelledError:
            await self._give_up(worker, call.call)
            raise
        if isinstance(reply, messages.Reply):
            return ForwardedResponse(reply, (lambda: worker.sent(call.call)) if reply.wants_sent else None)
        start, chunks = reply

        async def on_gone() -> None:
            worker.streams.pop(call.call, None)
            worker.channel.send(messages.Cancel(call.call))
        return ForwardedStream(start, chunks, on_gone, (lambda: worker.sent(call.call)) if start.wants_sent
                               else None)

    async def _give_up(self, worker: Worker, call: int) -> None:
        """The request was given up while its worker had it: tell the worker (which drops it if predict has not
        started), and wait until the worker is done with it, so that its slot stays taken meanwhile. With
        --worker-kill-after, a worker still running it that much later is killed."""
        worker.pending.pop(call, None)
        done = worker.given_up[call] = asyncio.get_running_loop().create_future()
        worker.channel.send(messages.Cancel(call))
        kill_after = self._settings.worker_kill_after
        timer = asyncio.get_running_loop().call_later(kill_after, self._kill, worker, kill_after) \
            if kill_after else None
        while not done.done():
            try:
                await asyncio.shield(done)
            except asyncio.CancelledError:
                continue
        if timer is not None:
            timer.cancel()

    def _kill(self, worker: Worker, kill_after: float) -> None:
        log.error("api '%s': worker %d (pid %d) is still running a request given up %g s ago (--worker-kill-after); "
                  "killing it and starting a replacement", self.api.name, worker.index, worker.process.pid, kill_after)
        worker.process.kill()

    async def _acquire(self) -> Worker:
        """A worker with a free thread (the least loaded; with batching the fullest); requests wait in arrival order."""
        if not self._waiting:
            worker = self._least_loaded()
            if worker is not None:
                worker.load += 1
                return worker
        future: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                future.result().load -= 1
                self._hand_out()
            raise

    def _least_loaded(self) -> Worker | None:
        if self.batching:  # fill the batch a worker is gathering (calls not yet answered) before starting another
            free = [w for w in self.workers.values() if w.ready and w.load < self.capacity]
            return max(free, key=lambda w: (len(w.pending), -w.index)) if free else None
        free = [w for w in self.workers.values()
                if w.ready and w.load < self.capacity + (PREFETCH if w.call_time < SHORT_CALL else 0)]
        return min(free, key=lambda w: (w.load, w.index)) if free else None

    def _hand_out(self) -> None:
        """Give free threads to waiting requests, first come first served."""
        while self._waiting:
            if self._waiting[0].done():  # its client went away
                self._waiting.popleft()
                continue
            worker = self._least_loaded()
            if worker is None:
                return
            worker.load += 1
            self._waiting.popleft().set_result(worker)
