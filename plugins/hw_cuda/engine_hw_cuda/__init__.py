"""The `gpu` hardware target: NVIDIA GPUs, found through NVML and given out to worker processes."""
from __future__ import annotations

from engine_hw_cuda.discovery import Gpu, discover_gpus
from engine_hw_cuda.target import CudaTarget, assign

__all__ = ["CudaTarget", "Gpu", "assign", "discover_gpus"]

# The `cuda` entry point registers this module: its hooks are those of one CudaTarget over the real discovery.
# Tests register their own CudaTarget(discover=...) on a fresh plugin manager instead.
TARGET = CudaTarget()
engine_hardware_targets = TARGET.engine_hardware_targets
engine_validate_api = TARGET.engine_validate_api
engine_setup_device = TARGET.engine_setup_device
