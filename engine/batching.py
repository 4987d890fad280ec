"""Server-side batching: gather concurrent work until max_batch_size items wait or batch_interval has passed.

Two gatherers share the rule: AsyncBatcher gathers requests on the event loop (the python predictor's list-in,
list-out batching), ThreadBatcher gathers calls from worker threads (transparent batching inside model clients).
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config import Api


@dataclass(frozen=True)
class Batching:
    """An API's server_side_batching as a model client sees it (the `batching` argument of engine_create_client)."""

    max_batch_size: int
    interval: float  # seconds
    on_batch: Callable[[int], None] | None = None  # engine counts batch sizes with it

    def thread_batcher(self, run_batch: Callable[[Hashable, list[Any]], list[Any]]) -> ThreadBatcher:
        """A ThreadBatcher with the API's limits that merges the client's concurrent calls with `run_batch`."""
        return ThreadBatcher(run_batch, self.max_batch_size, self.interval, on_batch=self.on_batch)


def concurrent_predicts(api: Api, client_batching: bool) -> int:
    """How many requests one process can usefully hold at once: its threads, times the batch size when batching."""
    threads = api.predictor.threads_per_process
    batching = api.predictor.server_side_batching
    if batching is None:
        return threads
    if client_batching:  # calls merge only while that many predict() calls run at the same time
        return max(threads, batching.max_batch_size)
    return threads * batching.max_batch_size  # each thread runs one batch while the next one gathers


class AsyncBatcher:
    """Gathers items on the event loop and runs each batch with `run` (a coroutine function: the batch's results)."""

    def __init__(self, run: Callable[[list[Any]], Awaitable[list[Any]]], max_batch_size: int, interval: float,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.run = run
        self.on_batch = on_batch
        self.max_batch_size = max_batch_size
        self.interval = interval
        self._waiting: list[tuple[Any, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task] = set()

    async def submit(self, item: Any) -> Any:
        """Wait for the batch holding `item` to run and return its element of the results."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((item, future))
        if len(self._waiting) >= self.max_batch_size:
            self._flush()
        elif self._timer is None:  # the interval runs from the first request of the batch
            self._timer = loop.call_later(self.interval, self._flush)
        try:
            return await future
        except asyncio.CancelledError:  # given up (a deadline, a disconnect): leave the batch if it has not run yet
            self._waiting = [entry for entry in self._waiting if entry[1] is not future]
            raise

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._waiting = self._waiting[:self.max_batch_size], self._waiting[self.max_batch_size:]
        if self._waiting:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._flush)
        if batch:
            if self.on_batch is not None:
                self.on_batch(len(batch))
            task = asyncio.ensure_future(self.run([item for item, _ in batch]))  # its own: no request cancels it
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            task.add_done_callback(lambda done: _settle([future for _, future in batch], done))


def _settle(futures: list[asyncio.Future], done: asyncio.Future) -> None:
    error = done.exception() if not done.cancelled() else asyncio.CancelledError()
    results = None if error else done.result()
    for index, future in enumerate(futures):
        if future.done():  # its client went away
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(results[index])


class _Slot:
    """One call waiting in a ThreadBatcher."""

    __slots__ = ("item", "done", "result", "error", "taken")

    def __init__(self, item: Any) -> None:
        self.item = item
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.taken = False


class ThreadBatcher:
    """Merges concurrent calls from threads into one `run_batch` call per key (e.g. per model version and shape).

    The thread that fills a batch, or whose batch's interval runs out first, runs it for everyone; the others wait.
    """

    def __init__(self, run_batch: Callable[[Hashable, list[Any]], list[Any]], max_batch_size: int,
                 interval: float, on_batch: Callable[[int], None] | None = None) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.interval = interval
        self.on_batch = on_batch
        self._lock = threading.Condition()
        self._queues: dict[Hashable, list[_Slot]] = {}
        self._started: dict[Hashable, float] = {}

    def call(self, key: Hashable, item: Any) -> Any:
        """Run `item` within a batch of items with the same key; returns its own result."""
        slot = _Slot(item)
        batch: list[_Slot] | None = None
        with self._lock:
            queue = self._queues.setdefault(key, [])
            if not queue:
                self._started[key] = time.monotonic()
            queue.append(slot)
            if len(queue) >= self.max_batch_size:
                batch = self._take(key)
            else:
                deadline = self._started[key] + self.interval
                while not slot.taken:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        batch = self._take(key)  # our batch's time is up: we run it
                        break
                    self._lock.wait(remaining)
                    if key in self._started:
                        deadline = self._started[key] + self.interval
        if batch is not None:
            self._run(key, batch)
        slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _take(self, key: Hashable) -> list[_Slot]:
        queue = self._queues[key]
        batch, rest = queue[:self.max_batch_size], queue[self.max_batch_size:]
        for slot in batch:
            slot.taken = True
        if rest:
            self._queues[key] = rest
            self._started[key] = time.monotonic()
        else:
            del self._queues[key]
            del self._started[key]
        self._lock.notify_all()
        return batch

    def _run(self, key: Hashable, batch: list[_Slot]) -> None:
        try:
            if self.on_batch is not None:
                self.on_batch(len(batch))
            results = self.run_batch(key, [slot.item for slot in batch])
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
        except BaseException as error:  # every caller in the batch sees the failure
            for slot in batch:
                slot.error = error
        finally:
            for slot in batch:
                slot.done.set()
