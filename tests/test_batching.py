"""The batch gatherers: sizes, both dispatch policies, routing of results and failures, keys."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.project.config import Api
from engine.serving.batching import (
    Arrivals,
    AsyncBatcher,
    Batching,
    ThreadBatcher,
    concurrent_predicts,
)
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


@pytest.mark.parametrize("threads, batching, expected", [
    (2, None, 2),
    (2, {"max_batch_size": 8, "batch_interval": "10ms"}, 16),  # one batch runs, the next gathers
    (4, {"max_batch_size": 4, "batch_interval": "10ms"}, 8),  # Cortex's threads_per_process == max_batch_size
    (2, {"max_batch_size": 8, "batch_interval": "10ms", "max_concurrent_batches": 3}, 32),
    (64, {"max_batch_size": 8, "batch_interval": "1s"}, 64)])
def test_concurrent_predicts(threads, batching, expected):
    predictor = {"type": "python", "path": "p.py", "threads_per_process": threads}
    if batching:
        predictor["server_side_batching"] = batching
    api = Api.model_validate({"name": "x", "kind": "RealtimeAPI", "predictor": predictor})
    assert concurrent_predicts(api) == expected


# --- one batch at a time by default, and what arrives together goes together --------------------------------------


def test_async_batcher_runs_one_batch_at_a_time_whatever_threads_it_has():
    async def scenario():
        gate, sizes = Gate(), []
        with ThreadPoolExecutor(8) as pool:  # threads to spare: only max_concurrent_batches (1) holds batches back
            async def on_pool(items):
                return await asyncio.get_running_loop().run_in_executor(pool, gate, "k", items)

            batcher = AsyncBatcher(on_pool, Batching(4, 3600.0, on_batch=sizes.append))
            first = asyncio.ensure_future(batcher.submit(0))
            await asyncio.to_thread(gate.first_running.wait, 30)
            rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 5)]
            for _ in range(5):  # passes of the loop: nothing else starts while the first batch runs
                await asyncio.sleep(0)
            assert sizes == [1]
            gate.open.set()
            return await asyncio.gather(first, *rest), sizes

    results, sizes = asyncio.run(scenario())
    assert results == [i * 10 for i in range(5)] and sizes == [1, 4]


def test_async_batcher_batches_requests_submitted_in_one_loop_pass_together():
    async def scenario():
        batches = []

        async def run(items):
            batches.append(list(items))
            return items

        batcher = AsyncBatcher(run, Batching(4, 3600.0))
        results = await asyncio.gather(*(batcher.submit(i) for i in range(6)))
        return results, batches

    results, batches = asyncio.run(scenario())
    assert results == list(range(6)) and batches == [[0, 1, 2, 3], [4, 5]]


def test_async_batcher_runs_as_many_batches_at_once_as_max_concurrent_batches():
    async def scenario():
        both_running = asyncio.Barrier(2)

        async def run(items):
            async with asyncio.timeout(30):  # a timeout unless two batches run at once
                await both_running.wait()
            return items

        batcher = AsyncBatcher(run, Batching(2, 3600.0, slots=2))
        first = asyncio.ensure_future(batcher.submit("a"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the first batch has started, alone
        return await asyncio.gather(first, batcher.submit("b"))

    assert asyncio.run(scenario()) == ["a", "b"]


def test_async_batcher_on_interval_waits_for_the_running_batch_before_the_next():
    async def scenario():
        gate, sizes = Gate(), []
        with ThreadPoolExecutor(4) as pool:
            async def on_pool(items):
                return await asyncio.get_running_loop().run_in_executor(pool, gate, "k", items)

            batcher = AsyncBatcher(on_pool, Batching(2, 3600.0, on_batch=sizes.append, dispatch="interval"))
            full = [asyncio.ensure_future(batcher.submit(i)) for i in range(2)]
            await asyncio.to_thread(gate.first_running.wait, 30)
            due = [asyncio.ensure_future(batcher.submit(i)) for i in range(2, 6)]  # two more full batches
            for _ in range(5):
                await asyncio.sleep(0)
            assert sizes == [2]  # full, but the running batch holds them back
            gate.open.set()
            return await asyncio.gather(*full, *due), sizes

    results, sizes = asyncio.run(scenario())
    assert results == [i * 10 for i in range(6)] and sizes == [2, 2, 2]


def run_announced(arrivals, batcher, pool, items, started=None):
    """Announce each item, then hand it to a thread as the pipeline does with a batching client's predict."""
    def predict(item):
        with arrivals.carried():
            if started is not None:
                started.wait(30)
            return batcher.call("k", item)

    for _ in items:
        arrivals.announce()
    return [pool.submit(predict, item) for item in items]


