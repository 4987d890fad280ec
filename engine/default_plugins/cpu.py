"""The `cpu` hardware target: the default owner of every API without gpu or inf."""
from __future__ import annotations

import os

from engine import hookimpl
from engine.types import Device

# Thread-pool sizes read at import by numpy/BLAS, OpenMP (torch, onnxruntime builds) and numexpr.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                   "NUMEXPR_NUM_THREADS")


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@hookimpl
def engine_hardware_targets():
    """The CPU is always there."""
    return ["cpu"]


@hookimpl(trylast=True)
def engine_setup_device(api, process_index):
    """Share the cores between the API's worker processes instead of letting each take them all."""
    if api.compute.gpu or api.compute.inf:
        return None
    processes = api.predictor.processes_per_replica
    threads = max(1, usable_cores() // processes)
    env = {}
    if processes > 1:  # with one process the frameworks' own defaults (all cores) are right
        for var in THREAD_ENV_VARS:
            if var not in os.environ:
                os.environ[var] = env[var] = str(threads)
    return Device(kind="cpu", process_index=process_index, env=env, threads=threads)
