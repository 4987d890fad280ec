"""The `gpu` target: check compute.gpu against the GPUs present and give each worker process its GPUs."""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import asdict
from typing import Any

from engine import ConfigError, Device, VisibleDevices, hookimpl, share_cores
from engine_hw_cuda.discovery import (
    Discover,
    DiscoveryError,
    Gpu,
    discover_gpus,
    visible_gpus,
)

log = logging.getLogger("engine.cuda")

VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
ORDER_ENV = "CUDA_DEVICE_ORDER"
TF_GROWTH_ENV = "TF_FORCE_GPU_ALLOW_GROWTH"
ONNX_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def assign(count: int, processes: int, index: int) -> list[int]:
    """Which of an API's `count` GPUs (positions 0..count-1) worker `index` of `processes` gets.

    count >= processes: contiguous blocks whose sizes differ by at most one (4 GPUs, 2 workers: [0, 1] and [2, 3]);
    count < processes: round-robin, so workers share GPUs (2 GPUs, 4 workers: [0], [1], [0], [1]).
    """
    if count >= processes:
        size, extra = divmod(count, processes)
        start = index * size + min(index, extra)
        return list(range(start, start + size + (1 if index < extra else 0)))
    return [index % count]


def onnxruntime_providers() -> list[str] | None:
    """The execution providers of the installed onnxruntime; None when it is not installed."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    return list(onnxruntime.get_available_providers())


class CudaTarget:
    """Owns APIs with compute.gpu > 0, over a discovery function (NVML unless a test passes another)."""

    def __init__(self, discover: Discover = discover_gpus) -> None:
        self.discover = discover
        self.visible = VisibleDevices(VISIBLE_ENV, "GPUs", "CUDA", "GPU", log)

    def api_gpus(self, api: Any) -> list[Gpu]:
        """The GPUs an API gets: the first compute.gpu of those visible; ConfigError when there are too few."""
        wanted = api.compute.gpu
        try:
            present = self.discover()
        except DiscoveryError as error:
            raise ConfigError(f"compute.gpu: {wanted} requested, but the GPUs cannot be listed: {error}. Check that "
                              "nvidia-smi lists them, or set compute.gpu: 0 to serve on the CPU") from None
        setting = self.visible.user_setting(api)
        visible = visible_gpus(present, setting)
        if len(visible) >= wanted:
            return visible[:wanted]
        found = f"{len(present)} GPU{'s' if len(present) != 1 else ''} found"
        listed = f" ({', '.join(gpu.describe() for gpu in present)})" if present else ""
        message = f"compute.gpu: {wanted} requested, {found}{listed}"
        if setting is not None:
            message += (f"; {VISIBLE_ENV}={setting!r} leaves {len(visible)}"
                        + (f" ({', '.join(gpu.describe() for gpu in visible)})" if visible else ""))
        raise ConfigError(message)

    @hookimpl
    def engine_hardware_targets(self) -> list[str]:
        """NVIDIA GPUs."""
        return ["gpu"]

    @hookimpl
    def engine_validate_api(self, api: Any, project_root: Any) -> list[str] | None:
        """compute.gpu against the GPUs NVML lists (and CUDA_VISIBLE_DEVICES leaves)."""
        if not api.compute.gpu:
            return None
        try:
            self.api_gpus(api)
        except ConfigError as error:
            return [str(error)]
        return []

    @hookimpl
    def engine_setup_device(self, api: Any, process_index: int) -> Device | None:
        """Give this worker its GPUs through CUDA_VISIBLE_DEVICES, before any framework is imported."""
        if not api.compute.gpu:
            return None
        processes = api.predictor.processes_per_replica
        gpus = self.api_gpus(api)
        mine = [gpus[position] for position in assign(len(gpus), processes, process_index)]
        env: dict[str, str] = {}
        if ORDER_ENV not in os.environ:
            os.environ[ORDER_ENV] = env[ORDER_ENV] = "PCI_BUS_ID"  # CUDA numbers GPUs as nvidia-smi does
        by_index = os.environ[ORDER_ENV] == "PCI_BUS_ID"
        ids = [str(gpu.index) if by_index else gpu.uuid for gpu in mine]
        env.update(self.visible.claim(api, ",".join(ids)))
        if TF_GROWTH_ENV not in os.environ:
            os.environ[TF_GROWTH_ENV] = env[TF_GROWTH_ENV] = "true"
        threads, shared = share_cores(processes)
        env.update(shared)
        visible = os.environ[VISIBLE_ENV].split(",")
        log.info("api '%s' process %d: %s (%s=%s)", api.name, process_index,
                 ", ".join(f"GPU {gpu.describe()}" for gpu in mine), VISIBLE_ENV, os.environ[VISIBLE_ENV])
        if processes > len(gpus) and process_index == 0:
            log.info("api '%s': %d processes share %d GPU(s); each process's framework must leave memory for the "
                     "others (TF_FORCE_GPU_ALLOW_GROWTH=%s)", api.name, processes, len(gpus),
                     os.environ[TF_GROWTH_ENV])
        has_cuda = self._check_onnxruntime(api, process_index)
        return Device(kind="cuda", process_index=process_index, env=env, visible_devices=visible, threads=threads,
                      options={"gpus": [asdict(gpu) for gpu in mine], "onnxruntime_cuda": has_cuda,
                               "onnx_providers": list(ONNX_PROVIDERS)})

    def _check_onnxruntime(self, api: Any, process_index: int) -> bool | None:
        """Whether onnxruntime can use CUDA (None: not installed); warned about once per API, by its process 0."""
        providers = onnxruntime_providers()
        if providers is None or "CUDAExecutionProvider" in providers:
            return None if providers is None else True
        if process_index == 0:
            what = "its ONNX models" if api.predictor.type == "onnx" else "onnxruntime sessions its predictor creates"
            log.warning("api '%s': onnxruntime is installed without CUDA support (its execution providers: %s), so %s "
                        "run on the CPU. Install onnxruntime-gpu in place of onnxruntime: pip uninstall -y onnxruntime "
                        "onnxruntime-gpu && pip install onnxruntime-gpu", api.name, ", ".join(providers), what)
        return False
