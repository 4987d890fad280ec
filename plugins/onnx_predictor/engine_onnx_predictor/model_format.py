"""The ONNX model format: one .onnx file per version, loaded into an onnxruntime InferenceSession."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from engine import ConfigError, Device, PluginError
from engine_onnx_predictor.convert import InputSpec

log = logging.getLogger("engine.onnx")

THREADS_ENV = "ENGINE_ONNX_INTRA_OP_THREADS"
EXPECTED_TREE = "model.onnx    (exactly one file whose name ends in .onnx, any name, and nothing else)"

# Which package brings an execution provider that a plain `onnxruntime` wheel lacks.
PROVIDER_PACKAGES = {
    "CUDAExecutionProvider": "onnxruntime-gpu",
    "TensorrtExecutionProvider": "onnxruntime-gpu",
    "ROCMExecutionProvider": "onnxruntime-rocm",
    "MIGraphXExecutionProvider": "onnxruntime-rocm",
    "DmlExecutionProvider": "onnxruntime-directml",
    "OpenVINOExecutionProvider": "onnxruntime-openvino",
}

Provider = str | tuple[str, dict[str, Any]]


@dataclass
class OnnxModel:
    """One loaded version: its session, the file it came from and its inputs as the converter reads them."""

    session: ort.InferenceSession
    path: Path
    inputs: list[InputSpec]

    def cortex_dict(self) -> dict[str, Any]:
        """What Cortex's onnx_client.get_model() returned: session, signatures and input_signatures."""
        signatures = self.session.get_inputs()
        input_signatures = {spec.name: {"shape": list(spec.shape),
                                        "type": spec.dtype.name if spec.dtype is not None else spec.type}
                            for spec in self.inputs}
        return {"session": self.session, "signatures": signatures, "input_signatures": input_signatures}


class OnnxModelFormat:
    """Checks, loads and describes ONNX versions with the execution providers and threads of one worker process."""

    expected_tree = EXPECTED_TREE

    def __init__(self, providers: list[Provider], intra_op_threads: int) -> None:
        self.providers = providers
        self.intra_op_threads = intra_op_threads

    def validate(self, files: list[str]) -> str | None:
        """None for exactly one .onnx file directly in the version directory (or a single-file model)."""
        if files == [""]:  # models.path names the file itself
            return None
        if not files:
            return "the directory is empty"
        models = [path for path in files if path.lower().endswith(".onnx")]
        nested = [path for path in models if "/" in path]
        others = [path for path in files if path not in models]
        if nested:
            return f"the .onnx file must be directly in the version directory, not in a sub-directory ({nested[0]})"
        if len(models) > 1:
            return f"found {len(models)} .onnx files ({', '.join(sorted(models))}); a version holds exactly one"
        if others:
            shown = ", ".join(sorted(others)[:5]) + (", ..." if len(others) > 5 else "")
            what = "no .onnx file, only" if not models else "files other than the .onnx model:"
            return f"found {what} {shown}; a version directory holds exactly one .onnx file and nothing else"
        return None

    def load(self, path: Path) -> OnnxModel:
        """Create an InferenceSession for the version's .onnx file."""
        file = path if path.is_file() else _model_file(path)
        if file.suffix.lower() != ".onnx":
            raise ValueError(f"{file} is not an .onnx file")
        session = ort.InferenceSession(str(file), sess_options=self.session_options(), providers=self.providers)
        return OnnxModel(session, file, [InputSpec.of(node) for node in session.get_inputs()])

    def size(self, model: OnnxModel) -> int:
        """The bytes the memory budget counts: the .onnx file's, its initializers nearly all of it (a session holds a
        copy of them: measured, a session's memory grows by the file's size)."""
        return model.path.stat().st_size

    def unload(self, model: OnnxModel) -> None:
        """Nothing to do: onnxruntime frees the session when the last reference goes."""

    def describe(self, model: OnnxModel) -> dict[str, Any]:
        """The GET summary of one version: file, inputs and outputs (name, shape, type), providers and threads."""
        return {
            "file": model.path.name,
            "inputs": [_node(node) for node in model.session.get_inputs()],
            "outputs": [_node(node) for node in model.session.get_outputs()],
            "providers": model.session.get_providers(),
            "intra_op_threads": model.session.get_session_options().intra_op_num_threads,
        }

    def session_options(self) -> ort.SessionOptions:
        """Session options with this process's intra-op thread count (0 lets onnxruntime choose)."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        return options


def model_format(api: Any, device: Device) -> OnnxModelFormat:
    """The format for one API in one worker process: providers and threads from the device, threads overridable."""
    requested = device.options.get("onnx_providers", ["CPUExecutionProvider"])  # the hardware plugin's choice
    if not isinstance(requested, list | tuple):
        raise PluginError(f"device option onnx_providers must be a list of execution providers, not {requested!r}")
    providers = usable_providers(list(requested), ort.get_available_providers(), api.name)
    return OnnxModelFormat(providers, intra_op_threads(device.threads))


def usable_providers(requested: list[Provider], available: list[str], api_name: str = "") -> list[Provider]:
    """The requested providers this onnxruntime build has, in order; warns about the others (CPU if none is left)."""
    name = lambda provider: provider if isinstance(provider, str) else provider[0]  # noqa: E731
    usable = [provider for provider in requested if name(provider) in available] or ["CPUExecutionProvider"]
    for missing in [name(provider) for provider in requested if name(provider) not in available]:
        package = PROVIDER_PACKAGES.get(missing)
        hint = f"install {package} in place of onnxruntime (pip uninstall -y onnxruntime && pip install {package})" \
            if package else "install an onnxruntime build that includes it"
        log.warning("api '%s': onnxruntime execution provider %s is not available in this onnxruntime build "
                    "(available: %s); running with %s instead. To use it, %s.",
                    api_name, missing, ", ".join(available), ", ".join(map(name, usable)), hint)
    return usable


def intra_op_threads(device_threads: int) -> int:
    """$ENGINE_ONNX_INTRA_OP_THREADS when set (0 = onnxruntime's default), else the device's share of the cores."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return max(1, device_threads)
    if not raw.isdigit():
        raise ConfigError(f"{THREADS_ENV} must be a whole number of threads (0 lets onnxruntime choose), not {raw!r}")
    return int(raw)


def _model_file(directory: Path) -> Path:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() == ".onnx"
                   and not p.name.startswith("."))
    if len(files) != 1:
        raise ValueError(f"{directory} must hold exactly one .onnx file, found {len(files)}")
    return files[0]


def _node(node: Any) -> dict[str, Any]:
    return {"name": node.name, "shape": list(node.shape or ()), "type": node.type}
