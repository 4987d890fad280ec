"""The `sklearn` predictor type: class SklearnPredictor, given sklearn_client, serving scikit-learn models.

A model version is a directory holding one `model.joblib` (what joblib.dump wrote). Built only on engine's public
plugin API, as any third-party plugin would be.
"""
from __future__ import annotations

from engine import PredictorType, hookimpl
from engine_sklearn.client import SklearnClient, SklearnModelFormat

SKLEARN = PredictorType(
    name="sklearn",
    class_name="SklearnPredictor",
    client_arg="sklearn_client",
    requires_models=True,  # every sklearn API serves at least one model...
    model_format=lambda api, device: SklearnModelFormat(),  # ...this is how a version is read...
    create_client=lambda api, device, models, batching: SklearnClient(models),  # ...and what the predictor gets
)


@hookimpl
def engine_predictor_types():
    """Provide the sklearn predictor type."""
    return [SKLEARN]
