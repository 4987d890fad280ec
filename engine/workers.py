"""processes_per_replica > 1: worker processes behind the front process, each request to the least-loaded one."""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
from collections import deque
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from engine import ipc, tempdirs
from engine.config import Api
from engine.errors import EngineError
from engine.metrics import Metrics, worker_exited
from engine.runtime import error_response, too_many_in_flight
from engine.settings import ServeSettings

log = logging.getLogger("engine")

# The parts of an ASGI scope a worker needs to rebuild the request (the rest does not cross processes).
_SCOPE_KEYS = ("type", "http_version", "method", "scheme", "path", "raw_path", "root_path", "query_string", "headers",
               "client", "server")


class WorkerDied(Exception):
    """The worker running a request exited before answering."""


class Worker:
    """The front's handle on one worker process."""

    def __init__(self, index: int, process: asyncio.subprocess.Process) -> None:
        self.index = index
        self.process = process
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ready = False
        self.load = 0  # requests handed to it and not yet done (post_predict included)
        self.pending: dict[int, asyncio.Future] = {}

    async def call(self, request_id: int, method: str, scope: dict, body: bytes) -> tuple:
        """Hand a request over and wait for its response."""
        future = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        await ipc.send(self.writer, ("request", request_id, method, scope, body))
        return await future

    async def ack(self, request_id: int) -> None:
        """Tell the worker its response reached the client, so post_predict may run."""
        if not self.writer.is_closing():
            await ipc.send(self.writer, ("ack", request_id))

    def fail_pending(self, reason: str) -> None:
        """Fail every request this worker was running."""
        for future in self.pending.values():
            if not future.done():
                future.set_exception(WorkerDied(reason))
        self.pending.clear()


class ForwardedResponse(Response):
    """A worker's response, sent as it was made; the worker learns when it has been sent (or failed to)."""

    def __init__(self, status: int, raw_headers: list, body: bytes, on_sent: Any = None) -> None:
        super().__init__(body, status_code=status)
        self.raw_headers = raw_headers
        self.on_sent = on_sent

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.on_sent is not None:
                await self.on_sent()


