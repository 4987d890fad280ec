"""Which worker process gets the next request (engine.serving.worker_pool): the least loaded, or, with batching, the one
gathering a batch; a worker whose calls are short holds a few more than it runs at once."""
from __future__ import annotations

import engine_python_predictor
import pytest

from engine.serving.worker_pool import PREFETCH, SHORT_CALL, Worker, WorkerGroup
from engine.settings import ServeSettings
from engine.testing import make_api, plugin_manager


def group(batching: bool, loads: list[int], unanswered: list[int], capacity: int = 2,
          call_time: float = 1.0) -> WorkerGroup:
    """A WorkerGroup of ready workers with the given loads, numbers of calls not yet answered and mean call time."""
    predictor = {"type": "python", "path": "predictor.py", "processes_per_replica": len(loads)}
    if batching:
        predictor["server_side_batching"] = {"max_batch_size": capacity, "batch_interval": "1s"}
    api = make_api({"name": "api", "kind": "RealtimeAPI", "predictor": predictor})
    workers = WorkerGroup(api, plugin_manager(engine_python_predictor), capacity=capacity, settings=ServeSettings(),
                          on_fatal=print)
    for index, (load, waiting) in enumerate(zip(loads, unanswered, strict=True)):
        worker = workers.workers[index] = Worker(index, None)
        worker.ready, worker.load = True, load
        worker.pending = {call: None for call in range(waiting)}
        worker.call_time = call_time
    return workers


def chosen(workers: WorkerGroup) -> int | None:
    worker = workers._least_loaded()
    return None if worker is None else worker.index


@pytest.mark.parametrize("loads, expected", [([0, 0], 0), ([1, 0], 1), ([1, 1], 0), ([2, 1], 1), ([2, 2], None)])
def test_without_batching_the_least_loaded_worker_with_a_free_thread(loads, expected):
    assert chosen(group(False, loads, loads)) == expected


def test_a_worker_with_short_calls_is_handed_up_to_prefetch_more_than_its_threads_least_loaded_first():
    short = SHORT_CALL / 10
    assert chosen(group(False, [2, 1], [2, 1], call_time=short)) == 1
    assert chosen(group(False, [2, 2], [2, 2], call_time=short)) == 0
    assert chosen(group(False, [2 + PREFETCH, 2 + PREFETCH - 1], [0, 0], call_time=short)) == 1
    assert chosen(group(False, [2 + PREFETCH] * 2, [0, 0], call_time=short)) is None


def test_a_new_worker_counts_as_slow_until_it_has_finished_a_short_call():
    workers = group(False, [2, 2], [2, 2])
    for worker in workers.workers.values():
        worker.call_time = Worker(0, None).call_time
    assert chosen(workers) is None
    workers._done(workers.workers[1], 0, took=SHORT_CALL / 100)  # frees a thread, and its calls are short now
    workers.workers[1].load += 1
    assert chosen(workers) == 1


def test_with_batching_no_call_waits_in_a_worker_beyond_its_capacity():
    assert chosen(group(True, [2, 2], [2, 2], call_time=SHORT_CALL / 10)) is None


def test_with_batching_the_worker_gathering_a_batch_gets_the_next_request():
    assert chosen(group(True, [0, 0], [0, 0])) == 0
    assert chosen(group(True, [1, 0], [1, 0])) == 0  # fill worker 0's batch first


def test_with_batching_a_worker_only_finishing_post_predicts_is_not_gathering():
    # worker 0 answered its batch and one post_predict still runs; worker 1 gathers a batch of one
    assert chosen(group(True, [1, 1], [0, 1])) == 1


def test_a_full_worker_is_never_chosen():
    assert chosen(group(True, [2, 1], [2, 1])) == 1
