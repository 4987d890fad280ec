"""--model-memory end to end: ONNX models three times the budget in all, asked for in a skewed (Zipf-like) mix by two
clients, at processes_per_replica 1 and 2. No request fails; each process's resident memory stays under its budget
plus a stated allowance; the hit rate /metrics reports matches an offline least-recently-used-by-bytes simulation of
the sequence each process served."""
from __future__ import annotations

import json
import random
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from support import samples, value

from engine.testing import Server, write_project

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

pytestmark = pytest.mark.e2e

MiB = 2**20
SEED = 29
SIZES_MIB = [1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 5.5, 6, 6.5]  # 45 MiB of models: three times the budget
REQUESTS = 240
ZIPF_EXPONENT = 1.1
# What a serving process holds beyond its models, on top of its resident memory once __init__ has returned:
# onnxruntime's own memory once a first session exists (~12 MiB: thread pools, kernels), and the copy of a file it
# reads while a session loads (at most the largest model, 6.5 MiB).
ALLOWANCE = 24 * MiB

PREDICTOR = """
    import itertools
    import os


    def memory():
        fields = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
        return {name: int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM")}


    class ONNXPredictor:
        def __init__(self, onnx_client, config):
            self.client = onnx_client
            self.served = itertools.count()  # this process's requests, in the order it served them
            self.base = memory()["VmRSS"]

        def predict(self, payload):
            order = next(self.served)
            output = self.client.predict({"i": [0]}, payload["model"])
            return {"pid": os.getpid(), "order": order, "base": self.base, **memory(), "value": float(output[0][0])}
    """


def write_models(root: Path) -> dict[str, tuple[int, float]]:
    """One model per size: Gather from a float32 initializer of that size; name → (file bytes, its first value)."""
    rng = np.random.default_rng(SEED)
    made = {}
    for index, size in enumerate(SIZES_MIB):
        weights = rng.random(int(size * MiB) // 4, dtype=np.float32)
        graph = helper.make_graph(
            [helper.make_node("Gather", ["w", "i"], ["y"], axis=0)], f"m{index}",
            [helper.make_tensor_value_info("i", TensorProto.INT64, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [numpy_helper.from_array(weights, "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        path = root / f"m{index}" / "1" / "model.onnx"
        path.parent.mkdir(parents=True)
        path.write_bytes(model.SerializeToString())
        made[f"m{index}"] = (path.stat().st_size, float(weights[0]))
    return made


def zipf_sequence(names: list[str]) -> list[str]:
    """REQUESTS model names, the k-th most popular asked for in proportion to 1/k**ZIPF_EXPONENT (popularity shuffled
    apart from size)."""
    rng = random.Random(SEED)
    ranked = rng.sample(names, len(names))
    weights = [1 / rank**ZIPF_EXPONENT for rank in range(1, len(ranked) + 1)]
    return rng.choices(ranked, weights, k=REQUESTS)


def simulated_hits(sequence: list[str], sizes: dict[str, int], budget: int) -> int:
    """Hits of a least-recently-used cache bounded by bytes, serving `sequence` in order."""
    cache: OrderedDict[str, int] = OrderedDict()
    hits = 0
    for name in sequence:
        if name in cache:
            hits += 1
            cache.move_to_end(name)
            continue
        while sum(cache.values()) + sizes[name] > budget:
            cache.popitem(last=False)
        cache[name] = sizes[name]
    return hits


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("zipf") / "models"
    return root, write_models(root)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_zipf_mix_over_three_budgets_of_models(tmp_path, models, processes):
    root, made = models
    sizes = {name: size for name, (size, _) in made.items()}
    budget = sum(sizes.values()) // 3
    assert max(sizes.values()) <= budget
    project = write_project(tmp_path / "project", {
        "cortex.yaml": f"""
            - name: zipf
              kind: RealtimeAPI
              predictor:
                type: onnx
                path: predictor.py
                processes_per_replica: {processes}
                models:
                  dir: {root}
            """,
        "predictor.py": PREDICTOR,
    })
    server = Server(project, "--model-memory", str(budget), "--log-level", "warning")
    try:
        server.wait_ready()
        sequence = zipf_sequence(sorted(made))
        with httpx.Client(base_url=server.url, timeout=30) as client, ThreadPoolExecutor(2) as pool:
            responses = list(pool.map(lambda name: client.post("/zipf", json={"model": name}), sequence))
        assert [r.status_code for r in responses if r.status_code != 200] == [], responses[0].text
        answers = [r.json() for r in responses]
        assert all(answer["value"] == made[name][1] for answer, name in zip(answers, sequence, strict=True))

        served: dict[int, list[tuple[int, str]]] = {}
        for answer, name in zip(answers, sequence, strict=True):
            served.setdefault(answer["pid"], []).append((answer["order"], name))
        assert len(served) == processes
        expected = sum(simulated_hits([name for _, name in sorted(seen)], sizes, budget) for seen in served.values())
        found = samples(server)
        hits = sum(value(found, "engine_model_hits_total", api="zipf", model=name) for name in made)
        misses = sum(value(found, "engine_model_misses_total", api="zipf", model=name) for name in made)
        held = sum(value(found, "engine_model_bytes", api="zipf", model=name) for name in made)
        evictions = sum(value(found, "engine_model_evictions_total", api="zipf", model=name, cache="memory")
                        for name in made)
        assert hits + misses == REQUESTS and evictions > 0 and held <= processes * budget
        assert abs(hits - expected) / REQUESTS <= 0.05, (hits, expected)

        peaks = {answer["pid"]: (answer["base"], answer["VmHWM"]) for answer in answers}
        for base, peak in peaks.values():
            assert peak <= base + budget + ALLOWANCE, (peak - base) / MiB
        report = {"processes": processes, "budget_mib": budget / MiB, "hit_rate": hits / REQUESTS,
                  "simulated": expected / REQUESTS, "peak_above_base_mib": [(p - b) / MiB for b, p in peaks.values()]}
        print(json.dumps(report))
    finally:
        server.close()
