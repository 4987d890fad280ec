"""Which Open Inference Protocol models an API serves, and what they answer: names, metadata, readiness, inference.

Naming (docs/oip.md): an API with one model (predictor.model_path, or models.path) is the OIP model named after the
API; an API with named models (models.paths, or models.dir) serves each as `<api>.<model>`; a python API is one OIP
model named after the API, whose inference its predictor opts in to with `predict_tensors`. API names cannot hold
a dot, so the API of any OIP name is the part before its first dot.

Everything here but `locate` runs inside an operation (engine.Operation), on the API's thread pool, in the process
that holds the API's predictor and client.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine import DEFAULT_MODEL_NAME, ModelError, ServesTensors, TensorSpec
from engine_oip.tensors import DATATYPES, as_output, datatype_of

# A predictor type's models, as the protocol's `platform` field names them (Triton's names); others: the type.
PLATFORMS = {"onnx": "onnxruntime_onnx", "tensorflow": "tensorflow_savedmodel"}
# What a python predictor defines to serve inference over the protocol, and, optionally, to describe its tensors.
PREDICT_METHOD = "predict_tensors"
SIGNATURE_METHOD = "tensor_signature"


def locate(api_names: list[str], name: str) -> str | None:
    """The API that serves the OIP model `name`, or None."""
    api = name.split(".", 1)[0]
    return api if api in api_names else None


def unknown_model(name: str, api_names: list[str]) -> str:
    """What a client is told of an OIP name that no API serves."""
    return (f"unknown model '{name}'; models are named after their api ('<api>' or '<api>.<model>'), and the apis "
            f"are: {', '.join(api_names)}")


def oip_name(api_name: str, model: str) -> str:
    """The OIP name of an API's model (DEFAULT_MODEL_NAME: the API's only model)."""
    return api_name if model == DEFAULT_MODEL_NAME else f"{api_name}.{model}"


@dataclass
class Signature:
    """A model's tensors as the protocol describes them: (name, datatype, shape with -1)."""

    inputs: list[tuple[str, str, list[int]]]
    outputs: list[tuple[str, str, list[int]]]

    def describe(self) -> dict[str, Any]:
        """The inputs and outputs as the protocol's metadata lists them."""
        def tensors(specs):
            return [{"name": name, "datatype": datatype, "shape": shape} for name, datatype, shape in specs]
        return {"inputs": tensors(self.inputs), "outputs": tensors(self.outputs)}


@dataclass
class InferRequest:
    """An inference request, whatever it came over: inputs by name (in the request's order) with the datatype each
    was sent as, and the outputs asked for (None: all)."""

    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    datatypes: dict[str, str] = field(default_factory=dict)
    outputs: list[str] | None = None


class Model:
    """One OIP model of the API an operation runs for: found by its OIP name (and version) or a 404."""

    def __init__(self, context: Any, name: str, version: str | None) -> None:
        api = context.api
        self.context, self.name, self.version = context, name, version or None
        self.platform = PLATFORMS.get(api.predictor.type, api.predictor.type)
        part = None if name == api.name else name[len(api.name) + 1:]
        self.tensors = isinstance(context.client, ServesTensors)
        if self.version is not None and not (self.version.isascii() and self.version.isdigit()):
            raise ModelError(f"model '{name}' has no version '{self.version}': versions are numbers", 404)
        if not self.tensors:  # a python predictor (or another type whose client serves no tensors)
            if part is not None:
                raise ModelError(f"unknown model '{name}': api '{api.name}' serves one model, '{api.name}'", 404)
            if self.version is not None:
                raise ModelError(f"model '{name}' has no versions (a {api.predictor.type} predictor)", 404)
            self.model = None
            return
        models = api.predictor.models
        if models is not None and models.path is not None:  # one model: the API's name
            if part is not None:
                raise ModelError(f"unknown model '{name}': api '{api.name}' serves one model, '{api.name}'", 404)
            self.model = DEFAULT_MODEL_NAME
        elif part is None:
            raise ModelError(f"api '{api.name}' serves several models, each named '{api.name}.<model>': "
                             f"{', '.join(self.names()) or 'none yet'}", 404)
        else:
            self.model = part

    # --- what the model is ---------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The OIP names of every model the API serves now."""
        return sorted(oip_name(self.context.api.name, model) for model in self.context.client.tensor_models())

    def versions(self) -> list[str]:
        """Its versions, newest first (none for a predictor); a 404 when it does not exist or lacks the version."""
        if not self.tensors:
            return []
        versions = self.context.client.tensor_models().get(self.model)
        if versions is None:
            raise ModelError(f"unknown model '{self.name}'; api '{self.context.api.name}' serves: "
                             f"{', '.join(self.names()) or 'none yet'}", 404)
        if self.version is not None and self.version not in versions:
            raise ModelError(f"model '{self.name}' has no version {self.version}; its versions: "
                             f"{', '.join(versions)}", 404)
        return versions

    def signature(self) -> Signature | None:
        """Its inputs and outputs; None for a predictor that does not describe them."""
        if self.tensors:
            try:
                inputs, outputs = self.context.client.tensor_signature(self.model, self.version)
            except ModelError as error:
                if error.status_code == 404:
                    self.versions()  # says which of the name and the version is unknown
                raise
            return Signature([_spec(spec) for spec in inputs], [_spec(spec) for spec in outputs])
        describe = getattr(self.context.predictor, SIGNATURE_METHOD, None)
        if describe is None:
            return None
        return _predictor_signature(describe())

    def metadata(self) -> dict[str, Any]:
        """The protocol's model metadata."""
        versions = self.versions()
        signature = self.signature() or Signature([], [])
        return {"name": self.name, "versions": versions, "platform": self.platform, **signature.describe()}

    def ready(self) -> bool:
        """It exists (with that version) and is not unloaded (its API is ready, or the operation would not run)."""
        self.versions()
        models = self.context.models
        if models is None:
            return True
        model = self.model if self.tensors else DEFAULT_MODEL_NAME if models.single else None  # None: the predictor
        return model not in models.unloaded()

    # --- inference -----------------------------------------------------------------------------------------------

    def infer(self, request: InferRequest) -> list[tuple[str, np.ndarray]]:
        """Check the request against the model's signature, run it, and return the outputs asked for, in order."""
        predict = None
        if not self.tensors:
            predict = getattr(self.context.predictor, PREDICT_METHOD, None)
            if predict is None:
                raise ModelError(f"model '{self.name}' is a {self.context.api.predictor.type} predictor without a "
                                 f"{PREDICT_METHOD}(self, inputs) method, so it cannot serve inference over the Open "
                                 "Inference Protocol (docs/oip.md says how to add one)", 400)
        signature = self.signature()
        if signature is not None:
            _check(self.name, signature, request)
        if predict is not None:
            produced = predict(dict(request.inputs))
            if not isinstance(produced, Mapping):
                raise ModelError(f"{PREDICT_METHOD} of api '{self.context.api.name}' returned "
                                 f"{type(produced).__name__}, not a dict of arrays by output name", 500)
        else:
            produced = self.context.client.infer(self.model, self.version, dict(request.inputs))
        wanted = request.outputs if request.outputs is not None else list(produced)
        missing = [name for name in wanted if name not in produced]
        if missing:
            raise ModelError(f"model '{self.name}' has no output {', '.join(map(repr, missing))}; its outputs: "
                             f"{', '.join(map(str, produced))}", 400)
        return [(name, as_output(name, produced[name])) for name in wanted]


