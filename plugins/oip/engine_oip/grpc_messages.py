"""The Open Inference Protocol's ModelInfer messages, read and written inside the operation (where the model runs):
inputs from raw_input_contents or the typed contents, outputs always in raw_output_contents. No grpcio here: only
protobuf's messages, so that REST-only serving never imports grpc."""
from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from engine import ModelError
from engine_oip.models import InferRequest
from engine_oip.protocol import open_inference_pb2 as pb
from engine_oip.tensors import (
    DATATYPES,
    check_datatype,
    check_shape,
    datatype_of,
    element_count,
    from_raw,
    to_raw,
)

# The typed `contents` field that holds each datatype (FP16 has none: raw contents only).
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def decode_request(body: bytes) -> InferRequest:
    """A ModelInferRequest's inputs, from raw_input_contents or the typed contents."""
    try:
        message = pb.ModelInferRequest.FromString(body)
    except DecodeError as error:
        raise ModelError(f"the request is not a ModelInferRequest: {error}", 400) from None
    request = InferRequest(id=message.id, parameters=_parameters(message.parameters))
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise ModelError(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs", 400)
    if not message.inputs:
        raise ModelError("the inference request has no inputs", 400)
    for index, tensor in enumerate(message.inputs):
        name, datatype = tensor.name, tensor.datatype
        if not name:
            raise ModelError(f"input {index} needs a name", 400)
        if name in request.inputs:
            raise ModelError(f"input '{name}' is given twice", 400)
        check_datatype(datatype, name)
        shape = check_shape(list(tensor.shape), name)
        if raw:
            array = from_raw(name, datatype, shape, raw[index])
        else:
            if datatype not in CONTENTS:
                raise ModelError(f"input '{name}': {datatype} goes in raw_input_contents (no typed contents hold it)",
                                 400)
            values = getattr(tensor.contents, CONTENTS[datatype])
            count = element_count(shape)
            if len(values) != count:
                raise ModelError(f"input '{name}': shape {shape} holds {count} elements, but contents has "
                                 f"{len(values)}", 400)
            if datatype == "BYTES":
                array = np.empty(count, dtype=object)
                array[:] = list(values)
            else:
                try:
                    array = np.array(values, dtype=DATATYPES[datatype])
                except OverflowError as error:
                    raise ModelError(f"input '{name}': contents are not {datatype}: {error}", 400) from None
            array = array.reshape(shape)
        request.inputs[name] = array
        request.datatypes[name] = datatype
    if message.outputs:
        request.outputs = [output.name for output in message.outputs]
    return request


def encode_response(model: str, version: str | None, request: InferRequest,
                    outputs: list[tuple[str, np.ndarray]]) -> bytes:
    """A ModelInferResponse with every output in raw_output_contents."""
    response = pb.ModelInferResponse(model_name=model, model_version=version or "", id=request.id)
    for name, array in outputs:
        response.outputs.add(name=name, datatype=datatype_of(array.dtype), shape=list(array.shape))
        response.raw_output_contents.append(to_raw(array))
    return response.SerializeToString()


def _parameters(parameters: Any) -> dict[str, Any]:
    return {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in parameters.items()
            if value.WhichOneof("parameter_choice")}
