"""`engine serve` with compute.inf: a fake Neuron machine through real worker processes, and real devices."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
from engine_hw_inferentia import NeuronHost
from engine_hw_inferentia.discovery import (
    DiscoveryError,
    core_range,
    installed_frameworks,
)
from neuron_testing import inf1_devices

from engine.testing import Server, api_yaml, write_project

pytestmark = pytest.mark.e2e

# Reads the environment when the module is imported, i.e. after the device was set up and before any framework.
ENV_REPORTER = """
import os, time

AT_IMPORT = {name: os.environ.get(name) for name in ("NEURON_RT_VISIBLE_CORES", "NEURONCORE_GROUP_SIZES")}


class PythonPredictor:
    def __init__(self, config):
        self.sleep = config.get("sleep", 0)

    def predict(self, payload):
        time.sleep(self.sleep)
        return {"pid": os.getpid(), **AT_IMPORT}
"""


def fake_machine_env(machine) -> dict[str, str]:
    """A server's environment that points the plugin at the fake machine and its framework packages."""
    return {"ENGINE_NEURON_ROOT": str(machine.root), "ENGINE_USER_NEURON_RT_VISIBLE_CORES": "<unset>",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(machine.site), os.environ.get("PYTHONPATH")]))}


@pytest.fixture
def servers():
    started: list[Server] = []
    yield started
    for server in started:
        server.close()


def call_both_workers(server: Server, path: str) -> list[dict]:
    answers: list[dict] = []
    threads = [threading.Thread(target=lambda: answers.append(server.client.post(path, json={}).json()))
               for _ in range(2)]  # one request per worker: each has one thread
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_two_workers_each_get_half_the_neuroncores_before_the_predictor_is_imported(machine, tmp_path, servers):
    machine.inf1()
    config = api_yaml("inf-api", predictor_extra="processes_per_replica: 2\nthreads_per_process: 1\nconfig: {sleep: 1}",
                      api_extra="compute: {inf: 1}")
    project = write_project(tmp_path / "project", {"cortex.yaml": config, "predictor.py": ENV_REPORTER})
    server = Server(project, env=fake_machine_env(machine))
    servers.append(server)
    server.wait_ready(60)
    answers = call_both_workers(server, "/inf-api")
    assert len({answer["pid"] for answer in answers}) == 2, server.output
    assert sorted((a["NEURON_RT_VISIBLE_CORES"], a["NEURONCORE_GROUP_SIZES"]) for a in answers) == \
        [("0-1", "2"), ("2-3", "2")]
    assert "NeuronCores 2-3 (NEURON_RT_VISIBLE_CORES=2-3)" in server.output


def test_serve_and_validate_refuse_a_machine_without_the_framework(machine, tmp_path, servers):
    machine.neuron_ls(inf1_devices(1))
    machine.runtime()
    project = write_project(tmp_path / "project", {"cortex.yaml": api_yaml("inf-api", api_extra="compute: {inf: 1}"),
                                                   "predictor.py": ENV_REPORTER})
    expected = "api 'inf-api': compute.inf: no Neuron framework integration is installed for the python predictor"
    server = Server(project, env=fake_machine_env(machine))
    servers.append(server)
    assert server.wait_exit(60) == 1
    assert expected in server.output and "Traceback" not in server.output
    result = subprocess.run([sys.executable, "-m", "engine", "validate", str(project)], capture_output=True, text=True,
                            env={**os.environ, **fake_machine_env(machine)})
    assert result.returncode == 1 and expected in result.stderr and "Traceback" not in result.stderr


# --- real hardware -------------------------------------------------------------------------------------------------


def _real_devices() -> list:
    try:
        return NeuronHost("/").devices()
    except DiscoveryError:
        return []


@pytest.mark.inferentia
def test_real_neuroncores_are_split_between_workers(tmp_path, servers):
    devices = _real_devices()
    if not devices:
        pytest.skip("no AWS Neuron device here (no neuron-ls answer and no /dev/neuron* device nodes)")
    if NeuronHost("/").runtime_library() is None or not installed_frameworks():
        pytest.skip("the Neuron runtime (libnrt) or a framework integration (torch-neuronx, ...) is not installed")
    cores = len(devices[0].cores)
    config = api_yaml("inf-api", predictor_extra="processes_per_replica: 2\nthreads_per_process: 1\nconfig: {sleep: 1}",
                      api_extra="compute: {inf: 1}")
    server = Server(write_project(tmp_path / "project", {"cortex.yaml": config, "predictor.py": ENV_REPORTER}))
    servers.append(server)
    server.wait_ready(120)
    halves = [core_range(devices[0].cores[:cores // 2]), core_range(devices[0].cores[cores // 2:])]
    assert sorted(a["NEURON_RT_VISIBLE_CORES"] for a in call_both_workers(server, "/inf-api")) == sorted(halves)


# The recipe of docs/hardware.md: a Neuron-compiled TorchScript model loaded in __init__ with torch.jit.load.
NEURON_TORCHSCRIPT = """
import torch
import torch_neuronx  # registers the Neuron operators that torch.jit.load needs


class PythonPredictor:
    def __init__(self, config):
        self.model = torch.jit.load(config["model"])

    def predict(self, payload):
        with torch.no_grad():
            return self.model(torch.tensor([payload], dtype=torch.float32)).tolist()[0]
"""


@pytest.mark.inferentia
def test_a_neuron_compiled_torchscript_model_is_served(tmp_path, servers):
    if not _real_devices() or "torch_neuronx" not in installed_frameworks(("torch_neuronx",)):
        pytest.skip("needs an Inf2/Trn1 Neuron device with torch-neuronx installed")
    compile_model = (
        "import sys, torch, torch_neuronx\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=1)).eval()\n"
        "example = torch.rand(1, 4)\n"
        "torch.jit.save(torch_neuronx.trace(model, example), sys.argv[1])\n"
        "print(model(torch.tensor([[1.0, 2.0, 3.0, 4.0]])).tolist()[0])\n")
    project = tmp_path / "project"
    project.mkdir()
    compiled = subprocess.run([sys.executable, "-c", compile_model, str(project / "model.pt")], capture_output=True,
                              text=True, timeout=600, check=True)
    expected = [float(value) for value in compiled.stdout.strip().strip("[]").split(",")]
    config = api_yaml("neuron", predictor_extra="config: {model: model.pt}", api_extra="compute: {inf: 1}")
    write_project(project, {"cortex.yaml": config, "predictor.py": NEURON_TORCHSCRIPT})
    server = Server(project)
    servers.append(server)
    server.wait_ready(300)
    answer = server.client.post("/neuron", json=[1.0, 2.0, 3.0, 4.0]).json()
    assert answer == pytest.approx(expected, abs=1e-2)