class WorkerGroup:
    """The processes_per_replica workers of one API, with least-loaded dispatch and replacement of dead workers."""

    def __init__(self, api: Api, metrics: Metrics, *, capacity: int, config_file: Path, settings: ServeSettings,
                 on_fatal: Any) -> None:
        self.api = api
        self.metrics = metrics
        self.size = api.predictor.processes_per_replica
        self.capacity = capacity  # requests one worker can work on at once (threads, times batch size if batching)
        self.batching = api.predictor.server_side_batching is not None
        self.max_in_flight = api.autoscaling.max_replica_concurrency
        self.in_flight = 0
        self.failure: str | None = None
        self.workers: dict[int, Worker] = {}
        self._args = [f"--config={config_file}", f"--api={api.name}",
                      f"--model-poll-interval={settings.model_poll_interval}",
                      f"--log-level={logging.getLevelName(logging.getLogger().level)}",
                      *(["--cpu"] if settings.cpu else [])]
        self._init_timeout = settings.worker_init_timeout
        self._on_fatal = on_fatal
        self._waiting: deque[asyncio.Future] = deque()
        self._connections: dict[int, asyncio.Future] = {}
        self._request_ids = itertools.count()
        self._stopping = False
        self._socket_dir: Path | None = None
        self._server: asyncio.AbstractServer | None = None
        self._started_once: set[int] = set()
        self._tasks: set[asyncio.Task] = set()  # the event loop keeps only weak references to tasks

    @property
    def ready(self) -> bool:
        """True once every worker has finished __init__ once, while at least one is serving."""
        return len(self._started_once) == self.size and any(w.ready for w in self.workers.values())

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self, view: Path, project_root: Path) -> None:
        """Start every worker in parallel and wait until all have finished __init__."""
        self._socket_dir = tempdirs.make("workers")
        socket = self._socket_dir / "workers.sock"
        self._args += [f"--socket={socket}", f"--view={view}", f"--project={project_root}"]
        self._server = await asyncio.start_unix_server(self._accept, path=str(socket))
        await asyncio.gather(*(self._start_worker(index) for index in range(self.size)))
        log.info("api '%s': %d worker processes ready (%d requests at a time each)", self.api.name, self.size,
                 self.capacity)

    async def _start_worker(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        self._connections[index] = loop.create_future()
        process = await asyncio.create_subprocess_exec(sys.executable, "-m", "engine.worker", f"--index={index}",
                                                       f"--parent={os.getpid()}", *self._args)
        worker = self.workers[index] = Worker(index, process)
        self._keep(self._watch(worker))
        message = await self._first_message(worker)
        if message is None or message[0] != "ready":
            reason = message[1] if message else f"the process exited with code {await process.wait()}"
            raise EngineError(f"api '{self.api.name}': worker {index} failed to start:\n{reason}")
        worker.ready = True
        self._started_once.add(index)
        self._keep(self._read(worker))
        self._hand_out()

    def _keep(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _first_message(self, worker: Worker) -> tuple | None:
        """The worker's verdict on its __init__ ("ready" or "failed"); None if it exits first; timeout is fatal."""
        async def connect_and_receive() -> tuple | None:
            worker.reader, worker.writer = await self._connections[worker.index]
            return await ipc.receive(worker.reader)

        receiving = asyncio.ensure_future(connect_and_receive())
        exited = asyncio.ensure_future(worker.process.wait())
        done, _ = await asyncio.wait({receiving, exited}, timeout=self._init_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        if receiving in done:
            return receiving.result()
        receiving.cancel()
        if not done:
            worker.process.kill()
            raise EngineError(f"api '{self.api.name}': worker {worker.index} did not finish __init__ within "
                              f"{self._init_timeout:g} s (raise --worker-init-timeout if it needs longer)")
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = await ipc.receive(reader)
        if hello and hello[0] == "hello" and not self._connections[hello[1]].done():
            self._connections[hello[1]].set_result((reader, writer))

    async def _read(self, worker: Worker) -> None:
        while (message := await ipc.receive(worker.reader)) is not None:
            if message[0] == "response":
                future = worker.pending.pop(message[1], None)
                if future is not None and not future.done():
                    future.set_result(message[2:])
            elif message[0] == "done":
                worker.load -= 1
                self._hand_out()

    async def _watch(self, worker: Worker) -> None:
        code = await worker.process.wait()
        worker_exited(worker.process.pid)
        worker.ready = False
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        worker.fail_pending(f"worker process {worker.index} of api '{self.api.name}' died (exit code {code}) while "
                            "handling this request")
        if self._stopping or worker.index not in self._started_once:
            return
        log.error("api '%s': worker %d died with exit code %s; starting a replacement", self.api.name, worker.index,
                  code)
        try:
            await self._start_worker(worker.index)
        except EngineError as error:
            self.failure = str(error)
            self._on_fatal(str(error))

    async def stop(self) -> None:
        """Let every worker finish its requests and post_predicts, then exit."""
        self._stopping = True
        for worker in list(self.workers.values()):
            if worker.writer is not None and not worker.writer.is_closing():
                await ipc.send(worker.writer, ("stop",))
        for worker in list(self.workers.values()):
            try:
                await asyncio.wait_for(worker.process.wait(), 60)
            except asyncio.TimeoutError:
                worker.process.kill()
        if self._server is not None:
            self._server.close()
        if self._socket_dir is not None:
            tempdirs.remove(self._socket_dir)

    # --- requests ------------------------------------------------------------------------------------

    async def handle_post(self, request: Request) -> Response:
        """Forward a prediction to a worker with a free thread."""
        return await self.metrics.observed(self.api.name, request, self._limited_forward)

    async def handle_get(self, request: Request) -> Response:
        """The API's summary, from one of its workers."""
        return await self.metrics.observed(self.api.name, request, self._forward)

    async def _limited_forward(self, request: Request) -> Response:
        if self.in_flight >= self.max_in_flight:
            return too_many_in_flight(self.api.name, self.in_flight, self.metrics)
        self.in_flight += 1
        gauge = self.metrics.child(self.metrics.in_flight, self.api.name)
        gauge.inc()
        try:
            return await self._forward(request)
        finally:
            self.in_flight -= 1
            gauge.dec()

    async def _forward(self, request: Request) -> Response:
        if not self.ready:
            reason = f"failed to start: {self.failure}" if self.failure else "its workers are still initialising"
            return error_response(503, f"api '{self.api.name}' is not ready: {reason}")
        body = await request.body()
        worker = await self._acquire()
        request_id = next(self._request_ids)
        scope = {key: request.scope[key] for key in _SCOPE_KEYS if key in request.scope}
        try:
            status, headers, content, wants_ack = await worker.call(request_id, request.method, scope, body)
        except WorkerDied as error:
            return error_response(502, str(error))
        return ForwardedResponse(status, headers, content, (lambda: worker.ack(request_id)) if wants_ack else None)

    async def _acquire(self) -> Worker:
        """A worker with a free thread (the least loaded; with batching the fullest); requests wait in arrival order."""
        if not self._waiting:
            worker = self._least_loaded()
            if worker is not None:
                worker.load += 1
                return worker
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                future.result().load -= 1
                self._hand_out()
            raise

    def _least_loaded(self) -> Worker | None:
        free = [w for w in self.workers.values() if w.ready and w.load < self.capacity]
        if not free:
            return None
        if self.batching:  # fill one worker's batch before starting another's, so batches fill at full rate
            return max(free, key=lambda w: (w.load, -w.index))
        return min(free, key=lambda w: (w.load, w.index))

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
