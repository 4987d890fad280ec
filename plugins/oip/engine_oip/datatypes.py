"""The protocol's datatypes and the numpy dtype names that hold them (BYTES: an object array of bytes); without
numpy, so that describing the routes imports nothing heavy."""

DTYPE_NAMES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
    "BYTES": "object",
}
