"""python_client: the user's load_model() behind the shared model repository."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine import ModelError, ModelRepository


class PythonModelFormat:
    """Any non-empty directory (or file) is a version; loading calls the predictor's load_model(model_path)."""

    expected_tree = "any files your load_model() reads, e.g.\n  model.pkl"

    def __init__(self) -> None:
        self.load_method: Callable[[str], Any] | None = None

    def validate(self, files: list[str]) -> str | None:
        """Anything non-empty loads."""
        return None if files else "the directory is empty"

    def load(self, path: Path) -> Any:
        """Call the user's load_model with the version's local path."""
        if self.load_method is None:
            raise RuntimeError("models are loaded only after the predictor's __init__ has returned")
        return self.load_method(str(path))

    def unload(self, model: Any) -> None:
        """Nothing to do: dropping the reference frees the model (Cortex's rule: it must be freeable with del)."""

    def describe(self, model: Any) -> dict[str, Any]:
        """Arbitrary user objects have nothing to show."""
        return {}


class PythonClient:
    """What a PythonPredictor gets as python_client."""

    def __init__(self, repository: ModelRepository) -> None:
        fmt = repository.fmt
        if not isinstance(fmt, PythonModelFormat):
            raise TypeError(f"python_client loads models with PythonModelFormat, not {type(fmt).__name__}")
        self._repository = repository
        self._format = fmt

    def get_model(self, model_name: str | None = None, model_version: str | int | None = "latest") -> Any:
        """What load_model returned for that version ("latest" by default, also when model_version is None)."""
        if self._format.load_method is None:  # checked here, so that no version is marked broken for it
            raise ModelError("python_client.get_model() works only after the predictor's __init__ has returned "
                             "(models are loaded with its load_model method); call it from predict()")
        return self._repository.get(model_name, model_version)

    def set_load_method(self, load_model: Callable[[str], Any]) -> None:
        """Called by engine with the predictor's load_model once __init__ has returned."""
        self._format.load_method = load_model

    def metadata(self) -> dict[str, Any]:
        """model_metadata of the API's GET summary."""
        return self._repository.metadata()
