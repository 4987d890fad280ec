"""What hardware targets share: the CPU cores split among an API's worker processes, and the variable through which
a device runtime is told which of the machine's devices a process may use."""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.project.config import Api

# Thread-pool sizes read at import by numpy/BLAS, OpenMP (torch, onnxruntime builds) and numexpr.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                   "NUMEXPR_NUM_THREADS")


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def share_cores(processes: int) -> tuple[int, dict[str, str]]:
    """This process's share of the cores when `processes` processes run an API: its thread count, and the
    THREAD_ENV_VARS set to it here (only with several processes, and only those the user has not set)."""
    threads = max(1, usable_cores() // processes)
    env: dict[str, str] = {}
    if processes > 1:  # with one process the frameworks' own defaults (all cores) are right
        for var in THREAD_ENV_VARS:
            if var not in os.environ:
                os.environ[var] = env[var] = str(threads)
    return threads, env


class VisibleDevices:
    """The variable that tells a device runtime which devices a process may use (CUDA_VISIBLE_DEVICES,
    NEURON_RT_VISIBLE_CORES). The runtime reads it once per process, so it is set once per process; the user's own
    setting, read before it is changed, is kept in ENGINE_USER_<name> for the worker processes that inherit it."""

    UNSET = "<unset>"

    def __init__(self, name: str, devices: str, runtime: str, target: str, log: logging.Logger) -> None:
        self.name = name  # the variable
        self.saved = f"ENGINE_USER_{name}"
        self.devices = devices  # what they are called in messages: "GPUs"
        self.runtime = runtime  # what reads the variable: "CUDA"
        self.target = target  # the kind of API: "GPU"
        self.log = log
        self.setting: str | None = None  # the value set in this process

    def user_setting(self, api: Api) -> str | None:
        """The variable as the user set it (predictor.env first), even after this process changed it."""
        if self.name in api.predictor.env:
            return api.predictor.env[self.name]
        saved = os.environ.get(self.saved)
        if saved is not None:
            return None if saved == self.UNSET else saved
        return os.environ.get(self.name)

    def claim(self, api: Api, value: str) -> dict[str, str]:
        """Set the variable to `value` for `api`, and give what was set: once set in this process, a different value
        is warned about and not set (nothing)."""
        if self.setting is not None and self.setting != value:
            self.log.warning("api '%s' asks for %s %s, but this process already exposes %s=%s to another API, and %s "
                             "reads it only once per process; serve each %s API with processes_per_replica >= 2 (its "
                             "workers are processes of their own) or in its own engine serve", api.name, self.devices,
                             value, self.name, self.setting, self.runtime, self.target)
            return {}
        os.environ.setdefault(self.saved, os.environ.get(self.name, self.UNSET))
        os.environ[self.name] = self.setting = value
        return {self.name: value}
