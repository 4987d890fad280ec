"""Server-side batching: gather concurrent work into batches of at most max_batch_size.

At most `max_concurrent_batches` batches run at once in a process (default 1, as Cortex's batcher ran). When the
next batch starts depends on server_side_batching.dispatch:
- "when_free" (the default): as soon as fewer than max_concurrent_batches run, with whatever waits; what arrives
  while they run forms the next batch. A lone request never waits for an interval, and under load batches fill by
  themselves. Work that arrives together is batched together: a batch is formed at the end of the event-loop pass
  in which a request found room (AsyncBatcher), or once the calls handed to threads with it have reached the batcher
  (ThreadBatcher, waiting at most ARRIVAL_PATIENCE for them).
- "interval" (Cortex's): when max_batch_size items wait or batch_interval has passed since the first of them.

Two gatherers apply them: AsyncBatcher gathers requests on the event loop (the python predictor's list-in, list-out
batching), ThreadBatcher gathers calls from worker threads (transparent batching inside model clients).
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine import tracing

if TYPE_CHECKING:
    from engine.project.config import Api

WHEN_FREE, INTERVAL = "when_free", "interval"
DISPATCH_POLICIES = (WHEN_FREE, INTERVAL)
# How long a ThreadBatcher about to start a batch waits for calls already handed to threads (they were read with the
# ones it holds); a thread waiting for the GIL can take up to sys.getswitchinterval() (5 ms) to run.
ARRIVAL_PATIENCE = 0.005


class Arrivals:
    """Calls on their way to a ThreadBatcher: announced on the event loop when a predict is handed to the API's pool of
    `threads`, and counted until that predict's first call reaches the batcher or the predict ends."""

    def __init__(self, threads: int, patience: float = ARRIVAL_PATIENCE) -> None:
        self.threads = threads
        self.patience = patience
        self.condition = threading.Condition()  # the ThreadBatcher's lock too: an arrival wakes its waiting threads
        self.on_the_way = 0  # announced, not arrived
        self.starting = 0  # of those, running on a thread
        self.holding = 0  # threads running an announced predict
        self._carried = threading.local()

    def announce(self) -> None:
        """One more call is on its way (called before the predict is handed to a thread)."""
        with self.condition:
            self.on_the_way += 1

    def withdraw(self) -> None:
        """An announced predict will never run (it was cancelled while it waited for a thread)."""
        with self.condition:
            self.on_the_way -= 1
            self.condition.notify_all()

    @contextmanager
    def carried(self) -> Iterator[None]:
        """Run an announced predict on this thread: its arrival (or its end without one) is counted once."""
        with self.condition:
            self.starting += 1
            self.holding += 1
        self._carried.pending = True
        try:
            yield
        finally:
            with self.condition:
                if self._carried.pending:
                    self._carried.pending = False
                    self.on_the_way -= 1
                    self.starting -= 1
                self.holding -= 1
                self.condition.notify_all()

    def arrive(self) -> None:
        """This thread's call reached the batcher (under `condition`); later calls of the same predict count not."""
        if getattr(self._carried, "pending", False):
            self._carried.pending = False
            self.on_the_way -= 1
            self.starting -= 1
            self.condition.notify_all()

    def expected(self) -> bool:
        """Whether a call is still on its way and can arrive soon: running, or with a free thread to run it."""
        return self.starting > 0 or (self.on_the_way > 0 and self.holding < self.threads)


@dataclass(frozen=True)
class Batching:
    """An API's server_side_batching as a model client sees it (the `batching` argument of engine_create_client)."""

    max_batch_size: int
    interval: float  # seconds
    on_batch: Callable[[int], None] | None = None  # engine counts batch sizes with it
    dispatch: str = WHEN_FREE
    slots: int = 1  # batches run at once (max_concurrent_batches)
    on_wait: Callable[[float], None] | None = None  # engine times each item's wait for its batch with it
    arrivals: Arrivals | None = None  # the pipeline's announcements of calls on their way (ThreadBatcher only)

    def thread_batcher(self, run_batch: Callable[[Hashable, list[Any]], list[Any]]) -> ThreadBatcher:
        """A ThreadBatcher with the API's limits that merges the client's concurrent calls with `run_batch`."""
        return ThreadBatcher(run_batch, self)


def concurrent_predicts(api: Api) -> int:
    """How many requests one process can usefully hold at once: its threads, or, when batching, the batches that run
    and the one that gathers meanwhile (for a batching client, predict() calls each hold a thread)."""
    threads = api.predictor.threads_per_process
    batching = api.predictor.server_side_batching
    if batching is None:
        return threads
    return max(threads, (batching.max_concurrent_batches + 1) * batching.max_batch_size)


