"""TensorFlow in this process: imported on first use, thread pools sized from the device, GPU memory growth."""
from __future__ import annotations

import logging
import os
import threading
from types import ModuleType

from engine import Device

log = logging.getLogger("engine.tensorflow")

# TensorFlow reads these itself; a user who sets them chooses the pool sizes instead of engine.
INTRA_OP_ENV = "TF_NUM_INTRAOP_THREADS"
INTER_OP_ENV = "TF_NUM_INTEROP_THREADS"
GPU_INSTALL_HINT = 'pip uninstall -y tensorflow-cpu && pip install "tensorflow[and-cuda]"'

_lock = threading.Lock()
_requested: int | None = None  # device.threads of the first API that configured this process


def tensorflow() -> ModuleType:
    """Import TensorFlow (once per process; seconds) with its C++ INFO logs off unless the user chose a level."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    import tensorflow as tf

    return tf


def configure(device: Device) -> None:
    """Before TensorFlow's first op: size its thread pools to device.threads; on CUDA, let GPU memory grow."""
    global _requested
    tf = tensorflow()
    with _lock:
        if _requested is None:
            _requested = device.threads
            set_threads(tf, device.threads)
            if device.kind == "cuda":
                enable_memory_growth(tf)
        elif _requested != device.threads:
            log.warning("TensorFlow's thread pools were sized for %d threads in this process; another API asks for "
                        "%d and shares them", _requested, device.threads)


def set_threads(tf: ModuleType, threads: int) -> tuple[int, int]:
    """Size both pools to `threads` unless TF_NUM_INTRAOP_THREADS/TF_NUM_INTEROP_THREADS are set; return the sizes."""
    intra = int(os.environ.get(INTRA_OP_ENV) or threads)
    inter = int(os.environ.get(INTER_OP_ENV) or threads)
    try:
        if INTRA_OP_ENV not in os.environ:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if INTER_OP_ENV not in os.environ:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError as error:  # the predictor module (or another API) already ran TensorFlow
        log.warning("cannot size TensorFlow's thread pools (%s): TensorFlow was initialised before the models were "
                    "loaded; set %s and %s to choose them", error, INTRA_OP_ENV, INTER_OP_ENV)
        return (tf.config.threading.get_intra_op_parallelism_threads(),
                tf.config.threading.get_inter_op_parallelism_threads())
    log.info("TensorFlow thread pools: %d intra-op, %d inter-op threads", intra, inter)
    return intra, inter


def enable_memory_growth(tf: ModuleType) -> list[str]:
    """Let each visible GPU's memory grow as needed instead of being taken whole, so processes can share a GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        log.warning("compute.gpu is set but TensorFlow sees no GPU (CUDA_VISIBLE_DEVICES=%s); the models run on the "
                    "CPU. The tensorflow-cpu build cannot use GPUs: %s", os.environ.get("CUDA_VISIBLE_DEVICES"),
                    GPU_INSTALL_HINT)
    grown = []
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
            grown.append(gpu.name)
        except RuntimeError as error:  # GPUs already initialised: too late to change
            log.warning("cannot turn on memory growth for %s: %s", gpu.name, error)
    if grown:
        log.info("TensorFlow GPU memory growth on for %s", ", ".join(grown))
    return grown
