"""GPU discovery: NVML answers (simulated), the simulated list, and CUDA_VISIBLE_DEVICES filtering."""
from __future__ import annotations

from types import SimpleNamespace

import pynvml
import pytest
from cuda_testing import H100, gpus
from engine_hw_cuda.discovery import (
    SIMULATED_ENV,
    DiscoveryError,
    Gpu,
    discover_gpus,
    nvml_gpus,
    simulated_gpus,
    visible_gpus,
)


class FakeNvml:
    """Answers the pynvml calls the plugin makes, from a list of (name, uuid, memory) tuples, or fails as told."""

    NVMLError = pynvml.NVMLError

    def __init__(self, devices=(), init_error: int | None = None, fail_at: str | None = None, bytes_names=False):
        self.devices = list(devices)
        self.init_error = init_error
        self.fail_at = fail_at
        self.bytes_names = bytes_names
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_at:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    def nvmlInit(self):
        self.calls.append("nvmlInit")
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self):
        self.calls.append("nvmlShutdown")

    def nvmlDeviceGetCount(self):
        self._call("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        self._call("nvmlDeviceGetHandleByIndex")
        return index

    def nvmlDeviceGetName(self, handle):
        self._call("nvmlDeviceGetName")
        name = self.devices[handle][0]
        return name.encode() if self.bytes_names else name

    def nvmlDeviceGetUUID(self, handle):
        self._call("nvmlDeviceGetUUID")
        uuid = self.devices[handle][1]
        return uuid.encode() if self.bytes_names else uuid

    def nvmlDeviceGetMemoryInfo(self, handle):
        self._call("nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(total=self.devices[handle][2], free=0, used=0)


DEVICES = [(H100, "GPU-1111aaaa-0000-0000-0000-000000000000", 85520809984),
           ("NVIDIA A10G", "GPU-2222bbbb-0000-0000-0000-000000000000", 24146608128)]


@pytest.mark.parametrize("bytes_names", [False, True], ids=["str", "bytes"])
def test_nvml_lists_every_gpu_with_index_name_uuid_and_memory(bytes_names):
    nvml = FakeNvml(DEVICES, bytes_names=bytes_names)
    found = nvml_gpus(nvml)
    assert found == [Gpu(0, H100, DEVICES[0][1], DEVICES[0][2]), Gpu(1, "NVIDIA A10G", DEVICES[1][1], DEVICES[1][2])]
    assert found[0].describe() == f"0: {H100}"
    assert nvml.calls[0] == "nvmlInit" and nvml.calls[-1] == "nvmlShutdown"


def test_no_gpu_is_an_empty_list():
    assert nvml_gpus(FakeNvml([])) == []


@pytest.mark.parametrize("code, says", [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "libnvidia-ml.so.1) was not found: no NVIDIA driver is installed"),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "the NVIDIA driver is not loaded"),
    (pynvml.NVML_ERROR_NO_PERMISSION, "no permission to open the GPUs"),
    (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "different versions (reboot after a driver update)"),
    (pynvml.NVML_ERROR_UNKNOWN, "NVML error: Unknown Error"),
])
def test_nvml_init_failures_say_what_is_missing(code, says):
    with pytest.raises(DiscoveryError) as raised:
        nvml_gpus(FakeNvml(DEVICES, init_error=code))
    assert says in str(raised.value)


def test_a_failure_while_listing_still_shuts_nvml_down():
    nvml = FakeNvml(DEVICES, fail_at="nvmlDeviceGetUUID")
    with pytest.raises(DiscoveryError, match="NVML failed while listing the GPUs: NVML error: GPU is lost"):
        nvml_gpus(nvml)
    assert nvml.calls[-1] == "nvmlShutdown"


def test_the_real_nvml_without_a_driver_raises_a_clear_error_or_lists_gpus():
    try:
        found = nvml_gpus()
    except DiscoveryError as error:
        assert str(error)  # e.g. no libnvidia-ml.so.1 on a machine without a driver
    else:
        assert all(gpu.uuid.startswith(("GPU-", "MIG-")) for gpu in found)


def test_simulated_gpus_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(SIMULATED_ENV, "NVIDIA T4, NVIDIA T4,")
    found = discover_gpus()
    assert [(gpu.index, gpu.name) for gpu in found] == [(0, "NVIDIA T4"), (1, "NVIDIA T4")]
    assert len({gpu.uuid for gpu in found}) == 2
    assert simulated_gpus("") == []


FOUR = gpus("A", "B", "C", "D")


@pytest.mark.parametrize("setting, indices", [
    (None, [0, 1, 2, 3]),
    ("2", [2]),
    ("3,1", [3, 1]),                   # CUDA's order is the list's order
    (" 1 , 2 ", [1, 2]),
    ("0,7,1", [0]),                    # the list ends at the first entry that names no GPU, as in CUDA
    ("-1", []),
    ("", []),
    ("1,1,2", [1, 2]),
    (FOUR[2].uuid, [2]),
    (FOUR[3].uuid[:6].lower() + ",0", [3, 0]),   # a unique UUID prefix is enough
    ("GPU-,1", []),                    # an ambiguous prefix names no GPU
    ("MIG-3f2e1d0c-aaaa-bbbb-cccc-dddddddddddd", []),
])
def test_cuda_visible_devices_filters_and_orders(setting, indices):
    assert [gpu.index for gpu in visible_gpus(FOUR, setting)] == indices
