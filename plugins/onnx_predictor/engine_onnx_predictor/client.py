"""onnx_client: Cortex's ONNXClient (predict, get_model) over the shared model repository."""
from __future__ import annotations

from typing import Any

from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from engine import DEFAULT_MODEL_NAME, Batching, ModelError, ModelRepository, TensorSpec
from engine_onnx_predictor import tensors
from engine_onnx_predictor.batching import batch_key, run_batch, unwrap
from engine_onnx_predictor.convert import describe_value, to_feed
from engine_onnx_predictor.model_format import OnnxModel


class ONNXClient:
    """What an ONNXPredictor gets as onnx_client."""

    def __init__(self, repository: ModelRepository, batching: Batching | None = None) -> None:
        self._repository = repository
        self.batcher = batching.thread_batcher(lambda key, calls: run_batch(calls)) if batching else None

    def predict(self, model_input: Any, model_name: str | None = None,
                model_version: str | int | None = "latest") -> list[Any]:
        """Convert model_input as Cortex did, run the model and return the list of all its outputs."""
        model: OnnxModel = self._repository.get(model_name, model_version)
        label = self._label(model, model_name, model_version)
        return self._run(model, to_feed(model_input, model.inputs, label), label)

    # --- engine.ServesTensors: for protocols that speak in named tensors (the Open Inference Protocol) ---

    def tensor_models(self) -> dict[str, list[str]]:
        """Each model's versions, newest first."""
        return {name: entry["versions"] for name, entry in self._repository.metadata().items() if entry["versions"]}

    def tensor_signature(self, model_name: str, version: str | None) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """A version's inputs and outputs, read from its session."""
        return tensors.signature(self._repository.get(model_name, version or "latest").session)

    def infer(self, model_name: str, version: str | None, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run a version on named arrays of its inputs' dtypes; its outputs by name (the version held loaded)."""
        with self._repository.use(model_name, version or "latest") as model:
            label = self._label(model, model_name, version)
            outputs = self._run(model, tensors.feed(inputs, model.inputs, label), label)
            return {node.name: output for node, output in zip(model.session.get_outputs(), outputs, strict=True)}

    def _run(self, model: OnnxModel, feed: dict[str, Any], label: str) -> list[Any]:
        key = batch_key(model, feed) if self.batcher is not None else None
        try:
            if key is not None and self.batcher is not None:
                return unwrap(self.batcher.call(key, (model, feed)))
            return model.session.run(None, feed)
        except InvalidArgument as error:  # onnxruntime rejected the converted input (type or shape)
            given = ", ".join(f"'{name}': {describe_value(value)}" for name, value in feed.items())
            raise ModelError(f"failed inference with {label}: {error} (inputs given: {given})", 400) from None
        except Exception as error:
            raise ModelError(f"failed inference with {label}: {type(error).__name__}: {error}", 500) from error

    def get_model(self, model_name: str | None = None, model_version: str | int | None = "latest") -> dict[str, Any]:
        """Cortex's {"session": InferenceSession, "signatures": its inputs, "input_signatures": {name: shape, type}}."""
        model: OnnxModel = self._repository.get(model_name, model_version)
        return model.cortex_dict()

    def metadata(self) -> dict[str, Any]:
        """model_metadata of the API's GET summary."""
        return self._repository.metadata()

    def _label(self, model: OnnxModel, model_name: str | None, model_version: Any) -> str:
        name = DEFAULT_MODEL_NAME if self._repository.single else model_name
        return f"model '{name}' of version {model_version if model_version is not None else 'latest'} ({model.path})"
