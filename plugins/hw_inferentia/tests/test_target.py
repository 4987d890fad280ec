"""The inf target on fake machines: ownership, validation errors, NeuronCores per worker and each worker's env."""
from __future__ import annotations

import logging
import os
import textwrap

import engine_python_predictor
import pydantic
import pytest
from engine_hw_inferentia import split_cores
from neuron_testing import inf1_devices, inf2_devices, make_api

from engine import Api, ConfigError, Device
from engine.testing import api_problems, check_hardware_target, setup_device, validate


def run_worker(machine, api, index: int) -> tuple[Device, dict[str, str]]:
    """Set up worker `index` as a fresh process would: its own plugin manager and a copy of the parent's env."""
    saved = os.environ.copy()
    try:
        device = setup_device(machine.plugin_manager(), api, process_index=index)
        return device, dict(os.environ)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def problems(pm, api) -> list[str]:
    return api_problems(pm, api)


# --- ownership and validation -------------------------------------------------------------------------------------


def test_owns_the_inf_target_and_declines_other_apis(machine):
    pm = machine.inf1().plugin_manager()
    assert "inf" in {t for found in pm.hook.engine_hardware_targets() for t in found}
    check_hardware_target(pm, make_api(inf=1))
    cpu_api = make_api(inf=0)
    assert problems(pm, cpu_api) == [] and setup_device(pm, cpu_api, 0).kind == "cpu"


def test_a_complete_machine_validates(machine):
    assert problems(machine.inf1().plugin_manager(), make_api(inf=1, processes=4)) == []


def test_too_few_devices_says_what_was_found(machine):
    pm = machine.inf1(devices=1).plugin_manager()
    assert problems(pm, make_api(inf=2, processes=2)) == \
        ["compute.inf: 2 requested (8 NeuronCores), 1 Neuron device found (0: 4 NeuronCores (0-3))"]


def test_no_device_is_a_clear_error(machine):
    machine.runtime()
    machine.framework()
    assert problems(machine.plugin_manager(), make_api(inf=1)) == [
        f"compute.inf: 1 requested, but no Neuron device was found (neuron-ls is not installed; there are no "
        f"{machine.root / 'dev'}/neuron* device nodes). Serve on an Inferentia instance with the Neuron driver "
        "(aws-neuronx-dkms) loaded, or set compute.inf: 0"]


def test_a_missing_runtime_and_framework_are_both_reported(machine):
    machine.neuron_ls(inf1_devices(1))
    assert problems(machine.plugin_manager(), make_api(inf=1)) == [
        f"compute.inf: the Neuron runtime library libnrt.so was not found (looked in "
        f"{machine.root / 'opt/aws/neuron/lib'} and LD_LIBRARY_PATH): install aws-neuronx-runtime-lib from the AWS "
        "Neuron repository",
        "compute.inf: no Neuron framework integration is installed for the python predictor (looked for "
        "torch_neuronx, torch_neuron, tensorflow_neuronx, tensorflow_neuron): pip install torch-neuronx or "
        "torch-neuron or tensorflow-neuronx or tensorflow-neuron from the AWS Neuron pip repository, in the "
        "environment engine runs in"]


def test_a_neuron_1_daemon_stands_in_for_libnrt(machine, monkeypatch):
    machine.neuron_ls(inf1_devices(1))
    machine.framework("torch_neuron")
    monkeypatch.setenv("NEURON_RTD_ADDRESS", "unix:/sock/neuron.sock")
    assert problems(machine.plugin_manager(), make_api(inf=1)) == []


@pytest.mark.parametrize("installed, ok", [("torch_neuronx", False), ("tensorflow_neuronx", True),
                                           ("tensorflow_neuron", True)])
def test_the_tensorflow_predictor_needs_tensorflow_neuron(machine, installed, ok):
    machine.neuron_ls(inf1_devices(1))
    machine.runtime()
    machine.framework(installed)
    found = problems(machine.plugin_manager(), make_api(inf=1, type_="tensorflow"))
    assert found == ([] if ok else [
        "compute.inf: no Neuron framework integration is installed for the tensorflow predictor (looked for "
        "tensorflow_neuronx, tensorflow_neuron): pip install tensorflow-neuronx or tensorflow-neuron from the AWS "
        "Neuron pip repository, in the environment engine runs in"])