def test_thread_batcher_waits_for_the_calls_announced_with_it():
    batches = []
    arrivals = Arrivals(threads=8, patience=3600.0)  # the batch forms only because every announced call came
    batcher = ThreadBatcher(lambda key, items: batches.append(list(items)) or items,
                            Batching(8, 3600.0, arrivals=arrivals))
    with ThreadPoolExecutor(8) as pool:
        futures = run_announced(arrivals, batcher, pool, range(5))
        assert [future.result(30) for future in futures] == list(range(5))
    assert batches == [[0, 1, 2, 3, 4]] and arrivals.on_the_way == 0


def test_an_announced_predict_that_never_calls_the_batcher_does_not_hold_the_batch():
    batches = []
    arrivals = Arrivals(threads=4, patience=3600.0)
    batcher = ThreadBatcher(lambda key, items: batches.append(list(items)) or items,
                            Batching(4, 3600.0, arrivals=arrivals))
    leave = threading.Event()

    def no_call():
        with arrivals.carried():
            leave.wait(30)

    with ThreadPoolExecutor(4) as pool:
        arrivals.announce()
        silent = pool.submit(no_call)
        arrivals.announce()
        caller = pool.submit(lambda: _call_carried(arrivals, batcher, "x"))
        wait_for(lambda: arrivals.starting == 1 and arrivals.on_the_way == 1, "the caller waits for the other")
        assert not caller.done()
        leave.set()  # the other predict ends without calling the batcher: the batch forms at once
        assert caller.result(30) == "x"
        silent.result(30)
    assert batches[-1] == ["x"] and arrivals.on_the_way == 0


def _call_carried(arrivals, batcher, item):
    with arrivals.carried():
        return batcher.call("k", item)


def test_a_withdrawn_announcement_does_not_hold_the_batch():
    arrivals = Arrivals(threads=4, patience=3600.0)
    batcher = ThreadBatcher(lambda key, items: items, Batching(4, 3600.0, arrivals=arrivals))
    with ThreadPoolExecutor(4) as pool:
        arrivals.announce()
        arrivals.announce()  # the second predict is cancelled before a thread takes it
        caller = pool.submit(_call_carried, arrivals, batcher, "x")
        wait_for(lambda: arrivals.on_the_way == 1, "the first call arrived and waits")
        arrivals.withdraw()
        assert caller.result(30) == "x"


def test_calls_that_cannot_get_a_thread_are_not_waited_for():
    arrivals = Arrivals(threads=1, patience=3600.0)  # every thread busy: nothing more can arrive soon
    batcher = ThreadBatcher(lambda key, items: items, Batching(4, 3600.0, arrivals=arrivals))
    with ThreadPoolExecutor(1) as pool:
        futures = run_announced(arrivals, batcher, pool, range(3))
        assert [future.result(30) for future in futures] == [0, 1, 2]


def test_patience_bounds_the_wait_for_announced_calls():
    arrivals = Arrivals(threads=4, patience=0.01)
    batcher = ThreadBatcher(lambda key, items: items, Batching(4, 3600.0, arrivals=arrivals))
    started = threading.Event()  # the second predict keeps its thread and calls only once the first is answered

    def predict(item, wait):
        with arrivals.carried():
            if wait:
                assert started.wait(30)
            return batcher.call("k", item)

    with ThreadPoolExecutor(4) as pool:
        arrivals.announce()
        arrivals.announce()
        first, second = pool.submit(predict, "a", False), pool.submit(predict, "b", True)
        assert first.result(30) == "a"  # formed alone once its patience ran out
        started.set()
        assert second.result(30) == "b"
