"""The gpu target over simulated GPUs: ownership, validation errors, assignment per worker and each worker's env."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import engine_python_predictor
import pytest
from cuda_testing import H100, gpus, make_api
from engine_hw_cuda import CudaTarget, assign
from engine_hw_cuda.discovery import DiscoveryError
from engine_hw_cuda.target import (
    onnxruntime_providers as real_onnxruntime_providers,  # before any test patches it
)

from engine import ConfigError, Device, testing
from engine.testing import api_problems, check_hardware_target, setup_device, validate


def run_worker(pm_factory, devices, api, index: int) -> tuple[Device, dict[str, str]]:
    """Set up worker `index` as a fresh process would: its own plugin manager and a copy of the parent's env."""
    saved = os.environ.copy()
    try:
        device = setup_device(pm_factory(devices), api, process_index=index)
        return device, dict(os.environ)
    finally:
        os.environ.clear()
        os.environ.update(saved)


# --- ownership and validation -------------------------------------------------------------------------------------


def test_owns_the_gpu_target_and_declines_cpu_apis(plugin_manager):
    pm = plugin_manager(gpus(H100))
    assert "gpu" in {t for found in pm.hook.engine_hardware_targets() for t in found}
    check_hardware_target(pm, make_api(gpu=1))  # no MissingPluginError
    cpu_api = make_api(gpu=0)
    assert api_problems(pm, cpu_api) == []
    assert setup_device(pm, cpu_api, 0).kind == "cpu"  # the built-in target answers


def problems(pm, api) -> list[str]:
    return api_problems(pm, api)


def test_enough_gpus_validate(plugin_manager):
    assert problems(plugin_manager(gpus(H100, H100)), make_api(gpu=2, processes=4)) == []


def test_too_many_gpus_requested_says_what_was_found(plugin_manager):
    assert problems(plugin_manager(gpus(H100)), make_api(gpu=2)) == \
        [f"compute.gpu: 2 requested, 1 GPU found (0: {H100})"]
    assert problems(plugin_manager(gpus("NVIDIA A10G", "NVIDIA A10G")), make_api(gpu=3)) == \
        ["compute.gpu: 3 requested, 2 GPUs found (0: NVIDIA A10G, 1: NVIDIA A10G)"]
    assert problems(plugin_manager([]), make_api(gpu=1)) == ["compute.gpu: 1 requested, 0 GPUs found"]


def test_cuda_visible_devices_limits_what_counts(plugin_manager, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert problems(plugin_manager(gpus("A", "B")), make_api(gpu=2)) == \
        ["compute.gpu: 2 requested, 2 GPUs found (0: A, 1: B); CUDA_VISIBLE_DEVICES='1' leaves 1 (1: B)"]
    assert problems(plugin_manager(gpus("A", "B")), make_api(gpu=1, env={"CUDA_VISIBLE_DEVICES": "-1"})) == \
        ["compute.gpu: 1 requested, 2 GPUs found (0: A, 1: B); CUDA_VISIBLE_DEVICES='-1' leaves 0"]


def test_no_driver_is_a_clear_validation_error():
    def no_driver():
        raise DiscoveryError("the NVIDIA driver's NVML library (libnvidia-ml.so.1) was not found")

    pm = testing.plugin_manager(CudaTarget(discover=no_driver))
    (problem,) = problems(pm, make_api(gpu=1))
    assert problem == ("compute.gpu: 1 requested, but the GPUs cannot be listed: the NVIDIA driver's NVML library "
                       "(libnvidia-ml.so.1) was not found. Check that nvidia-smi lists them, or set compute.gpu: 0 to "
                       "serve on the CPU")


def test_engine_validate_reports_the_gpu_problem_with_file_and_api(plugin_manager, tmp_path):
    (tmp_path / "predictor.py").write_text("class PythonPredictor:\n    def __init__(self, config):\n        pass\n\n"
                                           "    def predict(self, payload):\n        return payload\n")
    (tmp_path / "cortex.yaml").write_text(textwrap.dedent("""
        - name: clf
          kind: RealtimeAPI
          predictor: {type: python, path: predictor.py}
          compute: {gpu: 2}
    """))
    pm = plugin_manager(gpus(H100))
    pm.register(engine_python_predictor)
    with pytest.raises(ConfigError) as raised:
        validate(tmp_path, pm=pm)
    where = f"{tmp_path / 'cortex.yaml'}: api 'clf'"
    assert str(raised.value) == f"{where}: compute.gpu: 2 requested, 1 GPU found (0: {H100})\n" \
                                f"{where}: to serve it on the CPU instead, run engine serve --cpu (or set ENGINE_CPU=1)"
    pm2 = plugin_manager(gpus(H100, H100))
    pm2.register(engine_python_predictor)
    assert [api.name for api in validate(tmp_path, pm=pm2)] == ["clf"]


# --- assignment --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count, processes, expected", [
    (1, 1, [[0]]),
    (2, 1, [[0, 1]]),
    (2, 2, [[0], [1]]),
    (4, 2, [[0, 1], [2, 3]]),
    (3, 2, [[0, 1], [2]]),
    (8, 3, [[0, 1, 2], [3, 4, 5], [6, 7]]),
    (1, 4, [[0], [0], [0], [0]]),
    (2, 4, [[0], [1], [0], [1]]),
    (3, 4, [[0], [1], [2], [0]]),
])
def test_assignment_blocks_or_round_robin(count, processes, expected):
    assert [assign(count, processes, index) for index in range(processes)] == expected