def test_processes_must_divide_the_cores_of_this_machines_devices(machine):
    machine.neuron_ls(inf2_devices(1))  # 2 NeuronCores per device: Cortex's inf1 rule (4 per chip) lets 4 through
    machine.runtime()
    machine.framework()
    assert problems(machine.plugin_manager(), make_api(inf=1, processes=4)) == [
        "predictor.processes_per_replica: cannot evenly distribute 2 NeuronCores (compute.inf: 1) over 4 processes; "
        "allowed: 1, 2 (given: 4)"]


def test_gpu_with_inf_stays_with_the_config_checks():
    with pytest.raises(pydantic.ValidationError, match="gpu and inf resources cannot be used together"):
        Api.model_validate({"name": "x", "kind": "RealtimeAPI", "compute": {"inf": 1, "gpu": 1},
                            "predictor": {"type": "python", "path": "predictor.py"}})


def test_onnx_on_inferentia_is_refused_by_the_onnx_plugin(machine):
    onnx_plugin = pytest.importorskip("engine_onnx_predictor", reason="the onnx plugin is not installed")
    pm = machine.inf1().plugin_manager()
    pm.register(onnx_plugin)
    assert any("the onnx predictor type cannot run on Inferentia" in problem
               for problem in problems(pm, make_api(inf=1, type_="onnx")))


def test_engine_validate_reports_inferentia_problems_with_file_and_api(machine, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "predictor.py").write_text("class PythonPredictor:\n    def __init__(self, config):\n        pass\n\n"
                                          "    def predict(self, payload):\n        return payload\n")
    (project / "cortex.yaml").write_text(textwrap.dedent("""
        - name: clf
          kind: RealtimeAPI
          predictor: {type: python, path: predictor.py, processes_per_replica: 2}
          compute: {inf: 2}
    """))
    pm = machine.inf1(devices=1).plugin_manager()
    pm.register(engine_python_predictor)
    with pytest.raises(ConfigError) as raised:
        validate(project, pm=pm)
    where = f"{project / 'cortex.yaml'}: api 'clf'"
    assert str(raised.value) == (f"{where}: compute.inf: 2 requested (8 NeuronCores), 1 Neuron device found "
                                 f"(0: 4 NeuronCores (0-3))\n{where}: to serve it on the CPU instead, run engine "
                                 "serve --cpu (or set ENGINE_CPU=1)")


# --- NeuronCores per worker ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cores, processes, expected", [
    (4, 1, [[0, 1, 2, 3]]), (4, 2, [[0, 1], [2, 3]]), (4, 4, [[0], [1], [2], [3]]),
    (8, 2, [[0, 1, 2, 3], [4, 5, 6, 7]]),
])
def test_split_cores(cores, processes, expected):
    assert [split_cores(list(range(cores)), processes, index) for index in range(processes)] == expected


@pytest.mark.parametrize("devices, kind, inf, processes, expected", [
    (1, "inf1", 1, 1, [("0-3", "4")]),
    (1, "inf1", 1, 2, [("0-1", "2"), ("2-3", "2")]),
    (1, "inf1", 1, 4, [("0", "1"), ("1", "1"), ("2", "1"), ("3", "1")]),
    (4, "inf1", 2, 2, [("0-3", "4"), ("4-7", "4")]),
    (4, "inf1", 2, 8, [(f"{i}", "1") for i in range(8)]),
    (2, "inf2", 1, 2, [("0", "1"), ("1", "1")]),
    (6, "inf2", 3, 3, [("0-1", "2"), ("2-3", "2"), ("4-5", "2")]),
])
def test_each_worker_gets_its_own_contiguous_neuroncores(machine, devices, kind, inf, processes, expected):
    machine.neuron_ls(inf1_devices(devices) if kind == "inf1" else inf2_devices(devices))
    api = make_api(inf=inf, processes=processes)
    seen = []
    for index in range(processes):
        device, env = run_worker(machine, api, index)
        assert env["NEURON_RT_VISIBLE_CORES"] == device.env["NEURON_RT_VISIBLE_CORES"] == device.options["neuron_cores"]
        assert (device.kind, device.process_index) == ("inferentia", index)
        seen.append((env["NEURON_RT_VISIBLE_CORES"], env["NEURONCORE_GROUP_SIZES"]))
    assert seen == expected


