"""Server-side batching: gather concurrent work into batches of at most max_batch_size.

Two policies (server_side_batching.dispatch):
- "when_free" (the default): a batch goes to the predictor as soon as one of its slots (threads_per_process) is
  free, holding whatever waits; what arrives while every slot is busy waits and forms the next batch. A lone request
  never waits, and under load batches fill by themselves.
- "interval" (Cortex's): a batch goes when max_batch_size items wait or batch_interval has passed since its first.

Two gatherers apply them: AsyncBatcher gathers requests on the event loop (the python predictor's list-in, list-out
batching), ThreadBatcher gathers calls from worker threads (transparent batching inside model clients).
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

WHEN_FREE, INTERVAL = "when_free", "interval"
DISPATCH_POLICIES = (WHEN_FREE, INTERVAL)


@dataclass(frozen=True)
class Batching:
    """An API's server_side_batching as a model client sees it (the `batching` argument of engine_create_client)."""

    max_batch_size: int
    interval: float  # seconds
    on_batch: Callable[[int], None] | None = None  # engine counts batch sizes with it
    dispatch: str = WHEN_FREE
    slots: int = 1  # batches run at once (threads_per_process)
    on_wait: Callable[[float], None] | None = None  # engine times each item's wait for its batch with it

    def thread_batcher(self, run_batch: Callable[[Hashable, list[Any]], list[Any]]) -> ThreadBatcher:
        """A ThreadBatcher with the API's limits that merges the client's concurrent calls with `run_batch`."""
        return ThreadBatcher(run_batch, self)


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

    def __init__(self, run: Callable[[list[Any]], Awaitable[list[Any]]], batching: Batching) -> None:
        self.run = run
        self.batching = batching
        self._waiting: list[tuple[Any, asyncio.Future, float]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task] = set()

    async def submit(self, item: Any) -> Any:
        """Wait for the batch holding `item` to run and return its element of the results."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((item, future, time.monotonic()))
        if self.batching.dispatch == WHEN_FREE:
            if len(self._running) < self.batching.slots:
                self._dispatch()
        elif len(self._waiting) >= self.batching.max_batch_size:
            self._dispatch()
        elif self._timer is None:  # the interval runs from the first request of the batch
            self._timer = loop.call_later(self.batching.interval, self._dispatch)
        try:
            return await future
        except asyncio.CancelledError:  # given up (a deadline, a disconnect): leave the batch if it has not run yet
            self._waiting = [entry for entry in self._waiting if entry[1] is not future]
            raise

    def _dispatch(self) -> None:
        """Run the next batch of what waits."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        size = self.batching.max_batch_size
        batch, self._waiting = self._waiting[:size], self._waiting[size:]
        if self._waiting and self.batching.dispatch == INTERVAL:
            self._timer = asyncio.get_running_loop().call_later(self.batching.interval, self._dispatch)
        if not batch:
            return
        _observe(self.batching, [queued for _, _, queued in batch])
        task = asyncio.ensure_future(self.run([item for item, _, _ in batch]))  # its own: no request cancels it
        self._running.add(task)
        task.add_done_callback(lambda done: self._finished(done, [future for _, future, _ in batch]))

    def _finished(self, task: asyncio.Task, futures: list[asyncio.Future]) -> None:
        self._running.discard(task)
        _settle(futures, task)
        if self._waiting and self.batching.dispatch == WHEN_FREE:  # a slot is free: the next batch goes now
            self._dispatch()


def _observe(batching: Batching, queued_since: list[float]) -> None:
    """Count a batch's size and each item's wait for it."""
    if batching.on_batch is not None:
        batching.on_batch(len(queued_since))
    if batching.on_wait is not None:
        now = time.monotonic()
        for since in queued_since:
            batching.on_wait(now - since)


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

    __slots__ = ("item", "done", "result", "error", "taken", "queued")

    def __init__(self, item: Any) -> None:
        self.item = item
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.taken = False
        self.queued = time.monotonic()


class ThreadBatcher:
    """Merges concurrent calls from threads into one `run_batch` call per key (e.g. per model version and shape).

    A waiting thread runs a batch for everyone in it: with "when_free", the one that finds a slot free (on arrival,
    or woken when a batch ends); with "interval", the one that fills the batch or whose batch's interval runs out.
    """

    def __init__(self, run_batch: Callable[[Hashable, list[Any]], list[Any]], batching: Batching) -> None:
        self.run_batch = run_batch
        self.batching = batching
        self._lock = threading.Condition()
        self._queues: dict[Hashable, list[_Slot]] = {}
        self._started: dict[Hashable, float] = {}
        self._running = 0  # batches running now

    def call(self, key: Hashable, item: Any) -> Any:
        """Run `item` within a batch of items with the same key; returns its own result."""
        slot = _Slot(item)
        with self._lock:
            queue = self._queues.setdefault(key, [])
            if not queue:
                self._started[key] = time.monotonic()
            queue.append(slot)
            batch = self._when_free(key, slot) if self.batching.dispatch == WHEN_FREE else self._on_interval(key, slot)
        if batch is not None:
            self._run(key, batch)
        slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _when_free(self, key: Hashable, slot: _Slot) -> list[_Slot] | None:
        """The batch this thread runs once a slot is free, or None when another thread took `slot` into its own."""
        while not slot.taken:
            if self._running < self.batching.slots:
                return self._take(key)
            self._lock.wait()
        return None

    def _on_interval(self, key: Hashable, slot: _Slot) -> list[_Slot] | None:
        """The batch this thread runs when it is full or its time is up, or None when another thread runs it."""
        if len(self._queues[key]) >= self.batching.max_batch_size:
            return self._take(key)
        deadline = self._started[key] + self.batching.interval
        while not slot.taken:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._take(key)  # our batch's time is up: we run it
            self._lock.wait(remaining)
            if key in self._started:
                deadline = self._started[key] + self.batching.interval
        return None

    def _take(self, key: Hashable) -> list[_Slot]:
        queue = self._queues[key]
        batch, rest = queue[:self.batching.max_batch_size], queue[self.batching.max_batch_size:]
        for slot in batch:
            slot.taken = True
        if rest:
            self._queues[key] = rest
            self._started[key] = time.monotonic()
        else:
            del self._queues[key]
            del self._started[key]
        self._running += 1
        self._lock.notify_all()
        return batch

    def _run(self, key: Hashable, batch: list[_Slot]) -> None:
        try:
            _observe(self.batching, [slot.queued for slot in batch])
            results = self.run_batch(key, [slot.item for slot in batch])
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
        except BaseException as error:  # every caller in the batch sees the failure
            for slot in batch:
                slot.error = error
        finally:
            with self._lock:
                self._running -= 1
                self._lock.notify_all()  # a waiting thread may take the next batch
            for slot in batch:
                slot.done.set()
