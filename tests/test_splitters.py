"""TrafficSplitter's configuration (engine.project.splitters) and its weighted choice (engine.serving.splitter.Split):
every file shape of Cortex v0.22–v0.25 accepted, what a reload refuses, and the choice's exact shares."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.project.config import read_config
from engine.project.loading import load_project
from engine.project.splitters import TrafficSplitter, reread
from engine.serving.splitter import Split

ONNX_MODEL = Path(__file__).resolve().parents[1] / "examples" / "onnx-iris" / "model" / "model.onnx"

APIS_V22 = """
- name: iris-classifier-onnx
  kind: RealtimeAPI
  predictor:
    type: onnx
    path: onnx_predictor.py
    model_path: model/
  monitoring:
    model_type: classification

- name: iris-classifier-python
  kind: RealtimeAPI
  predictor:
    type: python
    path: python_predictor.py
    config:
      model: s3://cortex-examples/pytorch/iris-classifier/weights.pth
"""
APIS_V25 = APIS_V22.replace("    model_path: model/", "    models:\n      path: model/")

# The TrafficSplitter entries Cortex v0.22–v0.25 documented or shipped, and v0.31's shadow (an extension here).
SHAPES = {
    "example": """
        - name: iris-classifier
          kind: TrafficSplitter
          apis:
            - name: iris-classifier-onnx
              weight: 30
            - name: iris-classifier-python
              weight: 70
        """,
    "networking": """
        - name: iris-classifier
          kind: TrafficSplitter
          networking:
            endpoint: my/splitter
            api_gateway: none
          apis:
            - name: iris-classifier-onnx
              weight: 100
            - name: iris-classifier-python
              weight: 0
        """,
    "public gateway, null endpoint": """
        - name: iris-classifier
          kind: TrafficSplitter
          networking:
            endpoint: null
            api_gateway: public
          apis:
            - {name: iris-classifier-python, weight: 50}
            - {name: iris-classifier-onnx, weight: 50}
        """,
    "shadow (v0.31)": """
        - name: iris-classifier
          kind: TrafficSplitter
          apis:
            - name: iris-classifier-onnx
              weight: 100
            - name: iris-classifier-python
              shadow: true
              weight: 100
        """,
}


@pytest.mark.parametrize("apis", [APIS_V22, APIS_V25], ids=["v0.22-v0.24", "v0.25"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_cortex_splitter_shape_is_accepted(tmp_path, apis, shape):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.onnx").write_bytes(ONNX_MODEL.read_bytes())
    (tmp_path / "onnx_predictor.py").write_text("class ONNXPredictor:\n    def __init__(self, onnx_client, config):\n"
                                                "        pass\n\n    def predict(self, payload):\n        return 1\n")
    (tmp_path / "python_predictor.py").write_text("class PythonPredictor:\n    def __init__(self, config):\n"
                                                  "        pass\n\n    def predict(self, payload):\n        return 2\n")
    (tmp_path / "cortex.yaml").write_text(textwrap.dedent(apis) + textwrap.dedent(SHAPES[shape]))
    loaded = load_project(tmp_path)
    (splitter,) = loaded.splitters
    assert splitter.name == "iris-classifier"
    assert splitter.endpoint == ("/my/splitter" if shape == "networking" else "/iris-classifier")
    assert sorted(api.name for api in loaded.apis) == ["iris-classifier-onnx", "iris-classifier-python"]


def config_file(tmp_path: Path, splitters: str) -> Path:
    path = tmp_path / "cortex.yaml"
    path.write_text(textwrap.dedent(APIS_V25) + textwrap.dedent(splitters))
    return path


def test_a_reload_keeps_the_splitters_and_their_endpoints(tmp_path):
    served = read_config(config_file(tmp_path, SHAPES["example"])).splitters
    path = config_file(tmp_path, SHAPES["example"].replace("30", "60").replace("70", "40"))
    assert [target.weight for target in reread(path, served, ["iris-classifier-onnx", "iris-classifier-python"])[0]
            .apis] == [60, 40]
    with pytest.raises(ConfigError, match=r"not served by this engine \(RealtimeAPIs added"):
        reread(path, served, ["iris-classifier-onnx"])
    with pytest.raises(ConfigError, match=r"was: iris-classifier at /iris-classifier; now: iris-classifier at "
                                          r"/my/splitter\)"):
        reread(config_file(tmp_path, SHAPES["networking"]), served, ["iris-classifier-onnx", "iris-classifier-python"])
    with pytest.raises(ConfigError, match="expected weights to sum to 100 but found 90"):
        reread(config_file(tmp_path, SHAPES["example"].replace("30", "20")), served, [])


def split(weights: dict[str, int], shadow: int | None = None) -> Split:
    """The Split of a splitter with these weights (and a shadow API `copy` with that share)."""
    apis: list[dict[str, object]] = [{"name": name, "weight": weight} for name, weight in weights.items()]
    if shadow is not None:
        apis.append({"name": "copy", "weight": shadow, "shadow": True})
    return Split(TrafficSplitter.model_validate({"name": "s", "kind": "TrafficSplitter", "apis": apis}))


@pytest.mark.parametrize("weights", [{"a": 30, "b": 70}, {"a": 0, "b": 100}, {"a": 100, "b": 0},
                                     {"a": 1, "b": 0, "c": 99}, {"a": 33, "b": 33, "c": 34}])
def test_each_api_gets_exactly_its_weight_of_the_draws(weights):
    chosen = split(weights)
    slices = [chosen.choose((n + 0.5) / 100) for n in range(100)] + [chosen.choose(0.0), chosen.choose(0.9999999)]
    assert {name: slices[:100].count(name) for name in weights} == weights
    assert all(weights[name] > 0 for name in slices)  # weight 0 never, even at the ends of [0, 1)


@pytest.mark.parametrize("share", [0, 1, 25, 100])
def test_the_shadow_gets_exactly_its_share(share):
    mirrored = split({"a": 100}, shadow=share)
    assert sum(mirrored.mirror((n + 0.5) / 100) for n in range(100)) == share
    assert mirrored.mirror(0.0) == (share > 0) and mirrored.mirror(0.9999999) == (share == 100)
    assert mirrored.shadow == ("copy" if share else None)
