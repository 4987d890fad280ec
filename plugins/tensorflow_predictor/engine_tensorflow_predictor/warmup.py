"""TensorFlow Serving's SavedModel warm-up: the PredictionLog records of `assets.extra/tf_serving_warmup_requests`,
replayed against each version as it loads (at start-up and when a new version is found), before it takes traffic.

The file is a TFRecord file of serialized tensorflow.serving.PredictionLog messages; engine replays their
`predict_log` requests (classify, regress, multi-inference, session-run and streamed logs are skipped, with a log
line). The few messages needed are declared here, field numbers as in TensorFlow Serving's public .proto files
(tensorflow_serving/apis/{prediction_log,predict,model}.proto), so that tensorflow-serving-api (which requires the
full `tensorflow` distribution, not tensorflow-cpu) is not needed; TensorProto is TensorFlow's own.
"""
from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from engine_tensorflow_predictor import runtime
from engine_tensorflow_predictor.signatures import SignatureError

if TYPE_CHECKING:
    from engine_tensorflow_predictor.model import SavedModel

log = logging.getLogger("engine.tensorflow")

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_RECORDS = 1000  # as TensorFlow Serving: a longer file is an error, not a long start
DEFAULT_SIGNATURE = "serving_default"  # what TensorFlow Serving runs for a request that names no signature
PACKAGE = "engine_tensorflow_predictor.serving"  # not tensorflow.serving: never clashes with tensorflow-serving-api's
SKIPPED_KINDS = {"classify_log": 2, "regress_log": 3, "multi_inference_log": 4, "session_run_log": 5,
                 "predict_streamed_log": 7}


class WarmupError(Exception):
    """A warm-up record could not be read or replayed; the message names the record."""


def replay(model: SavedModel, configured: str | None) -> int:
    """Replay the version's warm-up records, if it has the file (`configured`: the signature_key that serves
    requests, when known); the number replayed. WarmupError at the first that fails."""
    path = model.path / WARMUP_FILE
    if not path.is_file():
        return 0
    tf = runtime.tensorflow()
    prediction_log = message_class("PredictionLog")
    started = time.monotonic()
    replayed, skipped = 0, Counter[str]()
    try:
        records = list(tf.data.TFRecordDataset(str(path)).take(MAX_RECORDS + 1).as_numpy_iterator())
    except Exception as error:  # tf.errors.DataLossError for a file that is not TFRecord
        raise WarmupError(f"{WARMUP_FILE} is not a readable TFRecord file: {type(error).__name__}: "
                          f"{getattr(error, 'message', None) or error}") from None
    if len(records) > MAX_RECORDS:
        raise WarmupError(f"{WARMUP_FILE} has more than {MAX_RECORDS} records; keep a few representative requests")
    for number, record in enumerate(records, start=1):
        try:
            entry = prediction_log.FromString(record)
        except Exception as error:  # google.protobuf.message.DecodeError
            raise WarmupError(f"record {number} of {WARMUP_FILE} is not a PredictionLog: {error}") from None
        kind = entry.WhichOneof("log_type")
        if kind != "predict_log":
            skipped[kind or "empty"] += 1
            continue
        try:
            _run(tf, model, entry.predict_log.request, configured)
        except WarmupError as error:
            raise WarmupError(f"warm-up record {number} of {WARMUP_FILE} failed: {error}") from None
        except Exception as error:
            message = getattr(error, "message", None) or str(error)
            raise WarmupError(f"warm-up record {number} of {WARMUP_FILE} failed: {type(error).__name__}: "
                              f"{message}") from None
        replayed += 1
    if skipped:
        log.warning("%s: skipped %s of %s: engine replays predict_log records only", model.path,
                    ", ".join(f"{count} {kind}" for kind, count in sorted(skipped.items())), WARMUP_FILE)
    log.info("%s: %d warm-up record%s of %s replayed in %.2f s", model.path, replayed, "" if replayed == 1 else "s",
             WARMUP_FILE, time.monotonic() - started)
    return replayed


def _run(tf: Any, model: SavedModel, request: Any, configured: str | None) -> None:
    """One PredictRequest against its signature: the one it names, else the serving one."""
    name = request.model_spec.signature_name or configured
    if name is None and DEFAULT_SIGNATURE in model.signatures:
        name = DEFAULT_SIGNATURE
    try:
        signature = model.signature(name)
    except SignatureError as error:
        raise WarmupError(str(error)) from None
    unknown = sorted(set(request.inputs) - set(signature.inputs))
    if unknown:
        raise WarmupError(f"signature '{signature.key}' has no input {', '.join(unknown)}; its inputs: "
                          f"{sorted(signature.inputs)}")
    signature.run({key: tf.make_ndarray(tensor) for key, tensor in request.inputs.items()})


@functools.cache
def message_class(name: str) -> Any:
    """PredictionLog, PredictLog, PredictRequest or ModelSpec: a protobuf message class (declared once)."""
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.Default()
    try:
        descriptor = pool.FindMessageTypeByName(f"{PACKAGE}.{name}")
    except KeyError:
        pool.AddSerializedFile(_file().SerializeToString())
        descriptor = pool.FindMessageTypeByName(f"{PACKAGE}.{name}")
    return message_factory.GetMessageClass(descriptor)


def _file() -> Any:
    """The messages warm-up reads, as a FileDescriptorProto (proto3; unknown fields are kept, not needed)."""
    from google.protobuf import descriptor_pb2
    from tensorflow.core.framework import tensor_pb2

    field = descriptor_pb2.FieldDescriptorProto
    optional, repeated = field.LABEL_OPTIONAL, field.LABEL_REPEATED

    def message(name: str, *fields: Any, nested: tuple[Any, ...] = (), oneofs: tuple[str, ...] = ()) -> Any:
        return descriptor_pb2.DescriptorProto(name=name, field=fields, nested_type=nested,
                                              oneof_decl=[descriptor_pb2.OneofDescriptorProto(name=o) for o in oneofs])

    def string(name: str, number: int) -> Any:
        return field(name=name, number=number, label=optional, type=field.TYPE_STRING)

    def of(name: str, number: int, type_name: str, label: int = optional, oneof: int | None = None) -> Any:
        made = field(name=name, number=number, label=label, type=field.TYPE_MESSAGE, type_name=type_name)
        if oneof is not None:
            made.oneof_index = oneof
        return made

    inputs_entry = message("InputsEntry", string("key", 1), of("value", 2, ".tensorflow.TensorProto"))
    inputs_entry.options.map_entry = True
    logs = [of("predict_log", 6, f".{PACKAGE}.PredictLog", oneof=0)]
    logs += [of(kind, number, f".{PACKAGE}.SkippedLog", oneof=0) for kind, number in SKIPPED_KINDS.items()]
    return descriptor_pb2.FileDescriptorProto(
        name="engine_tensorflow_predictor/prediction_log.proto", package=PACKAGE, syntax="proto3",
        dependency=[tensor_pb2.DESCRIPTOR.name],
        message_type=[
            message("ModelSpec", string("name", 1), string("signature_name", 3)),
            message("PredictRequest", of("model_spec", 1, f".{PACKAGE}.ModelSpec"),
                    of("inputs", 2, f".{PACKAGE}.PredictRequest.InputsEntry", repeated), nested=(inputs_entry,)),
            message("PredictLog", of("request", 1, f".{PACKAGE}.PredictRequest")),
            message("SkippedLog"),  # the log types engine does not replay: read, not looked into
            message("PredictionLog", *logs, oneofs=("log_type",)),
        ])
