"""A constructed predictor: the user's methods called with only the arguments they declare, alone or in batches."""
from __future__ import annotations

import copy
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from engine import plugins
from engine.errors import PredictorLoadError
from engine.models import ModelRepository
from engine.models.budget import holding
from engine.plugin_api import LoadsUserModels
from engine.project.config import Api
from engine.project.predictor_class import Signature, load_class
from engine.serving.batching import Batching
from engine.types import Device


class Predictor:
    """A constructed predictor and the argument names its methods take."""

    def __init__(self, instance: Any, methods: dict[str, Signature]) -> None:
        self.instance = instance
        # async def methods run on the API's own event loop (engine.serving.eventloop), the others on its thread pool
        self.async_predict = inspect.iscoroutinefunction(instance.predict)
        self.async_stream = inspect.isasyncgenfunction(instance.predict)  # async def predict that yields
        self.async_post_predict = inspect.iscoroutinefunction(getattr(instance, "post_predict", None))
        self.async_load_model = inspect.iscoroutinefunction(getattr(instance, "load_model", None))
        self.predict_args = methods["predict"].args
        self.post_predict_args = methods["post_predict"].args if "post_predict" in methods else None
        wanted = set(self.predict_args) | set(self.post_predict_args or ())
        self.wants_payload = "payload" in wanted
        self.wants_query_params = "query_params" in wanted
        self.wants_headers = "headers" in wanted
        self.holds_models = True  # False for an API without models: nothing for its predicts to hold

    @classmethod
    def construct(cls, predictor_class: type, methods: dict[str, Signature], config: dict[str, Any],
                  client_arg: str, client: Any, job_spec: dict[str, Any] | None = None) -> Predictor:
        """Run the user's __init__ with the declared arguments (config is a deep copy; job_spec is a BatchAPI
        job's, None for a RealtimeAPI as in Cortex)."""
        init = methods.get("__init__", Signature((), frozenset()))
        declared = init.args
        offered = {"config": copy.deepcopy(config), "job_spec": job_spec}
        if client is not None:
            offered[client_arg] = client
        elif client_arg in declared and client_arg not in init.with_defaults:
            raise PredictorLoadError(f"{predictor_class.__name__}.__init__ declares {client_arg}, but no "
                                     f"{client_arg} is created for this API (no models are configured); give it "
                                     "a default or remove it")
        instance = predictor_class(**{name: offered[name] for name in declared if name in offered})
        return cls(instance, methods)

    @property
    def is_async(self) -> bool:
        """True when some method runs on an event loop."""
        return self.async_predict or self.async_stream or self.async_post_predict or self.async_load_model

    def predict(self, arguments: dict[str, Any]) -> Any:
        """Call predict() with the arguments it declared (a coroutine, for an async predict); the models it gets stay
        loaded until it returns (engine.models.budget.holding)."""
        if not self.holds_models:
            return self.instance.predict(**{name: arguments.get(name) for name in self.predict_args})
        if self.async_predict:
            call = self.instance.predict(**{name: arguments.get(name) for name in self.predict_args})
            held: Any = _holding_async(call)
            held.__qualname__ = call.__qualname__  # what the event loop's reports name (engine.serving.eventloop)
            return held
        with holding():
            return self.instance.predict(**{name: arguments.get(name) for name in self.predict_args})

    def predict_batch(self, batch: list[dict[str, Any]]) -> list[Any]:
        """Call a sync predict() once for a batch: every declared argument is a list, in arrival order."""
        with holding():
            return batch_results(self.instance.predict(**self._batched(batch)), batch)

    async def predict_batch_async(self, batch: list[dict[str, Any]]) -> list[Any]:
        """Await an async predict() once for a batch."""
        with holding():
            return batch_results(await self.instance.predict(**self._batched(batch)), batch)

    def _batched(self, batch: list[dict[str, Any]]) -> dict[str, list[Any]]:
        return {name: [arguments.get(name) for arguments in batch] for name in self.predict_args}

    def post_predict(self, response: Any, arguments: dict[str, Any]) -> Any:
        """Call post_predict() with the arguments it declared (a coroutine, for an async one)."""
        offered = {**arguments, "response": response}
        return self.instance.post_predict(**{name: offered.get(name) for name in self.post_predict_args or ()})


async def _holding_async(call: Awaitable[Any]) -> Any:
    """An async predict's result, the models it gets held until it returns."""
    with holding():
        return await call


def batch_results(results: Any, batch: list[Any]) -> list[Any]:
    """What predict returned for a batch, checked: one result per request, in a list."""
    if not isinstance(results, list):
        raise TypeError(f"please return a list when using server side batching, got {type(results).__name__}")
    if len(results) != len(batch):
        raise ValueError(f"predict() returned {len(results)} results for a batch of {len(batch)} requests; with "
                         "server side batching it must return one result per request, in the order received")
    return results


def open_models(api: Api, pm: plugins.PluginManager, device: Device, project_root: Path, poll_interval: float,
                on_load: Callable[[str, bool, bool, float], None] | None = None) -> ModelRepository | None:
    """The API's model repository, its models found (not loaded yet); None when the API has no models."""
    if api.predictor.models is None:
        return None
    ptype = plugins.predictor_type(pm, api.predictor.type)
    models = ModelRepository(api.predictor.models, project_root, plugins.model_format(ptype, api, device), ptype.name,
                             poll_interval=poll_interval, on_load=on_load, api_name=api.name)
    models.scan()
    return models


def construct(api: Api, pm: plugins.PluginManager, view: Path, device: Device, models: ModelRepository | None,
              client_batching: Batching | None, job_spec: dict[str, Any] | None = None,
              config: dict[str, Any] | None = None) -> tuple[Any, Predictor]:
    """Build the API's client, import its class and run __init__ (with `config`, the API's by default): the client
    and the predictor."""
    ptype = plugins.predictor_type(pm, api.predictor.type)
    client = plugins.create_client(pm, api, device, models, client_batching)
    predictor_class, methods = load_class(view, api, ptype)
    predictor = Predictor.construct(predictor_class, methods, api.predictor.config if config is None else config,
                                    ptype.client_arg, client, job_spec)
    predictor.holds_models = models is not None
    return client, predictor


def attach_models(api: Api, pm: plugins.PluginManager, client: Any, models: ModelRepository,
                  load_model: Callable[[str], Any] | None) -> None:
    """Hand the client the user's load_model (types whose predictors load their own models), then load every model
    unless they are cached on demand."""
    ptype = plugins.predictor_type(pm, api.predictor.type)
    if ptype.user_loads_models:
        plugins.require(pm, ptype, client, LoadsUserModels, "user_loads_models")
        client.set_load_method(load_model)
    if not models.on_demand:
        models.preload()