@pytest.mark.parametrize("count", range(1, 9))
@pytest.mark.parametrize("processes", range(1, 9))
def test_every_gpu_is_used_and_every_worker_gets_one(count, processes):
    given = [assign(count, processes, index) for index in range(processes)]
    assert all(given) and sorted({gpu for block in given for gpu in block}) == list(range(count))
    if count >= processes:  # disjoint contiguous blocks, sizes within one of each other
        assert [gpu for block in given for gpu in block] == list(range(count))
        assert max(map(len, given)) - min(map(len, given)) <= 1


# --- what each worker gets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("gpu, processes, machine, expected", [
    (1, 1, 1, ["0"]),
    (1, 2, 2, ["0", "0"]),
    (2, 2, 2, ["0", "1"]),
    (4, 2, 4, ["0,1", "2,3"]),
    (2, 3, 4, ["0", "1", "0"]),
    (3, 1, 4, ["0,1,2"]),
])
def test_each_worker_sees_its_own_gpus(plugin_manager, gpu, processes, machine, expected):
    devices = gpus(*[H100] * machine)
    api = make_api(gpu=gpu, processes=processes)
    seen = []
    for index in range(processes):
        device, env = run_worker(plugin_manager, devices, api, index)
        assert env["CUDA_VISIBLE_DEVICES"] == device.env["CUDA_VISIBLE_DEVICES"] == ",".join(device.visible_devices)
        assert (device.kind, device.process_index) == ("cuda", index)
        seen.append(env["CUDA_VISIBLE_DEVICES"])
    assert seen == expected