def test_the_worker_environment_and_device(machine):
    machine.inf1()
    machine.framework("torch_neuron")
    device, env = run_worker(machine, make_api(inf=1, processes=2), 1)
    assert device.env == {"NEURON_RT_VISIBLE_CORES": "2-3", "NEURONCORE_GROUP_SIZES": "2", "OMP_NUM_THREADS": "4",
                          "OPENBLAS_NUM_THREADS": "4", "MKL_NUM_THREADS": "4", "VECLIB_MAXIMUM_THREADS": "4",
                          "NUMEXPR_NUM_THREADS": "4"}
    assert all(env[name] == value for name, value in device.env.items())
    assert env["ENGINE_USER_NEURON_RT_VISIBLE_CORES"] == "<unset>"
    assert device.visible_devices == ["2", "3"] and device.threads == 4
    assert device.options.get("onnx_providers", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert device.options["frameworks"] == ["torch_neuronx", "torch_neuron"]


def test_the_users_visible_cores_are_the_pool(machine, monkeypatch):
    machine.neuron_ls(inf1_devices(4))
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "4-11")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    api = make_api(inf=1, processes=2)
    first, env0 = run_worker(machine, api, 0)
    _, env1 = run_worker(machine, api, 1)
    assert (env0["NEURON_RT_VISIBLE_CORES"], env1["NEURON_RT_VISIBLE_CORES"]) == ("4-5", "6-7")
    assert env0["ENGINE_USER_NEURON_RT_VISIBLE_CORES"] == "4-11"
    assert env0["OMP_NUM_THREADS"] == "1" and "OMP_NUM_THREADS" not in first.env


def test_visible_cores_that_leave_too_few_or_do_not_parse(machine, monkeypatch):
    machine.inf1(devices=1)
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "2-3")
    assert problems(machine.plugin_manager(), make_api(inf=1)) == [
        "compute.inf: 1 requested (4 NeuronCores), 1 Neuron device found (0: 4 NeuronCores (0-3)); "
        "NEURON_RT_VISIBLE_CORES='2-3' leaves 2 NeuronCores"]
    assert problems(machine.plugin_manager(), make_api(inf=1, env={"NEURON_RT_VISIBLE_CORES": "all"})) == [
        "NEURON_RT_VISIBLE_CORES='all' is not a NeuronCore index or range (e.g. 0 or 0-3)"]


def test_a_worker_share_that_is_not_one_range_is_refused(machine, monkeypatch):
    machine.neuron_ls(inf1_devices(2))
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "0-1,6-7")
    with pytest.raises(ConfigError, match=r"NeuronCores 0,1,6,7 of process 0 are not one range"):
        run_worker(machine, make_api(inf=1), 0)


def test_workers_started_after_the_front_changed_the_env_see_the_users_setting(machine):
    machine.neuron_ls(inf1_devices(2))
    setup_device(machine.plugin_manager(), make_api(inf=1, name="small"), 0)  # a one-process API in the front
    assert os.environ["NEURON_RT_VISIBLE_CORES"] == "0-3"
    device, _ = run_worker(machine, make_api(inf=2, processes=2, name="big"), 1)
    assert device.options["neuron_cores"] == "4-7"


def test_a_second_api_in_the_same_process_cannot_change_the_cores(machine, caplog):
    machine.neuron_ls(inf1_devices(2))
    pm = machine.plugin_manager()
    setup_device(pm, make_api(inf=1, name="first"), 0)
    with caplog.at_level(logging.WARNING, logger="engine.inferentia"):
        device = setup_device(pm, make_api(inf=2, name="second"), 0)
    assert device.options["neuron_cores"] == "0-3" and os.environ["NEURON_RT_VISIBLE_CORES"] == "0-3"
    assert "api 'second' asks for NeuronCores 0-7, but this process already exposes NEURON_RT_VISIBLE_CORES=0-3" \
        in caplog.text


def test_setup_fails_clearly_without_devices(machine):
    with pytest.raises(ConfigError, match="compute.inf: 1 requested, but no Neuron device was found"):
        run_worker(machine, make_api(inf=1), 0)
