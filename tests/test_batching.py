"""The batch gatherers: sizes, both dispatch policies, routing of results and failures, keys."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.batching import AsyncBatcher, Batching, ThreadBatcher, concurrent_predicts
from engine.config import Api
from engine.testing import wait_for


def test_thread_batcher_merges_concurrent_calls_and_routes_results():
    batches = []
    barrier = threading.Barrier(8)

    def run(key, items):
        batches.append((key, list(items)))
        return [item * 10 for item in items]

    batcher = ThreadBatcher(run, Batching(4, 30.0, dispatch="interval"))

    def call(i):
        barrier.wait()
        return batcher.call("model", i)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    assert results == [i * 10 for i in range(8)]
    assert sorted(len(items) for _, items in batches) == [4, 4]  # full batches ran without waiting 30 s


def test_thread_batcher_runs_a_partial_batch_after_the_interval():
    sizes = []
    batcher = ThreadBatcher(lambda key, items: [i + 1 for i in items],
                            Batching(100, 0.2, on_batch=sizes.append, dispatch="interval"))
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda i: batcher.call("k", i), range(3))) == [1, 2, 3]
    assert sum(sizes) == 3 and max(sizes) <= 3


def test_thread_batcher_never_merges_different_keys():
    batches = []
    barrier = threading.Barrier(4)
    batcher = ThreadBatcher(lambda key, items: batches.append((key, items)) or [key] * len(items),
                            Batching(2, 30.0, dispatch="interval"))

    def call(i):
        barrier.wait()
        return batcher.call(i % 2, i)

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(call, range(4))) == [0, 1, 0, 1]
    assert all(len({item % 2 for item in items}) == 1 and key == items[0] % 2 for key, items in batches)


def test_thread_batcher_failure_reaches_every_caller():
    def run(key, items):
        raise ValueError("bad batch")

    batcher = ThreadBatcher(run, Batching(2, 0.05, dispatch="interval"))
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(batcher.call, "k", i) for i in range(2)]
        for future in futures:
            with pytest.raises(ValueError, match="bad batch"):
                future.result()


def test_thread_batcher_wrong_number_of_results_is_an_error():
    batcher = ThreadBatcher(lambda key, items: [1], Batching(2, 0.05, dispatch="interval"))
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(batcher.call, "k", i) for i in range(2)]
        errors = [f.exception() for f in futures]
    assert all(isinstance(error, ValueError) for error in errors)


def test_async_batcher_on_interval_sizes_and_failures():
    async def scenario():
        with ThreadPoolExecutor(2) as pool:
            seen = []

            def run(items):
                seen.append(list(items))
                if "boom" in items:
                    raise RuntimeError("boom")
                return [f"{item}!" for item in items]

            async def on_pool(items):
                return await asyncio.get_running_loop().run_in_executor(pool, run, items)

            batcher = AsyncBatcher(on_pool, Batching(3, 0.2, dispatch="interval"))
            full = await asyncio.gather(*(batcher.submit(i) for i in range(3)))
            partial = await asyncio.gather(*(batcher.submit(i) for i in range(2)))
            failed = await asyncio.gather(batcher.submit("boom"), batcher.submit("x"), return_exceptions=True)
            return seen, full, partial, failed

    seen, full, partial, failed = asyncio.run(scenario())
    assert full == ["0!", "1!", "2!"] and partial == ["0!", "1!"]
    assert seen[:2] == [[0, 1, 2], [0, 1]]
    assert all(isinstance(error, RuntimeError) for error in failed)


# --- "when_free": a batch starts as soon as a slot is free, with whatever waits --------------------------------


class Gate:
    """A run_batch that records each batch and holds the first until the test opens the gate."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.first_running = threading.Event()
        self.open = threading.Event()

    def __call__(self, key, items):
        self.batches.append(list(items))
        if len(self.batches) == 1:
            self.first_running.set()
            assert self.open.wait(30)
        return [item * 10 for item in items]


def test_thread_batcher_runs_a_lone_call_at_once_and_queues_behind_a_busy_slot():
    gate, waits = Gate(), []
    batcher = ThreadBatcher(gate, Batching(4, 3600.0, on_wait=waits.append))  # the interval plays no part
    with ThreadPoolExecutor(7) as pool:
        first = pool.submit(batcher.call, "k", 0)
        assert gate.first_running.wait(30)  # a lone call did not wait for a batch to fill
        rest = [pool.submit(batcher.call, "k", i) for i in range(1, 7)]
        wait_for(lambda: len(batcher._queues.get("k", ())) == 6, "six calls queued")
        gate.open.set()
        assert [first.result(30)] + [future.result(30) for future in rest] == [i * 10 for i in range(7)]
    assert [len(batch) for batch in gate.batches] == [1, 4, 2]  # never more than max_batch_size
    assert len(waits) == 7 and min(waits) >= 0


def test_thread_batcher_runs_as_many_batches_at_once_as_it_has_slots():
    both_running = threading.Barrier(2, timeout=30)  # broken unless two batches run at the same time
    batcher = ThreadBatcher(lambda key, items: [both_running.wait() is not None] * len(items),
                            Batching(4, 3600.0, slots=2))
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lambda i: batcher.call("k", i), range(2))) == [True, True]


def test_async_batcher_runs_a_lone_request_at_once_and_batches_what_waits_behind_it():
    async def scenario():
        gate, sizes = Gate(), []
        with ThreadPoolExecutor(1) as pool:
            async def on_pool(items):
                return await asyncio.get_running_loop().run_in_executor(pool, gate, "k", items)

            batcher = AsyncBatcher(on_pool, Batching(4, 3600.0, on_batch=sizes.append))
            first = asyncio.ensure_future(batcher.submit(0))
            await asyncio.to_thread(gate.first_running.wait, 30)
            rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 7)]
            await asyncio.sleep(0)  # every submit has queued
            gate.open.set()
            return await asyncio.gather(first, *rest), sizes

    results, sizes = asyncio.run(scenario())
    assert results == [i * 10 for i in range(7)] and sizes == [1, 4, 2]


@pytest.mark.parametrize("threads, batching, client, expected", [
    (2, None, False, 2), (2, {"max_batch_size": 8, "batch_interval": "10ms"}, False, 16),
    (2, {"max_batch_size": 8, "batch_interval": "10ms"}, True, 8), (16, {"max_batch_size": 8, "batch_interval": "1s"}, True, 16)])
def test_concurrent_predicts(threads, batching, client, expected):
    predictor = {"type": "python", "path": "p.py", "threads_per_process": threads}
    if batching:
        predictor["server_side_batching"] = batching
    api = Api.model_validate({"name": "x", "kind": "RealtimeAPI", "predictor": predictor})
    assert concurrent_predicts(api, client) == expected
