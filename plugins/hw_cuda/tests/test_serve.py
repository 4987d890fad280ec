"""`engine serve` with compute.gpu: simulated GPUs through real worker processes, and real GPUs where there are some."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from engine_hw_cuda.discovery import DiscoveryError, nvml_gpus

from engine.testing import Server, api_yaml, write_project

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[3]
ONNX_IRIS = REPO / "examples" / "onnx-iris"
SETOSA = {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3}

# Reads the environment when the module is imported, i.e. after the device was set up and before any framework.
ENV_REPORTER = """
import os, sys, time

AT_IMPORT = {name: os.environ.get(name) for name in
             ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "TF_FORCE_GPU_ALLOW_GROWTH", "OMP_NUM_THREADS")}


class PythonPredictor:
    def __init__(self, config):
        self.sleep = config.get("sleep", 0)

    def predict(self, payload):
        time.sleep(self.sleep)
        return {"pid": os.getpid(), **AT_IMPORT}
"""


def serve_env(names: str) -> dict[str, str]:
    """The environment of a server that sees simulated GPUs and ignores a CUDA_VISIBLE_DEVICES of the test machine."""
    return {"ENGINE_SIMULATED_GPUS": names, "ENGINE_USER_CUDA_VISIBLE_DEVICES": "<unset>"}


@pytest.fixture
def servers():
    started: list[Server] = []
    yield started
    for server in started:
        server.close()


def test_two_workers_each_get_their_gpu_before_the_predictor_is_imported(tmp_path, servers):
    config = api_yaml("gpu-api", predictor_extra="processes_per_replica: 2\nthreads_per_process: 1\nconfig: {sleep: 1}",
                      api_extra="compute: {gpu: 2}")
    project = write_project(tmp_path / "project", {"cortex.yaml": config, "predictor.py": ENV_REPORTER})
    server = Server(project, env=serve_env("NVIDIA H100 80GB HBM3,NVIDIA H100 80GB HBM3"))
    servers.append(server)
    server.wait_ready(60)
    answers: list[dict] = []

    def call() -> None:
        answers.append(server.client.post("/gpu-api", json={}).json())

    threads = [threading.Thread(target=call) for _ in range(2)]  # one request per worker: each has one thread
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({answer["pid"] for answer in answers}) == 2, server.output
    assert sorted(answer["CUDA_VISIBLE_DEVICES"] for answer in answers) == ["0", "1"]
    assert all(answer["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and answer["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
               for answer in answers)
    assert "GPU 0: NVIDIA H100 80GB HBM3 (CUDA_VISIBLE_DEVICES=0)" in server.output
    assert "GPU 1: NVIDIA H100 80GB HBM3 (CUDA_VISIBLE_DEVICES=1)" in server.output


def test_one_process_api_in_the_front_process(tmp_path, servers):
    project = write_project(tmp_path / "project", {"cortex.yaml": api_yaml("gpu-api", api_extra="compute: {gpu: 1}"),
                                                   "predictor.py": ENV_REPORTER})
    server = Server(project, env=serve_env("Sim A,Sim B"))
    servers.append(server)
    server.wait_ready(60)
    assert server.client.post("/gpu-api", json={}).json()["CUDA_VISIBLE_DEVICES"] == "0"


def test_serve_and_validate_refuse_more_gpus_than_present(tmp_path, servers):
    project = write_project(tmp_path / "project", {"cortex.yaml": api_yaml("gpu-api", api_extra="compute: {gpu: 2}"),
                                                   "predictor.py": ENV_REPORTER})
    expected = "api 'gpu-api': compute.gpu: 2 requested, 1 GPU found (0: NVIDIA A10G)"
    server = Server(project, env=serve_env("NVIDIA A10G"))
    servers.append(server)
    assert server.wait_exit(60) == 1
    assert expected in server.output and "Traceback" not in server.output
    result = subprocess.run([sys.executable, "-m", "engine", "validate", str(project)], capture_output=True, text=True,
                            env={**os.environ, **serve_env("NVIDIA A10G")})
    assert result.returncode == 1 and expected in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(not (ONNX_IRIS / "model" / "model.onnx").is_file(), reason="examples/onnx-iris is not there")
def test_onnx_on_a_simulated_gpu_falls_back_to_the_cpu_with_a_clear_warning(tmp_path, servers):
    pytest.importorskip("onnxruntime", reason="the onnx plugin needs onnxruntime")
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: test_onnx_iris_runs_on_cuda covers it")
    project = _onnx_iris(tmp_path)
    server = Server(project, env=serve_env("NVIDIA T4"))
    servers.append(server)
    server.wait_ready(60)
    assert server.client.post("/iris-classifier", json=SETOSA).text == "setosa"
    details = server.client.get("/iris-classifier").json()["model_metadata"]
    assert "CPUExecutionProvider" in str(details) and "CUDAExecutionProvider" not in str(details)
    assert "onnxruntime is installed without CUDA support" in server.output
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in server.output


# --- real hardware -------------------------------------------------------------------------------------------------


def _real_gpus() -> list:
    try:
        return nvml_gpus()
    except DiscoveryError:
        return []


@pytest.mark.gpu
def test_onnx_iris_runs_on_cuda(tmp_path, servers):
    if not _real_gpus():
        pytest.skip("no NVIDIA GPU here (NVML lists none, or there is no driver)")
    onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx plugin needs onnxruntime")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider: install onnxruntime-gpu in place of onnxruntime")
    server = Server(_onnx_iris(tmp_path))
    servers.append(server)
    server.wait_ready(120)
    assert server.client.post("/iris-classifier", json=SETOSA).text == "setosa"
    details = server.client.get("/iris-classifier").json()["model_metadata"]
    assert "CUDAExecutionProvider" in str(details), details


@pytest.mark.gpu
def test_real_gpus_are_split_between_workers(tmp_path, servers):
    found = _real_gpus()
    if not found:
        pytest.skip("no NVIDIA GPU here (NVML lists none, or there is no driver)")
    config = api_yaml("gpu-api", predictor_extra="processes_per_replica: 2\nthreads_per_process: 1\nconfig: {sleep: 1}",
                      api_extra=f"compute: {{gpu: {min(2, len(found))}}}")
    server = Server(write_project(tmp_path / "project", {"cortex.yaml": config, "predictor.py": ENV_REPORTER}))
    servers.append(server)
    server.wait_ready(120)
    answers: list[dict] = []
    threads = [threading.Thread(target=lambda: answers.append(server.client.post("/gpu-api", json={}).json()))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = ["0", "1"] if len(found) >= 2 else ["0", "0"]
    assert sorted(answer["CUDA_VISIBLE_DEVICES"] for answer in answers) == expected


def _onnx_iris(tmp_path: Path) -> Path:
    project = tmp_path / "onnx-iris"
    shutil.copytree(ONNX_IRIS, project)
    config = (project / "cortex.yaml").read_text()
    (project / "cortex.yaml").write_text(config.rstrip("\n") + "\n  compute:\n    gpu: 1\n")
    return project