class AsyncBatcher:
    """Gathers items on the event loop and runs each batch with `run` (a coroutine function: the batch's results)."""

    def __init__(self, run: Callable[[list[Any]], Awaitable[list[Any]]], batching: Batching) -> None:
        self.run = run
        self.batching = batching
        # (item, its result, queued since, its trace: (tracing.capture(), queued since in time.time_ns()))
        self._waiting: list[tuple[Any, asyncio.Future[Any], float, tuple[object, int]]] = []
        self._timer: asyncio.TimerHandle | None = None  # "interval": the waiting batch's time runs out
        self._due = False  # "interval": the waiting batch is full or its time is up, and goes once there is room
        self._forming: asyncio.Handle | None = None  # "when_free": the batch forms at the end of this loop pass
        self._running: set[asyncio.Task[list[Any]]] = set()

    async def submit(self, item: Any) -> Any:
        """Wait for the batch holding `item` to run and return its element of the results."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((item, future, time.monotonic(), (tracing.capture(), time.time_ns())))
        if self.batching.dispatch == WHEN_FREE:
            self._form_soon()
        elif len(self._waiting) >= self.batching.max_batch_size:
            self._on_due()
        elif self._timer is None:  # the interval runs from the first request of the batch
            self._timer = loop.call_later(self.batching.interval, self._on_due)
        try:
            return await future
        except asyncio.CancelledError:  # given up (a deadline, a disconnect): leave the batch if it has not run yet
            self._waiting = [entry for entry in self._waiting if entry[1] is not future]
            raise

    def _room(self) -> bool:
        return len(self._running) < self.batching.slots

    def _form_soon(self) -> None:
        """"when_free": start a batch at the end of this loop pass, so that requests read in it join."""
        if self._forming is None and self._room() and self._waiting:
            self._forming = asyncio.get_running_loop().call_soon(self._form, len(self._waiting))

    def _form(self, seen: int) -> None:
        self._forming = None
        if seen < len(self._waiting) < self.batching.max_batch_size:  # this pass brought more: they may not be all
            self._forming = asyncio.get_running_loop().call_soon(self._form, len(self._waiting))
        elif self._room():
            self._start()

    def _on_due(self) -> None:
        """"interval": the waiting batch is full or its time is up; it starts now, or when a running batch ends."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due = True
        if self._room():
            self._start()

    def _start(self) -> None:
        """Run the next batch of what waits."""
        size = self.batching.max_batch_size
        batch, self._waiting = self._waiting[:size], self._waiting[size:]
        if self.batching.dispatch == INTERVAL:
            self._due = len(self._waiting) >= size
            if self._waiting and not self._due:
                self._timer = asyncio.get_running_loop().call_later(self.batching.interval, self._on_due)
        if not batch:
            return
        _observe(self.batching, [queued for _, _, queued, _ in batch])
        items, traces = [item for item, *_ in batch], [trace for *_, trace in batch]
        task = asyncio.ensure_future(_run_traced(self.run, items, traces))  # its own: no request cancels it
        self._running.add(task)
        task.add_done_callback(lambda done: self._finished(done, [future for _, future, *_ in batch]))

    def _finished(self, task: asyncio.Task[list[Any]], futures: list[asyncio.Future[Any]]) -> None:
        self._running.discard(task)
        _settle(futures, task)
        if self.batching.dispatch == WHEN_FREE:  # there is room: what waits forms the next batch
            self._form_soon()
        elif self._due:
            self._start()


async def _run_traced(run: Callable[[list[Any]], Awaitable[list[Any]]], items: list[Any],
                      traces: list[tuple[object, int]]) -> list[Any]:
    """run(items) as a batch span, when any of its requests is traced."""
    with tracing.batch(traces):
        return await run(items)


def _observe(batching: Batching, queued_since: list[float]) -> None:
    """Count a batch's size and each item's wait for it."""
    if batching.on_batch is not None:
        batching.on_batch(len(queued_since))
    if batching.on_wait is not None:
        now = time.monotonic()
        for since in queued_since:
            batching.on_wait(now - since)


def _settle(futures: list[asyncio.Future[Any]], done: asyncio.Future[list[Any]]) -> None:
    error = done.exception() if not done.cancelled() else asyncio.CancelledError()
    results = [] if error else done.result()
    for index, future in enumerate(futures):
        if future.done():  # its client went away
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(results[index])


