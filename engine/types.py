"""Plain data types exchanged between the core and plugins."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from engine.models import ModelRepository
    from engine.models.layout import ModelFormat
    from engine.project.config import Api
    from engine.serving.batching import Batching


@dataclass(frozen=True)
class PredictorType:
    """A predictor type a plugin provides, e.g. `onnx` served by class `ONNXPredictor` given `onnx_client`: all
    engine needs of it, so that the core dispatches by `predictor.type` and no hook filters on a type's name."""

    name: str
    class_name: str
    client_arg: str
    requires_models: bool = False
    # True for `python`: the user's class must define load_model() when models are configured.
    user_loads_models: bool = False
    # Predictor fields only this type accepts (signature_key, tensorflow_serving_image, multi_model_reloading).
    type_fields: frozenset[str] = frozenset()
    # True when the model client merges concurrent inference calls itself (server_side_batching stays invisible to
    # predict()); False when the core hands predict() lists of requests, as the python type does.
    client_batching: bool = False
    # Builds how this type validates, loads and frees one model version (see engine.models.ModelFormat).
    model_format: Callable[[Api, Device], ModelFormat] | None = None
    # Builds the client the predictor gets as `client_arg`: (api, device, models or None, batching or None); None
    # when this configuration needs none (python without models). Left out, a type gets no client.
    create_client: Callable[[Api, Device, ModelRepository | None, Batching | None], object] | None = None
    # The problems this type sees in one of its APIs, (api, project_root) → lines; run by serve and validate.
    validate: Callable[[Api, Path], list[str]] | None = None


@dataclass
class Device:
    """What one worker process may use, as set up by the hardware plugin that owns the API's compute."""

    kind: str  # "cpu", "cuda", "inferentia", ...
    process_index: int = 0
    env: dict[str, str] = field(default_factory=dict)  # variables the plugin set in os.environ
    visible_devices: list[str] = field(default_factory=list)
    threads: int = 1  # intra-op threads a framework may use in this process
    # What one plugin tells others, by a name they agree on: the cuda target gives "onnx_providers", for instance.
    options: dict[str, object] = field(default_factory=dict)
