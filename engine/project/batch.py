"""Cortex's BatchAPI (`kind: BatchAPI`): its schema and Cortex v0.25's checks of it, in Cortex's words."""
from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError
from pydantic_core.core_schema import ValidatorFunctionWrapHandler

from engine.project.config import Api
from engine.project.config_errors import Rules
from engine.project.sections import Autoscaling, Integer, Monitoring, Networking, UpdateStrategy

KIND = "BatchAPI"
KEYS = ("name", "kind", "predictor", "networking", "compute")  # Cortex's BatchAPI sections
NETWORKING_KEYS = ("endpoint", "api_gateway")
_OTHER_KINDS_KEYS = frozenset({*Api.model_fields, *Networking.model_fields, "apis"})


class BatchNetworking(Networking):
    """A BatchAPI's `networking`: endpoint and api_gateway (local_port stays None, left out of a dump)."""

    local_port: Integer | None = Field(default=None, exclude=True)


class BatchApi(Api):
    """One BatchAPI of cortex.yaml: a predictor whose jobs' workers each run one batch at a time; `compute` is per
    worker. The sections a BatchAPI lacks keep their defaults, so that whatever takes an Api takes a BatchApi; a dump
    (model_dump) has Cortex's BatchAPI keys only, and validates again."""

    kind: Literal["BatchAPI"]
    networking: BatchNetworking = Field(default_factory=BatchNetworking)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, exclude=True)
    update_strategy: UpdateStrategy | None = Field(default=None, exclude=True)
    monitoring: Monitoring | None = Field(default=None, exclude=True)

    @model_validator(mode="wrap")
    @classmethod
    def _supported_keys(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Every key outside Cortex's BatchAPI schema is a problem, reported with the fields' own problems."""
        rules = Rules("BatchApi")
        if isinstance(data, dict):
            data = _without_unsupported(data, (), KEYS, rules)
            if isinstance(data.get("networking"), dict):
                data["networking"] = _without_unsupported(data["networking"], ("networking",), NETWORKING_KEYS,
                                                          rules)
        try:
            api = handler(data)
        except ValidationError as error:
            rules.errors[:0] = [_init_details(problem) for problem in error.errors()]
            rules.check()
            raise
        rules.check()
        return api

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, kind: str) -> str:
        return kind  # the Literal checked it (the base class refuses BatchAPI)

    @model_validator(mode="after")
    def _cross_checks(self) -> BatchApi:
        """Cortex's BatchAPI-only predictor checks (the base's checks concern what a BatchAPI cannot set)."""
        rules = Rules("BatchApi")
        predictor = self.predictor
        for name in ("processes_per_replica", "threads_per_process"):
            if getattr(predictor, name) > 1:
                rules.add(("predictor", name), f"{_refused(name)} (given: {getattr(predictor, name)}; only 1 is "
                                               "allowed: a job's batches run in parallel on its workers)")
        if predictor.server_side_batching is not None:
            rules.add(("predictor", "server_side_batching"), f"{_refused('server_side_batching')} (a worker "
                      "predicts one batch of the job at a time, of the submission's batch_size)")
        if predictor.multi_model_reloading is not None:
            rules.add(("predictor", "multi_model_reloading"), f"{_refused('multi_model_reloading')} (give "
                      "predictor.models or predictor.model_path, as Cortex v0.22–v0.24 did)")
        if predictor.warmup_file is not None:
            rules.add(("predictor", "warmup_file"), f"{_refused('warmup_file')} (a job's workers answer no requests "
                      "before their batches)")
        source = "multi_model_reloading" if predictor.multi_model_reloading is not None else "models"
        for name in ("cache_size", "disk_cache_size", "memory_budget", "disk_budget"):
            if predictor.models is not None and getattr(predictor.models, name) is not None:
                rules.add(("predictor", source, name), f"{_refused(name)} (a worker loads its models once, "
                                                       "before its first batch)")
        rules.check()
        return self


def _refused(key: str) -> str:
    """Cortex's words for a predictor key a BatchAPI cannot have."""
    return f"{key} key is not supported for {KIND} kind"


def _without_unsupported(data: dict[Any, Any], loc: tuple[str, ...], allowed: tuple[str, ...],
                         rules: Rules) -> dict[Any, Any]:
    """`data` without the keys outside `allowed`, each recorded in `rules` in Cortex's words."""
    kept = {}
    for key, value in data.items():
        if not isinstance(key, str) or key in allowed:
            kept[key] = value
            continue
        # a key of the other kinds (autoscaling, apis, local_port...) is no typo of a BatchAPI key
        close = [] if key in _OTHER_KINDS_KEYS else difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        rules.add((*loc, key), f'key "{key}" is not supported; {hint}allowed here: {", ".join(sorted(allowed))}')
    return kept


def _init_details(problem: ErrorDetails) -> InitErrorDetails:
    """A problem pydantic found, as it can be raised again beside others (its type, message and context kept)."""
    error = PydanticCustomError(problem["type"], problem["msg"], problem.get("ctx"))
    return InitErrorDetails(type=error, loc=problem["loc"], input=problem["input"])
