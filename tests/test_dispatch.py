"""Which worker process gets the next request (engine.serving.worker_pool): the least loaded, or, with batching, the one
gathering a batch."""
from __future__ import annotations

import engine_python_predictor
import pytest

from engine.serving.worker_pool import Worker, WorkerGroup
from engine.settings import ServeSettings
from engine.testing import make_api, plugin_manager


def group(batching: bool, loads: list[int], unanswered: list[int], capacity: int = 2) -> WorkerGroup:
    """A WorkerGroup of ready workers with the given loads and numbers of calls not yet answered."""
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
    return workers


def chosen(workers: WorkerGroup) -> int | None:
    worker = workers._least_loaded()
    return None if worker is None else worker.index


@pytest.mark.parametrize("loads, expected", [([0, 0], 0), ([1, 0], 1), ([1, 1], 0), ([2, 1], 1), ([2, 2], None)])
def test_without_batching_the_least_loaded_worker_with_a_free_thread(loads, expected):
    assert chosen(group(False, loads, loads)) == expected


def test_with_batching_the_worker_gathering_a_batch_gets_the_next_request():
    assert chosen(group(True, [0, 0], [0, 0])) == 0
    assert chosen(group(True, [1, 0], [1, 0])) == 0  # fill worker 0's batch first


def test_with_batching_a_worker_only_finishing_post_predicts_is_not_gathering():
    # worker 0 answered its batch and one post_predict still runs; worker 1 gathers a batch of one
    assert chosen(group(True, [1, 1], [0, 1])) == 1


def test_a_full_worker_is_never_chosen():
    assert chosen(group(True, [2, 1], [2, 1])) == 1
