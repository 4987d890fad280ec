"""Simulated GPUs and APIs for the CUDA plugin's tests."""
from __future__ import annotations

from engine_hw_cuda import Gpu

from engine import Api

H100 = "NVIDIA H100 80GB HBM3"


def gpus(*names: str) -> list[Gpu]:
    """A simulated device list, as NVML would number it."""
    return [Gpu(index, name, f"GPU-{index}a2b3c4d-0000-0000-0000-00000000000{index}", 80 * 2**30)
            for index, name in enumerate(names)]


def make_api(gpu: int = 1, processes: int = 1, type_: str = "python", env: dict | None = None,
             name: str = "clf") -> Api:
    """An API asking for `gpu` GPUs with `processes` worker processes."""
    return Api.model_validate({"name": name, "kind": "RealtimeAPI", "compute": {"gpu": gpu},
                               "predictor": {"type": type_, "path": "predictor.py", "processes_per_replica": processes,
                                             "env": env or {}}})
