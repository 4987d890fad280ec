"""Fixtures: fresh plugin managers over simulated GPUs, and a clean CUDA environment per test."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # cuda_testing, shared by this folder's test modules

from engine_hw_cuda import CudaTarget, Gpu  # noqa: E402

from engine import testing  # noqa: E402

# Every variable the plugin reads or sets; each test starts without them and gets the real ones back afterwards.
CUDA_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "ENGINE_USER_CUDA_VISIBLE_DEVICES", "ENGINE_SIMULATED_GPUS",
            "TF_FORCE_GPU_ALLOW_GROWTH", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No CUDA or thread variables from the machine running the tests; all of them restored afterwards."""
    for name in CUDA_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


@pytest.fixture(autouse=True)
def no_onnxruntime(monkeypatch):
    """Tests that check the onnxruntime warning choose its providers; the others see no onnxruntime."""
    monkeypatch.setattr("engine_hw_cuda.target.onnxruntime_providers", lambda: None)


@pytest.fixture
def plugin_manager():
    """A fresh plugin manager with the built-in defaults and a CudaTarget over a given device list."""

    def make(devices: list[Gpu]):
        return testing.plugin_manager(cuda=CudaTarget(discover=lambda: list(devices)))

    return make