def test_the_worker_environment_and_device(plugin_manager):
    device, env = run_worker(plugin_manager, gpus(H100, H100), make_api(gpu=2, processes=2), 1)
    assert device.env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1",
                          "TF_FORCE_GPU_ALLOW_GROWTH": "true", "OMP_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4",
                          "MKL_NUM_THREADS": "4", "VECLIB_MAXIMUM_THREADS": "4", "NUMEXPR_NUM_THREADS": "4"}
    assert all(env[name] == value for name, value in device.env.items())
    assert env["ENGINE_USER_CUDA_VISIBLE_DEVICES"] == "<unset>"
    assert device.options["onnx_providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert device.threads == 4  # 8 cores, 2 processes
    assert device.options["gpus"] == [{"index": 1, "name": H100, "uuid": gpus(H100, H100)[1].uuid,
                                       "memory_total": 80 * 2**30}]


def test_one_process_keeps_the_frameworks_thread_defaults(plugin_manager):
    device, env = run_worker(plugin_manager, gpus(H100), make_api(gpu=1, processes=1), 0)
    assert set(device.env) == {"CUDA_DEVICE_ORDER", "CUDA_VISIBLE_DEVICES", "TF_FORCE_GPU_ALLOW_GROWTH"}
    assert device.threads == 8 and "OMP_NUM_THREADS" not in env


def test_the_users_settings_are_respected(plugin_manager, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1,2")
    monkeypatch.setenv("TF_FORCE_GPU_ALLOW_GROWTH", "false")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    devices = gpus(*[H100] * 4)
    api = make_api(gpu=2, processes=2)
    first, env0 = run_worker(plugin_manager, devices, api, 0)
    _, env1 = run_worker(plugin_manager, devices, api, 1)
    assert (env0["CUDA_VISIBLE_DEVICES"], env1["CUDA_VISIBLE_DEVICES"]) == ("3", "1")
    assert env0["TF_FORCE_GPU_ALLOW_GROWTH"] == "false" and "TF_FORCE_GPU_ALLOW_GROWTH" not in first.env
    assert env0["OMP_NUM_THREADS"] == "1" and "OMP_NUM_THREADS" not in first.env
    assert env0["ENGINE_USER_CUDA_VISIBLE_DEVICES"] == "3,1,2"


def test_predictor_env_chooses_the_gpus_too(plugin_manager, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")  # as the front process applies predictor.env
    device, _ = run_worker(plugin_manager, gpus("A", "B", "C"), make_api(gpu=1, env={"CUDA_VISIBLE_DEVICES": "2"}), 0)
    assert device.visible_devices == ["2"]


def test_another_device_order_is_answered_with_uuids(plugin_manager, monkeypatch):
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    devices = gpus("A", "B")
    device, env = run_worker(plugin_manager, devices, make_api(gpu=2, processes=2), 1)
    assert env["CUDA_VISIBLE_DEVICES"] == devices[1].uuid and "CUDA_DEVICE_ORDER" not in device.env


def test_workers_started_after_the_front_changed_the_env_see_the_users_setting(plugin_manager):
    devices = gpus("A", "B")
    # The front process serves a one-process GPU API itself, which narrows its own CUDA_VISIBLE_DEVICES ...
    setup_device(plugin_manager(devices), make_api(gpu=1, name="small"), 0)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    # ... and then starts the workers of another API, which inherit its environment.
    device, _ = run_worker(plugin_manager, devices, make_api(gpu=2, processes=2, name="big"), 1)
    assert device.visible_devices == ["1"]


def test_a_second_api_in_the_same_process_cannot_change_the_gpus(plugin_manager, caplog):
    pm = plugin_manager(gpus("A", "B"))
    setup_device(pm, make_api(gpu=1, name="first"), 0)
    with caplog.at_level(logging.WARNING, logger="engine.cuda"):
        device = setup_device(pm, make_api(gpu=2, name="second"), 0)
    assert device.visible_devices == ["0"] and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert "api 'second' asks for GPUs 0,1, but this process already exposes CUDA_VISIBLE_DEVICES=0" in caplog.text
    assert setup_device(pm, make_api(gpu=1, name="third"), 0).visible_devices == ["0"]  # same GPUs: fine


def test_setup_fails_clearly_when_the_gpus_are_gone(plugin_manager):
    with pytest.raises(ConfigError, match=r"compute.gpu: 2 requested, 1 GPU found \(0: A\)"):
        run_worker(plugin_manager, gpus("A"), make_api(gpu=2), 0)


# --- onnxruntime ---------------------------------------------------------------------------------------------------


def test_onnxruntime_without_cuda_is_warned_about(plugin_manager, monkeypatch, caplog):
    monkeypatch.setattr("engine_hw_cuda.target.onnxruntime_providers", lambda: ["AzureExecutionProvider",
                                                                                "CPUExecutionProvider"])
    with caplog.at_level(logging.WARNING, logger="engine.cuda"):
        device, _ = run_worker(plugin_manager, gpus(H100), make_api(gpu=1, type_="onnx"), 0)
    assert device.options["onnxruntime_cuda"] is False
    assert "api 'clf': onnxruntime is installed without CUDA support (its execution providers: " \
           "AzureExecutionProvider, CPUExecutionProvider), so its ONNX models run on the CPU" in caplog.text
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in caplog.text


def test_the_onnxruntime_warning_comes_once_per_api(plugin_manager, monkeypatch, caplog):
    monkeypatch.setattr("engine_hw_cuda.target.onnxruntime_providers", lambda: ["CPUExecutionProvider"])
    api = make_api(gpu=1, processes=3)
    with caplog.at_level(logging.WARNING, logger="engine.cuda"):
        devices = [run_worker(plugin_manager, gpus(H100), api, index)[0] for index in range(3)]
    assert [device.options["onnxruntime_cuda"] for device in devices] == [False] * 3
    assert len(caplog.records) == 1 and "onnxruntime sessions its predictor creates run on the CPU" in caplog.text


@pytest.mark.parametrize("providers, expected", [(["CUDAExecutionProvider", "CPUExecutionProvider"], True),
                                                 (None, None)])
def test_onnxruntime_gpu_or_no_onnxruntime_is_not_warned_about(plugin_manager, monkeypatch, caplog, providers,
                                                               expected):
    monkeypatch.setattr("engine_hw_cuda.target.onnxruntime_providers", lambda: providers)
    with caplog.at_level(logging.WARNING, logger="engine.cuda"):
        device, _ = run_worker(plugin_manager, gpus(H100), make_api(gpu=1), 0)
    assert device.options["onnxruntime_cuda"] is expected and caplog.records == []


def test_the_real_onnxruntime_check():
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    assert real_onnxruntime_providers() == onnxruntime.get_available_providers()


@pytest.mark.e2e
def test_importing_the_plugin_imports_no_framework_and_no_nvml():
    code = ("import sys, engine_hw_cuda; "
            "print(sorted(m for m in ('onnxruntime', 'pynvml', 'tensorflow', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
