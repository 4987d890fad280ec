"""The batch gatherers: sizes, intervals, routing of results and failures, keys."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.batching import AsyncBatcher, ThreadBatcher, concurrent_predicts
from engine.config import Api


def test_thread_batcher_merges_concurrent_calls_and_routes_results():
    batches = []
    barrier = threading.Barrier(8)

    def run(key, items):
        batches.append((key, list(items)))
        return [item * 10 for item in items]

    batcher = ThreadBatcher(run, max_batch_size=4, interval=30.0)

    def call(i):
        barrier.wait()
        return batcher.call("model", i)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    assert results == [i * 10 for i in range(8)]
    assert sorted(len(items) for _, items in batches) == [4, 4]  # full batches ran without waiting 30 s


def test_thread_batcher_runs_a_partial_batch_after_the_interval():
    sizes = []
    batcher = ThreadBatcher(lambda key, items: [i + 1 for i in items], max_batch_size=100, interval=0.2,
                            on_batch=sizes.append)
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda i: batcher.call("k", i), range(3))) == [1, 2, 3]
    assert sum(sizes) == 3 and max(sizes) <= 3


def test_thread_batcher_never_merges_different_keys():
    batches = []
    barrier = threading.Barrier(4)
    batcher = ThreadBatcher(lambda key, items: batches.append((key, items)) or [key] * len(items),
                            max_batch_size=2, interval=30.0)

    def call(i):
        barrier.wait()
        return batcher.call(i % 2, i)

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(call, range(4))) == [0, 1, 0, 1]
    assert all(len({item % 2 for item in items}) == 1 and key == items[0] % 2 for key, items in batches)


def test_thread_batcher_failure_reaches_every_caller():
    def run(key, items):
        raise ValueError("bad batch")

    batcher = ThreadBatcher(run, max_batch_size=2, interval=0.05)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(batcher.call, "k", i) for i in range(2)]
        for future in futures:
            with pytest.raises(ValueError, match="bad batch"):
                future.result()


def test_thread_batcher_wrong_number_of_results_is_an_error():
    batcher = ThreadBatcher(lambda key, items: [1], max_batch_size=2, interval=0.05)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(batcher.call, "k", i) for i in range(2)]
        errors = [f.exception() for f in futures]
    assert all(isinstance(error, ValueError) for error in errors)


def test_async_batcher_sizes_intervals_and_failures():
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

            batcher = AsyncBatcher(on_pool, max_batch_size=3, interval=0.2)
            full = await asyncio.gather(*(batcher.submit(i) for i in range(3)))
            partial = await asyncio.gather(*(batcher.submit(i) for i in range(2)))
            failed = await asyncio.gather(batcher.submit("boom"), batcher.submit("x"), return_exceptions=True)
            return seen, full, partial, failed

    seen, full, partial, failed = asyncio.run(scenario())
    assert full == ["0!", "1!", "2!"] and partial == ["0!", "1!"]
    assert seen[:2] == [[0, 1, 2], [0, 1]]
    assert all(isinstance(error, RuntimeError) for error in failed)


@pytest.mark.parametrize("threads, batching, client, expected", [
    (2, None, False, 2), (2, {"max_batch_size": 8, "batch_interval": "10ms"}, False, 16),
    (2, {"max_batch_size": 8, "batch_interval": "10ms"}, True, 8), (16, {"max_batch_size": 8, "batch_interval": "1s"}, True, 16)])
def test_concurrent_predicts(threads, batching, client, expected):
    predictor = {"type": "python", "path": "p.py", "threads_per_process": threads}
    if batching:
        predictor["server_side_batching"] = batching
    api = Api.model_validate({"name": "x", "kind": "RealtimeAPI", "predictor": predictor})
    assert concurrent_predicts(api, client) == expected
