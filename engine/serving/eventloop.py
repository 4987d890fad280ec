"""The event loops engine runs: the server's own, and one per API whose predictor has async methods.

An async predictor runs on an event loop of its own, in a thread of its own: a predict that blocks its loop (a
`time.sleep`, a synchronous HTTP call) stalls that API's other async calls, never the server — /healthz, the other
APIs and the admission layer keep answering. Each step of an async call is timed, and one that holds the loop too
long is reported, naming the API.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

log = logging.getLogger("engine")

BLOCKING_STEP = 0.25  # seconds one step of an async call may hold its loop before it is reported
REPORT_EVERY = 10.0  # seconds between two reports for one API
LAG_SAMPLE = 0.25  # seconds between two samples of a predictor loop's lag

T = TypeVar("T")


def run_event_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed (a faster event loop), else on asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


class PredictorLoop:
    """An event loop in a thread of its own, for one API's async methods."""

    def __init__(self, api_name: str, concurrency: int, on_lag: Callable[[float], None]) -> None:
        self.api_name = api_name
        self.concurrency = concurrency  # async calls running at once (threads_per_process)
        self.on_lag = on_lag
        self.loop = asyncio.new_event_loop()
        self._limit: asyncio.Semaphore | None = None
        self.thread = threading.Thread(target=self._run, name=f"api-{api_name}-loop", daemon=True)
        self._reported = 0.0
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._sample, time.perf_counter())
        self.loop.run_forever()

    def _sample(self, scheduled: float) -> None:
        """The loop's lag: how late this callback runs (a blocked loop runs it late)."""
        now = time.perf_counter()
        self.on_lag(max(0.0, now - scheduled))
        self.loop.call_later(LAG_SAMPLE, self._sample, now + LAG_SAMPLE)

    def submit(self, coroutine: Coroutine[Any, Any, T], limited: bool = True) -> Future[T]:
        """Run a coroutine on this loop (`limited`: at most `concurrency` of them at once), each of its steps timed;
        cancelling the future cancels it."""
        return asyncio.run_coroutine_threadsafe(self._run_timed(coroutine, limited), self.loop)

    async def _run_timed(self, coroutine: Coroutine[Any, Any, T], limited: bool) -> T:
        if not limited:
            return await _Timed(coroutine, self._held)
        if self._limit is None:  # made on this loop, where it is used
            self._limit = asyncio.Semaphore(self.concurrency)
        async with self._limit:
            return await _Timed(coroutine, self._held)

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on this loop and wait for its result (from another thread only)."""
        if threading.current_thread() is self.thread:  # e.g. python_client.get_model() inside an async predict
            raise RuntimeError(f"api '{self.api_name}': an async method waited synchronously for another async "
                               "method (such as an async load_model, through python_client.get_model()) on the "
                               "predictor's own event loop; call it from a thread: await asyncio.to_thread(...)")
        return self.submit(coroutine, limited=False).result()

    def _held(self, seconds: float, coroutine: Coroutine[Any, Any, Any]) -> None:
        now = time.monotonic()
        if now - self._reported >= REPORT_EVERY:
            self._reported = now
            log.warning("api '%s': %s held its event loop for %.2f s in one step: the API's other async calls "
                        "waited meanwhile (run blocking work with `await asyncio.to_thread(...)`)", self.api_name,
                        getattr(coroutine, "__qualname__", "an async method"), seconds)

    def stop(self) -> None:
        """Stop the loop once what it runs now has yielded."""
        self.loop.call_soon_threadsafe(self.loop.stop)


class _Timed(Generic[T]):
    """Awaits a coroutine step by step, timing each step (what runs on the loop between two awaits)."""

    def __init__(self, coroutine: Coroutine[Any, Any, T],
                 on_long_step: Callable[[float, Coroutine[Any, Any, Any]], None]) -> None:
        self.coroutine = coroutine
        self.on_long_step = on_long_step

    def __await__(self) -> Generator[Any, Any, T]:
        coroutine, sent, thrown = self.coroutine, None, None
        while True:
            started = time.perf_counter()
            try:
                yielded = coroutine.throw(thrown) if thrown is not None else coroutine.send(sent)
            except StopIteration as done:
                self._check(started)
                value: T = done.value
                return value
            self._check(started)
            try:
                sent, thrown = (yield yielded), None
            except BaseException as error:  # cancellation, thrown into the coroutine at its await
                sent, thrown = None, error

    def _check(self, started: float) -> None:
        held = time.perf_counter() - started
        if held >= BLOCKING_STEP:
            self.on_long_step(held, self.coroutine)
