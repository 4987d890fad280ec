"""Finding the GPUs: NVML (nvidia-ml-py) on a real machine, or the list that $ENGINE_SIMULATED_GPUS names."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SIMULATED_ENV = "ENGINE_SIMULATED_GPUS"

# NVML return codes (nvml.h) that have a more useful explanation than NVML's own text.
_NVML_HINTS: dict[object, str] = {
    4: "no permission to open the GPUs (check the permissions of /dev/nvidia*, or give the container its GPUs, e.g. "
       "docker run --gpus all)",
    9: "the NVIDIA driver is not loaded (nvidia-smi should list the GPUs; a reboot may be needed after installing it)",
    12: "the NVIDIA driver's NVML library (libnvidia-ml.so.1) was not found: no NVIDIA driver is installed on this "
        "machine, or its libraries are not on the library path",
    18: "the NVIDIA driver's library and kernel module have different versions (reboot after a driver update)",
}


@dataclass(frozen=True)
class Gpu:
    """One GPU as NVML numbers it: `index` is nvidia-smi's index (PCI bus order)."""

    index: int
    name: str
    uuid: str
    memory_total: int = 0  # bytes; 0 when unknown

    def describe(self) -> str:
        """`0: NVIDIA H100 80GB HBM3`."""
        return f"{self.index}: {self.name}"


class DiscoveryError(Exception):
    """The GPUs cannot be listed (no driver, no NVML library, no permission); the message says why."""


Discover = Callable[[], list[Gpu]]


def discover_gpus() -> list[Gpu]:
    """This machine's GPUs: the simulated list when $ENGINE_SIMULATED_GPUS is set, else NVML's."""
    simulated = os.environ.get(SIMULATED_ENV)
    if simulated is not None:
        return simulated_gpus(simulated)
    return nvml_gpus()


def simulated_gpus(names: str) -> list[Gpu]:
    """GPUs named by a comma-separated list (`NVIDIA T4,NVIDIA T4`), for tests and for validating on a CPU machine."""
    listed = [name.strip() for name in names.split(",") if name.strip()]
    return [Gpu(index, name, f"GPU-00000000-0000-0000-0000-{index:012d}") for index, name in enumerate(listed)]


def nvml_gpus(nvml: Any = None) -> list[Gpu]:
    """Every GPU NVML lists (index, name, UUID, memory); `nvml` is the pynvml module or a stand-in with its API."""
    if nvml is None:
        try:
            import pynvml
        except ImportError:
            raise DiscoveryError("nvidia-ml-py is not installed (pip install nvidia-ml-py, or reinstall "
                                 "'engine[gpu]')") from None
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:
        raise DiscoveryError(_explain(error)) from None
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(Gpu(index, _text(nvml.nvmlDeviceGetName(handle)), _text(nvml.nvmlDeviceGetUUID(handle)),
                            int(nvml.nvmlDeviceGetMemoryInfo(handle).total)))
        return gpus
    except nvml.NVMLError as error:
        raise DiscoveryError(f"NVML failed while listing the GPUs: {_explain(error)}") from None
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass


def visible_gpus(gpus: list[Gpu], setting: str | None) -> list[Gpu]:
    """The GPUs a CUDA_VISIBLE_DEVICES value leaves, in its order (None: all of them).

    Entries are nvidia-smi indices or GPU UUIDs (a unique prefix is enough). As in CUDA, the list ends at the first
    entry that names no GPU, so `-1` or an empty value leaves none.
    """
    if setting is None:
        return list(gpus)
    chosen: list[Gpu] = []
    for entry in (part.strip() for part in setting.split(",")):
        match = _match(gpus, entry)
        if match is None:
            break
        if match not in chosen:
            chosen.append(match)
    return chosen


def _match(gpus: list[Gpu], entry: str) -> Gpu | None:
    if entry.isdigit():
        return next((gpu for gpu in gpus if gpu.index == int(entry)), None)
    if entry.upper().startswith("GPU-"):
        found = [gpu for gpu in gpus if gpu.uuid.lower().startswith(entry.lower())]
        return found[0] if len(found) == 1 else None
    return None  # MIG instances and anything else are not assigned by engine


def _explain(error: Exception) -> str:
    return _NVML_HINTS.get(getattr(error, "value", None), f"NVML error: {error}")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
