"""The model repository extension (Triton's): each model's versions and state for the index, and loading and
unloading a model by its OIP name, through the API's model repository (engine.ModelRepository: load, unload).

Everything here but `refused_parameters` runs inside an operation (engine.Operation), in the process that holds the
API's predictor; load and unload run in every process of the API (Operation.everywhere). Their body is the canonical
{"name": <OIP name>}, whatever the client sent, so that a worker process started later catches up with one call
per model and action.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from engine import DEFAULT_MODEL_NAME, ModelError, ModelRepository, ServesTensors
from engine_oip.models import oip_name

READY, UNAVAILABLE, UNLOADED = "READY", "UNAVAILABLE", "unloaded"


def refused_parameters(keys: Iterable[str]) -> str | None:
    """Why a load's or unload's parameters are refused: Triton's model overrides (a config, files) are not served."""
    overrides = sorted(key for key in keys if key == "config" or key.startswith("file:"))
    if not overrides:
        return None
    return (f"the parameters {', '.join(overrides)} are not supported: engine-oip loads a model from the location "
            "its api's cortex.yaml configures, as it is there (a new version is a new version directory)")


def index(context: Any) -> list[dict[str, Any]]:
    """The index rows of the API an operation runs for: one per model version, READY, or UNAVAILABLE with the
    reason "unloaded"; a python api's own row (its predictor) has no version."""
    api, models = context.api, context.models
    rows: list[dict[str, Any]] = []
    if models is None or not (models.single or isinstance(context.client, ServesTensors)):
        rows.append({"name": api.name, "state": READY})
    if models is None:
        return rows
    unloaded = set(models.unloaded())
    for model, entry in sorted(models.metadata().items()):
        state = {"state": UNAVAILABLE, "reason": UNLOADED} if model in unloaded else {"state": READY}
        rows += [{"name": oip_name(api.name, model), "version": version, **state} for version in entry["versions"]]
    return rows


def load(context: Any, body: bytes) -> dict[str, Any]:
    """Make the model named in the body available and loaded (ModelRepository.load)."""
    name, models, model = _target(context, body)
    models.load(model)
    return {"name": name, "state": READY}


def unload(context: Any, body: bytes) -> dict[str, Any]:
    """Make the model named in the body unavailable and free its memory (ModelRepository.unload)."""
    name, models, model = _target(context, body)
    models.unload(model)
    return {"name": name, "state": UNAVAILABLE, "reason": UNLOADED}


def _target(context: Any, body: bytes) -> tuple[str, ModelRepository, str]:
    """The OIP name in the body, the API's repository, and the model's name in it; ModelError when there is none."""
    name = orjson.loads(body)["name"]
    api, models = context.api, context.models
    if models is None:
        raise ModelError(f"model '{name}' has no models to load or unload: api '{api.name}' is a "
                         f"{api.predictor.type} predictor without models (cortex.yaml configures none)", 400)
    names = sorted(oip_name(api.name, model) for model in models.model_names())
    if models.single:
        if name != api.name:
            raise ModelError(f"unknown model '{name}': api '{api.name}' serves one model, '{api.name}'", 404)
        return name, models, DEFAULT_MODEL_NAME
    if name == api.name:
        raise ModelError(f"api '{api.name}' serves several models: load or unload each by its name, "
                         f"'{api.name}.<model>': {', '.join(names) or 'none yet'}", 400)
    if name not in names:
        raise ModelError(f"unknown model '{name}'; api '{api.name}' serves: {', '.join(names) or 'none yet'}", 404)
    return name, models, name[len(api.name) + 1:]
