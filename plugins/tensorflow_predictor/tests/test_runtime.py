"""The plugin's footprint and TensorFlow's process set-up: no import at start, thread pools, GPU memory growth."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import engine_tensorflow_predictor
import pytest
from engine_tensorflow_predictor import runtime

from engine import Api, Device
from engine.testing import plugin_manager, predictor_type

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "tensorflow-iris"


def run_python(code: str, **env: str) -> str:
    """Run code in a fresh interpreter; return its stdout (fail with its stderr)."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env}, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.e2e
def test_loading_every_plugin_and_validating_a_project_do_not_import_tensorflow(tmp_path):
    (tmp_path / "model").mkdir()
    shutil.copy(EXAMPLE / "predictor.py", tmp_path)
    shutil.copy(EXAMPLE / "cortex.yaml", tmp_path)
    out = run_python(f"""
        import sys
        from engine.testing import plugin_manager, predictor_type, validate
        pm = plugin_manager(entry_points=True)
        validate({str(tmp_path)!r}, pm=pm)
        print(predictor_type(pm, "tensorflow").class_name, "tensorflow" in sys.modules)
    """)
    assert out.split() == ["TensorFlowPredictor", "False"]


def test_the_predictor_type_is_cortexs():
    ptype = predictor_type(plugin_manager(entry_points=True), "tensorflow")
    assert (ptype.class_name, ptype.client_arg, ptype.requires_models) == \
        ("TensorFlowPredictor", "tensorflow_client", True)
    assert ptype.type_fields == {"signature_key", "tensorflow_serving_image"}
    assert ptype.model_format is not None
    assert ptype.client_batching  # server_side_batching happens in tensorflow_client: predict() sees one request


def test_tensorflow_env_vars_win_over_the_device():
    calls = []
    threading = SimpleNamespace(set_intra_op_parallelism_threads=lambda n: calls.append(("intra", n)),
                                set_inter_op_parallelism_threads=lambda n: calls.append(("inter", n)))
    fake = SimpleNamespace(config=SimpleNamespace(threading=threading))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(runtime.INTRA_OP_ENV, "3")
        assert runtime.set_threads(fake, 2) == (3, 2)
    assert calls == [("inter", 2)]


def test_too_late_to_size_the_pools_is_a_warning(caplog):
    def refuse(n):
        raise RuntimeError("Intra op parallelism cannot be modified after initialization.")

    threading = SimpleNamespace(set_intra_op_parallelism_threads=refuse, set_inter_op_parallelism_threads=refuse,
                                get_intra_op_parallelism_threads=lambda: 0, get_inter_op_parallelism_threads=lambda: 0)
    fake = SimpleNamespace(config=SimpleNamespace(threading=threading))
    with caplog.at_level(logging.WARNING, "engine.tensorflow"):
        assert runtime.set_threads(fake, 2) == (0, 0)
    assert "TensorFlow was initialised before the models were loaded" in caplog.text


class FakeGpuTensorFlow:
    """Just enough of tf.config for the GPU path: devices, memory growth and thread pools, recorded."""

    def __init__(self, gpus: int, refuse: bool = False) -> None:
        self.grown: list[tuple[str, bool]] = []
        self.threads: list[int] = []

        def set_memory_growth(device, enable):
            if refuse:
                raise RuntimeError("Physical devices cannot be modified after being initialized")
            self.grown.append((device.name, enable))

        devices = [SimpleNamespace(name=f"/physical_device:GPU:{i}", device_type="GPU") for i in range(gpus)]
        self.config = SimpleNamespace(
            list_physical_devices=lambda kind: devices if kind == "GPU" else [],
            experimental=SimpleNamespace(set_memory_growth=set_memory_growth),
            threading=SimpleNamespace(set_intra_op_parallelism_threads=self.threads.append,
                                      set_inter_op_parallelism_threads=self.threads.append))


@pytest.fixture
def fake_tensorflow(monkeypatch):
    """configure() against a fake TensorFlow in a process that has not configured it yet."""
    def install(fake):
        monkeypatch.setattr(runtime, "tensorflow", lambda: fake)
        monkeypatch.setattr(runtime, "_requested", None)
        monkeypatch.delenv(runtime.INTRA_OP_ENV, raising=False)
        monkeypatch.delenv(runtime.INTER_OP_ENV, raising=False)
        return fake

    return install


def test_cuda_devices_turn_on_memory_growth_for_every_gpu(fake_tensorflow):
    fake = fake_tensorflow(FakeGpuTensorFlow(gpus=2))
    runtime.configure(Device(kind="cuda", threads=4, visible_devices=["0", "1"]))
    assert fake.grown == [("/physical_device:GPU:0", True), ("/physical_device:GPU:1", True)]
    assert fake.threads == [4, 4]


def test_cpu_devices_leave_gpus_alone(fake_tensorflow):
    fake = fake_tensorflow(FakeGpuTensorFlow(gpus=1))
    runtime.configure(Device(kind="cpu", threads=2))
    assert fake.grown == [] and fake.threads == [2, 2]


def test_the_process_is_configured_once(fake_tensorflow, caplog):
    fake = fake_tensorflow(FakeGpuTensorFlow(gpus=1))
    runtime.configure(Device(kind="cuda", threads=2))
    with caplog.at_level(logging.WARNING, "engine.tensorflow"):
        runtime.configure(Device(kind="cuda", threads=3))
    assert fake.grown == [("/physical_device:GPU:0", True)] and fake.threads == [2, 2]
    assert "sized for 2 threads in this process; another API asks for 3" in caplog.text


def test_no_visible_gpu_warns_how_to_install_the_gpu_build(fake_tensorflow, caplog):
    fake_tensorflow(FakeGpuTensorFlow(gpus=0))
    with caplog.at_level(logging.WARNING, "engine.tensorflow"):
        runtime.configure(Device(kind="cuda", threads=1))
    assert "TensorFlow sees no GPU" in caplog.text and 'pip install "tensorflow[and-cuda]"' in caplog.text


def test_gpus_already_initialised_are_a_warning(fake_tensorflow, caplog):
    fake = fake_tensorflow(FakeGpuTensorFlow(gpus=1, refuse=True))
    with caplog.at_level(logging.WARNING, "engine.tensorflow"):
        runtime.configure(Device(kind="cuda", threads=1))
    assert fake.grown == [] and "cannot turn on memory growth for /physical_device:GPU:0" in caplog.text


def api(type_: str = "tensorflow") -> Api:
    return Api.model_validate({"name": "x", "kind": "RealtimeAPI",
                               "predictor": {"type": type_, "path": "p.py", "model_path": "m"}})


def test_validate_says_how_to_install_tensorflow_when_it_is_missing(monkeypatch, tmp_path):
    validate = engine_tensorflow_predictor.TENSORFLOW.validate
    assert validate(api(), tmp_path) == []
    monkeypatch.setattr(engine_tensorflow_predictor.importlib.util, "find_spec", lambda name: None)
    assert validate(api(), tmp_path) == [
        ("predictor.type: tensorflow needs TensorFlow, which is not installed: pip install 'engine[tensorflow]' "
         "(or pip install tensorflow-cpu)")]


def test_the_type_is_one_object_and_implements_no_other_hook():
    assert engine_tensorflow_predictor.TENSORFLOW.create_client is not None
    assert not [name for name in dir(engine_tensorflow_predictor) if name.startswith("engine_")
                and name != "engine_predictor_types"]

