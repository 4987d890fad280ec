"""Fixtures: fake Neuron machines (neuron-ls output, device nodes, sysfs, libnrt, framework packages) per test."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # neuron_testing, shared by this folder's test modules

from neuron_testing import FakeNeuronMachine  # noqa: E402

NEURON_ENV = ("NEURON_RT_VISIBLE_CORES", "NEURONCORE_GROUP_SIZES", "NEURON_RTD_ADDRESS",
              "ENGINE_USER_NEURON_RT_VISIBLE_CORES", "ENGINE_NEURON_ROOT", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No Neuron or thread variables from the machine running the tests; all of them restored afterwards."""
    for name in NEURON_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """An empty fake machine under tmp_path; tests add devices, neuron-ls, the runtime and frameworks."""
    return FakeNeuronMachine(tmp_path / "root", tmp_path / "site", monkeypatch)
