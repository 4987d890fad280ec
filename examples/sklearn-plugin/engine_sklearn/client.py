"""sklearn_client, and how the model repository reads one version of a scikit-learn model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np

from engine import ModelError, ModelRepository

MODEL_FILE = "model.joblib"


class SklearnModelFormat:
    """A version is a directory with one model.joblib; the repository handles versions, reloading and caching."""

    expected_tree = MODEL_FILE

    def validate(self, files: list[str]) -> str | None:
        """None when the version holds model.joblib, else what is wrong."""
        return None if MODEL_FILE in files else f"{MODEL_FILE} is missing"

    def load(self, path: Path) -> Any:
        """The estimator joblib.dump wrote."""
        return joblib.load(path / MODEL_FILE)

    def unload(self, model: Any) -> None:
        """Nothing to release: dropping the reference frees it."""

    def describe(self, model: Any) -> dict[str, Any]:
        """What the API's GET summary shows about a loaded version."""
        described: dict[str, Any] = {"estimator": type(model).__name__}
        if hasattr(model, "n_features_in_"):
            described["features"] = int(model.n_features_in_)
        if hasattr(model, "classes_"):
            described["classes"] = np.asarray(model.classes_).tolist()
        return described


class SklearnClient:
    """What a SklearnPredictor gets as sklearn_client."""

    def __init__(self, repository: ModelRepository) -> None:
        self._repository = repository

    def predict(self, model_input: Any, model_name: str | None = None,
                model_version: str | int | None = "latest") -> list[Any]:
        """The model's predictions for one row (a list of numbers) or several (a list of rows)."""
        model = self._repository.get(model_name, model_version)
        rows = np.asarray(model_input, dtype=float)
        try:
            return model.predict(rows.reshape(1, -1) if rows.ndim == 1 else rows).tolist()
        except ValueError as error:  # the wrong number of features, for instance: the client's mistake
            raise ModelError(f"the model cannot predict for this input: {error}", 400) from None

    def get_model(self, model_name: str | None = None, model_version: str | int | None = "latest") -> Any:
        """The estimator itself."""
        return self._repository.get(model_name, model_version)

    def metadata(self) -> dict[str, Any]:
        """model_metadata of the API's GET summary."""
        return self._repository.metadata()
