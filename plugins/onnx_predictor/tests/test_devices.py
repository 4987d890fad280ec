"""Execution providers and intra-op threads: from the device, with a clear fallback and an env override."""
from __future__ import annotations

import logging

import pytest
from engine_onnx_predictor import ONNX
from engine_onnx_predictor.model_format import (
    THREADS_ENV,
    OnnxModelFormat,
    intra_op_threads,
    usable_providers,
)

from engine import ConfigError, Device, usable_cores
from engine.testing import api_yaml, make_api, plugin_manager, setup_device


@pytest.fixture
def onnx_api():
    """Build an onnx Api from extra YAML lines under the API."""

    def make(api_extra: str = "", predictor_extra: str = "model_path: model/"):
        return make_api(api_yaml("clf", type_="onnx", api_extra=api_extra, predictor_extra=predictor_extra))

    return make


def test_cpu_only_build_falls_back_from_cuda_with_a_warning_naming_onnxruntime_gpu(caplog):
    with caplog.at_level(logging.WARNING, logger="engine.onnx"):
        chosen = usable_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"], "clf")
    assert chosen == ["CPUExecutionProvider"]
    (record,) = caplog.records
    message = record.getMessage()
    assert "api 'clf'" in message and "CUDAExecutionProvider is not available" in message
    assert "running with CPUExecutionProvider instead" in message
    assert "pip uninstall -y onnxruntime && pip install onnxruntime-gpu" in message


def test_no_usable_provider_left_means_cpu(caplog):
    assert usable_providers(["TensorrtExecutionProvider"], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert "onnxruntime-gpu" in caplog.text


def test_available_providers_keep_their_order_and_options(caplog):
    requested = [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert usable_providers(requested, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == requested
    assert caplog.records == []


def test_threads_come_from_the_device_unless_the_env_overrides(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert intra_op_threads(3) == 3
    assert intra_op_threads(0) == 1
    monkeypatch.setenv(THREADS_ENV, "2")
    assert intra_op_threads(8) == 2
    monkeypatch.setenv(THREADS_ENV, "0")
    assert intra_op_threads(8) == 0  # onnxruntime's own default
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ConfigError, match=f"{THREADS_ENV} must be a whole number of threads"):
        intra_op_threads(8)


def test_model_format_takes_providers_and_threads_from_the_device(onnx_api, monkeypatch, tmp_path, models):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    device = Device(kind="cuda", options={"onnx_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]},
                    threads=3)
    fmt = ONNX.model_format(onnx_api(), device)
    assert isinstance(fmt, OnnxModelFormat) and fmt.intra_op_threads == 3
    loaded = fmt.load(models.identity(tmp_path / "m.onnx").parent)
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert fmt.providers == ["CPUExecutionProvider"]
    assert loaded.session.get_session_options().intra_op_num_threads == 3
    assert fmt.describe(loaded)["intra_op_threads"] == 3


@pytest.mark.parametrize("processes", [1, 2])
def test_cpu_device_shares_the_cores_between_worker_processes(onnx_api, monkeypatch, processes):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                "NUMEXPR_NUM_THREADS"):
        monkeypatch.setenv(var, "1")  # set already: the cpu plugin leaves them (and the test process) alone
    api = onnx_api(predictor_extra=f"model_path: model/\nprocesses_per_replica: {processes}")
    device = setup_device(plugin_manager(entry_points=True), api, 0)
    fmt = ONNX.model_format(api, device)
    assert fmt.intra_op_threads == max(1, usable_cores() // processes)
    assert fmt.providers == ["CPUExecutionProvider"]