def _spec(spec: TensorSpec) -> tuple[str, str, list[int]]:
    return spec.name, datatype_of(spec.dtype), [int(dim) for dim in spec.shape]


def _predictor_signature(answer: Any) -> Signature:
    """What a predictor's tensor_signature() returned: (inputs, outputs), each a list of engine.TensorSpec, of
    (name, dtype, shape) tuples or of {"name", "datatype" or "dtype", "shape"} dicts."""
    try:
        inputs, outputs = answer
        return Signature([_predictor_spec(spec) for spec in inputs], [_predictor_spec(spec) for spec in outputs])
    except (TypeError, ValueError, KeyError) as error:
        raise ModelError(f"{SIGNATURE_METHOD}() must return (inputs, outputs), each a list of engine.TensorSpec "
                         f"or (name, dtype, shape): {type(error).__name__}: {error}", 500) from None


def _predictor_spec(spec: Any) -> tuple[str, str, list[int]]:
    if isinstance(spec, TensorSpec):
        name, dtype, shape = spec.name, spec.dtype, spec.shape
    elif isinstance(spec, Mapping):
        name, dtype, shape = spec["name"], spec.get("datatype", spec.get("dtype")), spec["shape"]
    else:
        name, dtype, shape = spec
    datatype = dtype if dtype in DATATYPES else datatype_of(dtype)
    return str(name), datatype, [-1 if dim is None else int(dim) for dim in shape]


def _check(model: str, signature: Signature, request: InferRequest) -> None:
    """The inputs the model takes, each of its datatype and a shape it accepts; outputs it has."""
    expected = {name: (datatype, shape) for name, datatype, shape in signature.inputs}
    missing = [name for name in expected if name not in request.inputs]
    unknown = [name for name in request.inputs if name not in expected]
    if missing or unknown:
        raise ModelError(f"model '{model}' takes the inputs {', '.join(expected) or 'none'}; "
                         + "; ".join(part for part in (f"missing: {', '.join(missing)}" if missing else "",
                                                       f"unknown: {', '.join(unknown)}" if unknown else "") if part),
                         400)
    for name, (datatype, shape) in expected.items():
        given, array = request.datatypes[name], request.inputs[name]
        if given != datatype:
            raise ModelError(f"input '{name}' of model '{model}' is {datatype}, not {given}", 400)
        if shape and (len(shape) != array.ndim or
                      any(0 <= want != got for want, got in zip(shape, array.shape, strict=True))):
            raise ModelError(f"input '{name}' of model '{model}' takes the shape {shape} (-1: any size), not "
                             f"{list(array.shape)}", 400)
    if request.outputs is not None:
        outputs = [name for name, _, _ in signature.outputs]
        unknown = [name for name in request.outputs if name not in outputs]
        if unknown:
            raise ModelError(f"model '{model}' has no output {', '.join(map(repr, unknown))}; its outputs: "
                             f"{', '.join(outputs)}", 400)
