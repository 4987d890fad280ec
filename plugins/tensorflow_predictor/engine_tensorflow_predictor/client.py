"""tensorflow_client: runs a SavedModel's signature in this process, answering as Cortex's client did."""
from __future__ import annotations

from typing import Any

import numpy as np

from engine import DEFAULT_MODEL_NAME, Batching, ModelError, ModelRepository, TensorSpec
from engine_tensorflow_predictor.batching import SignatureBatcher
from engine_tensorflow_predictor.inputs import convert_inputs
from engine_tensorflow_predictor.model import SavedModel
from engine_tensorflow_predictor.outputs import cortex_outputs
from engine_tensorflow_predictor.signatures import (
    SignatureError,
    SignatureKeys,
    select_signature,
)


class TensorFlowClient:
    """What a TensorFlowPredictor gets as tensorflow_client."""

    def __init__(self, repository: ModelRepository, keys: SignatureKeys,
                 batching: Batching | None = None) -> None:
        self._repository = repository
        self._keys = keys
        self._batcher = SignatureBatcher(batching) if batching is not None else None

    def predict(self, model_input: dict[str, Any], model_name: str | None = None,
                model_version: str | int | None = "latest", *, raw: bool = False) -> dict[str, Any]:
        """Run the model's signature on a dict of its inputs; outputs as Cortex gave them, or numpy arrays if raw."""
        model: SavedModel = self._repository.get(model_name, model_version)
        name = DEFAULT_MODEL_NAME if self._repository.single or model_name is None else model_name
        version = "latest" if model_version is None else model_version
        where = f"model '{name}' of version '{version}'"
        try:
            signature = model.signature(self._keys.for_model(name))
        except SignatureError as error:
            raise ModelError(f"{where}: {error}") from None
        arrays = convert_inputs(model_input, signature.inputs, f"{where} (signature '{signature.key}')")
        try:
            outputs = self._batcher.run(signature, arrays) if self._batcher else signature.run(arrays)
        except Exception as error:
            message = getattr(error, "message", None) or str(error)
            raise ModelError(f"inference failed for {where} (signature '{signature.key}'): "
                             f"{type(error).__name__}: {message}") from error
        return outputs if raw else cortex_outputs(outputs)

    # --- engine.ServesTensors: for protocols that speak in named tensors (the Open Inference Protocol) ---

    def tensor_models(self) -> dict[str, list[str]]:
        """Each model's versions, newest first."""
        return {name: entry["versions"] for name, entry in self._repository.metadata().items() if entry["versions"]}

    def tensor_signature(self, model_name: str, version: str | None) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """The inputs and outputs of the version's serving signature."""
        signature = self._signature(model_name, version)[0]
        return [_spec(spec) for spec in signature.inputs.values()], [_spec(spec) for spec in signature.outputs.values()]

    def infer(self, model_name: str, version: str | None, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run the version's serving signature on named arrays (converted as predict converts its inputs), the version
        held loaded meanwhile."""
        with self._repository.use(model_name, version or "latest") as model:
            signature, where = self._signature(model_name, version, model)
            unknown = sorted(set(inputs) - set(signature.inputs))
            if unknown:
                raise ModelError(f"{where} has no input {', '.join(unknown)}; its inputs: {sorted(signature.inputs)}",
                                 400)
            arrays = convert_inputs(inputs, signature.inputs, f"{where} (signature '{signature.key}')")
            try:
                return self._batcher.run(signature, arrays) if self._batcher else signature.run(arrays)
            except Exception as error:
                message = getattr(error, "message", None) or str(error)
                raise ModelError(f"inference failed for {where}: {type(error).__name__}: {message}") from error

    def _signature(self, model_name: str, version: str | None, model: SavedModel | None = None) -> tuple[Any, str]:
        model = model or self._repository.get(model_name, version or "latest")
        name = DEFAULT_MODEL_NAME if self._repository.single else model_name
        where = f"model '{name}' of version '{version or 'latest'}'"
        try:
            return model.signature(self._keys.for_model(name)), where
        except SignatureError as error:
            raise ModelError(f"{where}: {error}") from None

    def metadata(self) -> dict[str, Any]:
        """model_metadata of the API's GET summary: versions, and per loaded version its signature and inputs."""
        summary = self._repository.metadata()
        for name, entry in summary.items():
            for described in entry.get("details", {}).values():
                self._choose(name, described)
        return summary

    def _choose(self, name: str, described: dict[str, Any]) -> None:
        signatures = described.get("signatures", {})
        try:
            key = select_signature(list(signatures), self._keys.for_model(name))
        except SignatureError as error:
            described["signature_error"] = str(error)
            return
        described["signature_key"] = key
        described["input_signatures"] = signatures[key]["inputs"]


def _spec(spec: Any) -> TensorSpec:
    """A signature's tensor as engine.TensorSpec: numpy dtype name ("object" for strings), -1 for any size."""
    dtype = np.dtype(spec.np_dtype).name if spec.np_dtype is not None else spec.dtype
    return TensorSpec(spec.name, dtype, tuple(-1 if dim is None else dim for dim in spec.shape or ()))