class _Slot:
    """One call waiting in a ThreadBatcher."""

    __slots__ = ("item", "woken", "result", "error", "taken", "queued", "trace")

    def __init__(self, item: Any) -> None:
        self.item = item
        self.woken = threading.Event()  # set once: to lead the next batch, or when its batch has run
        self.result: Any = None
        self.error: BaseException | None = None
        self.taken = False  # in a batch (woken and not taken: its thread leads the next batch of its key)
        self.queued = time.monotonic()
        self.trace = (tracing.capture(), time.time_ns())  # its request's, for the batch to link to


class ThreadBatcher:
    """Merges concurrent calls from threads into one `run_batch` call per key (e.g. per model version and shape).

    The first call waiting for a key leads: its thread waits for the batch to be ready, takes it (its own call
    first), hands the lead to the next call waiting and runs the batch for everyone in it; the other threads sleep
    until their batch has run. A batch is ready, with "when_free", once there is room and the calls announced with it
    have arrived; with "interval", once it is full or its interval has run out, and there is room.
    """

    def __init__(self, run_batch: Callable[[Hashable, list[Any]], list[Any]], batching: Batching) -> None:
        self.run_batch = run_batch
        self.batching = batching
        self.arrivals = batching.arrivals
        self._lock = self.arrivals.condition if self.arrivals is not None else threading.Condition()
        self._queues: dict[Hashable, list[_Slot]] = {}
        self._started: dict[Hashable, float] = {}
        self._running = 0  # batches running now

    def call(self, key: Hashable, item: Any) -> Any:
        """Run `item` within a batch of items with the same key; returns its own result."""
        slot = _Slot(item)
        with self._lock:
            queue = self._queues.setdefault(key, [])
            leads = not queue  # the first call waiting for its key
            if leads:
                self._started[key] = time.monotonic()
            queue.append(slot)
            if len(queue) == self.batching.max_batch_size:
                self._lock.notify_all()  # its leader need wait no more
            if self.arrivals is not None:
                self.arrivals.arrive()
        if not leads:
            slot.woken.wait()
        if not slot.taken:  # it leads
            with self._lock:
                batch = self._when_ready(key)
            self._run(key, batch)
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _when_ready(self, key: Hashable) -> list[_Slot]:
        """Wait (holding the lock) until `key`'s batch may start, then take it."""
        when_free = self.batching.dispatch == WHEN_FREE
        patience_ends: float | None = None
        while True:
            if self._running >= self.batching.slots:
                patience_ends = None
                self._lock.wait()
                continue
            remaining = self._still_arriving(key, patience_ends) if when_free else self._interval_left(key)
            if remaining is None:
                return self._take(key)
            if when_free:
                patience_ends = patience_ends or time.monotonic() + remaining
            self._lock.wait(remaining)

    def _still_arriving(self, key: Hashable, patience_ends: float | None) -> float | None:
        """"when_free": how long to wait for announced calls before forming `key`'s batch; None when it forms now."""
        arrivals = self.arrivals
        if arrivals is None or not arrivals.expected() or len(self._queues[key]) >= self.batching.max_batch_size:
            return None
        if patience_ends is None:
            return arrivals.patience
        remaining = patience_ends - time.monotonic()
        return remaining if remaining > 0 else None

    def _interval_left(self, key: Hashable) -> float | None:
        """"interval": how long until `key`'s batch is due; None when it is (full, or its time is up)."""
        if len(self._queues[key]) >= self.batching.max_batch_size:
            return None
        remaining = self._started[key] + self.batching.interval - time.monotonic()
        return remaining if remaining > 0 else None

    def _take(self, key: Hashable) -> list[_Slot]:
        queue = self._queues[key]
        batch, rest = queue[:self.batching.max_batch_size], queue[self.batching.max_batch_size:]
        for slot in batch:
            slot.taken = True
        if rest:
            self._queues[key] = rest
            self._started[key] = time.monotonic()
            rest[0].woken.set()  # the lead passes to the next call waiting
        else:
            del self._queues[key]
            del self._started[key]
        self._running += 1
        return batch

    def _run(self, key: Hashable, batch: list[_Slot]) -> None:
        try:
            _observe(self.batching, [slot.queued for slot in batch])
            with tracing.batch([slot.trace for slot in batch]):
                results = self.run_batch(key, [slot.item for slot in batch])
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
        except BaseException as error:  # every caller in the batch sees the failure
            for slot in batch:
                slot.error = error
        finally:
            with self._lock:
                self._running -= 1
                self._lock.notify_all()  # a leader waiting for room may start its batch
            for slot in batch:
                slot.woken.set()
