"""The plugin as engine finds it: entry point, predictor type, config checks, client creation, lazy imports."""
from __future__ import annotations

import subprocess
import sys

import pytest
from engine_onnx_predictor.client import ONNXClient

from engine import ConfigError, Device
from engine.testing import (
    api_yaml,
    create_client,
    load_apis,
    plugin_infos,
    plugin_manager,
    predictor_type,
    validate,
    write_project,
)

PREDICTOR = """
class ONNXPredictor:
    def __init__(self, onnx_client, config):
        self.client = onnx_client

    def predict(self, payload):
        return self.client.predict(payload)[0]
"""


@pytest.fixture
def project(tmp_path, models):
    """Write an onnx project with one model; extra lines go under predictor: and under the API."""

    def make(predictor_extra: str = "model_path: model/", api_extra: str = "", predictor: str = PREDICTOR):
        models.identity(tmp_path / "p" / "model" / "m.onnx")
        return write_project(tmp_path / "p", {
            "cortex.yaml": api_yaml("clf", type_="onnx", predictor_extra=predictor_extra, api_extra=api_extra),
            "predictor.py": predictor,
        })

    return make


def test_the_entry_point_provides_the_onnx_type():
    pm = plugin_manager(entry_points=True)
    ptype = predictor_type(pm, "onnx")
    assert (ptype.class_name, ptype.client_arg, ptype.requires_models) == ("ONNXPredictor", "onnx_client", True)
    assert ptype.model_format is not None and ptype.type_fields == frozenset()
    (info,) = [info for info in plugin_infos(pm) if info.name == "onnx"]
    assert info.distribution.split()[0] == "engine-onnx-predictor"  # "name version"
    assert info.hooks == ["engine_predictor_types"]  # the type carries its client, model format and checks


@pytest.mark.e2e
def test_loading_the_plugin_does_not_import_onnxruntime():
    code = ("import sys, engine_onnx_predictor as plugin; "
            "assert [t.name for t in plugin.engine_predictor_types()] == ['onnx']; "
            "assert 'onnxruntime' not in sys.modules, 'onnxruntime imported at plugin load'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_valid_project_validates(project):
    apis = validate(project())
    assert [api.predictor.type for api in apis] == ["onnx"]


def test_v025_spelling_models_path_to_a_file_validates(project):
    validate(project(predictor_extra="models:\n  path: model/m.onnx"))


@pytest.mark.parametrize("predictor_extra, api_extra, expected", [
    ("model_path: model/", "compute:\n  inf: 1", "the onnx predictor type cannot run on Inferentia"),
    ("", "", "at least one model must be specified for the onnx predictor type"),
    ("model_path: model/\nsignature_key: serving_default", "", "signature_key is not a supported field"),
])
def test_what_cortex_rejected_for_onnx_is_rejected(project, predictor_extra, api_extra, expected):
    with pytest.raises(ConfigError, match=expected):
        validate(project(predictor_extra=predictor_extra, api_extra=api_extra))


def test_init_must_declare_onnx_client(project):
    without_client = PREDICTOR.replace("onnx_client, config", "config")
    with pytest.raises(ConfigError, match=r'ONNXPredictor: __init__\(\) argument "onnx_client" is required'):
        validate(project(predictor=without_client))


def test_engine_builds_the_onnx_client_of_an_onnx_api(project, repository, tmp_path):
    root = project()
    api = load_apis(root / "cortex.yaml")[0]
    repo, _ = repository({"path": "p/model"})
    pm = plugin_manager(entry_points=True)
    assert isinstance(create_client(pm, api, Device(kind="cpu"), repo), ONNXClient)
