"""The plugin manager: hookspecs, built-in defaults and `engine` entry points, typed call helpers, plugin errors.

Two environment variables help plugin authors: ENGINE_PLUGINS=name,name loads only those entry points (the built-in
defaults always load), and ENGINE_TRACE_HOOKS=1 logs every hook call with its arguments and answers.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import pickle
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from engine import hookspecs
from engine.errors import MissingPluginError, PluginError
from engine.plugin_api import Operation
from engine.types import Device, PredictorType

if TYPE_CHECKING:
    from engine.batching import Batching
    from engine.config import Api
    from engine.models import ModelFormat

log = logging.getLogger("engine.plugins")

ENTRY_POINT_GROUP = "engine"
ONLY_ENV = "ENGINE_PLUGINS"
TRACE_ENV = "ENGINE_TRACE_HOOKS"
BUILT_IN = "engine (built-in)"

# Registered exactly like third-party plugins; their hooks are `trylast` so an installed plugin wins.
DEFAULT_PLUGINS = (
    "engine.default_plugins.hypercorn_server",
    "engine.default_plugins.cpu",
    "engine.default_plugins.payloads",
    "engine.default_plugins.responses",
    "engine.default_plugins.metrics",
    "engine.default_plugins.docs",
)

# Which pip extra installs the plugin for a predictor type or a hardware target.
KNOWN_EXTRAS = {"python": "engine-python-predictor", "onnx": "engine[onnx]", "tensorflow": "engine[tensorflow]",
                "gpu": "engine[gpu]", "inf": "engine[inferentia]"}


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, knowing which distribution each plugin came from and whether hook calls are traced."""

    def __init__(self) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self.add_hookspecs(hookspecs)
        self.tracing = False

    def distribution(self, plugin: object) -> str:
        """`name version` of the distribution that installed a plugin, or how it came to be registered."""
        for registered, dist in self.list_plugin_distinfo():
            if registered is plugin:
                return f"{dist.project_name} {dist.version}"
        name = self.get_name(plugin)
        return BUILT_IN if name in DEFAULT_PLUGINS else f"plugin registered as {name!r}"


def make_plugin_manager(load_entry_points: bool = True) -> PluginManager:
    """A plugin manager with the hookspecs, the built-in defaults and the installed `engine` plugins, all checked."""
    pm = PluginManager()
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if load_entry_points:
        only = {name.strip() for name in os.environ.get(ONLY_ENV, "").split(",") if name.strip()}
        if only:
            for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                if entry_point.name not in only:
                    pm.set_blocked(entry_point.name)
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except pluggy.PluginValidationError as error:
            raise PluginError(f"{_named(pm, error.plugin)}: {error}") from None
    check(pm)
    if os.environ.get(TRACE_ENV, "") not in ("", "0"):
        trace(pm)
    return pm


def check(pm: PluginManager) -> None:
    """Reject hook implementations whose names no hookspec knows (a misspelled hook would never be called)."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as error:
        known = ", ".join(sorted(name for name in dir(hookspecs) if name.startswith("engine_")))
        raise PluginError(f"{_named(pm, error.plugin)}: {error}; the hooks are: {known}") from None


def trace(pm: PluginManager) -> None:
    """Log every hook call, its arguments and its answers (at INFO, on the engine.plugins logger)."""
    pm.trace.root.setwriter(lambda message: log.info("%s", message.rstrip()))
    pm.enable_tracing()
    pm.tracing = True


def answers(pm: PluginManager, hook_name: str, **kwargs: Any) -> list[tuple[object, Any]]:
    """Each plugin's answer to a collecting hook, with the plugin (so that a bad answer can name who gave it)."""
    hook = getattr(pm.hook, hook_name)
    if pm.tracing:
        pm.trace.root.get("hook")(hook_name, kwargs)
    found = []
    for impl in reversed(hook.get_hookimpls()):  # pluggy's order: the last registered first, tryfirst/trylast kept
        found.append((impl.plugin, impl.function(*(kwargs[name] for name in impl.argnames))))
    return found


def predictor_types(pm: PluginManager) -> dict[str, PredictorType]:
    """All predictor types the installed plugins provide, by name; a PluginError for a bad or duplicate one."""
    types_: dict[str, PredictorType] = {}
    owners: dict[str, object] = {}
    for plugin, provided in answers(pm, "engine_predictor_types"):
        if provided is None:
            continue
        if not isinstance(provided, (list, tuple)) or not all(isinstance(t, PredictorType) for t in provided):
            raise PluginError(f"{_named(pm, plugin)}: engine_predictor_types must return a list of "
                              f"engine.PredictorType, not {_shown(provided)}")
        for ptype in provided:
            if ptype.name in types_:
                raise PluginError(f"predictor type '{ptype.name}' is provided twice: by "
                                  f"{_named(pm, owners[ptype.name])} and by {_named(pm, plugin)}; uninstall one "
                                  f"(or load only one with {ONLY_ENV})")
            types_[ptype.name], owners[ptype.name] = ptype, plugin
    return types_


def type_problems(pm: PluginManager) -> list[str]:
    """What is wrong with the installed predictor types as plugin authors wrote them (for `engine plugins`)."""
    return [f"predictor type '{ptype.name}': {problem}" for ptype in predictor_types(pm).values()
            if (problem := _type_problem(ptype))]


def _type_problem(ptype: PredictorType) -> str | None:
    if (ptype.requires_models or ptype.user_loads_models) and ptype.model_format is None:
        flag = "requires_models" if ptype.requires_models else "user_loads_models"
        return f"it sets {flag} but gives no model_format, so its models cannot be loaded (its plugin must set one)"
    return None


def predictor_type(pm: PluginManager, name: str) -> PredictorType:
    """The installed predictor type called `name`, or a MissingPluginError saying what to install."""
    types_ = predictor_types(pm)
    if name in types_:
        problem = _type_problem(types_[name])
        if problem:
            raise PluginError(f"predictor type '{name}' ({_named(pm, _provider(pm, name))}): {problem}")
        return types_[name]
    installed = ", ".join(sorted(types_)) or "none"
    raise MissingPluginError(f"no plugin provides predictor type '{name}'; installed: {installed}. "
                             f"{_install_hint(name)}")


def _provider(pm: PluginManager, type_name: str) -> object:
    return next(plugin for plugin, provided in answers(pm, "engine_predictor_types")
                if any(ptype.name == type_name for ptype in provided or ()))


def operations(pm: PluginManager) -> dict[str, Operation]:
    """Every operation the installed plugins provide, by name."""
    found: dict[str, Operation] = {}
    for plugin, provided in answers(pm, "engine_operations"):
        for operation in provided or ():
            if not isinstance(operation, Operation):
                raise PluginError(f"{_named(pm, plugin)}: engine_operations must return engine.Operation objects, "
                                  f"not {_shown(operation)}")
            found[operation.name] = operation
    return found


def http_server(pm: PluginManager, name: str) -> Any:
    """The installed HTTP server called `name` (engine serve --server)."""
    servers = {server.name: server for _, provided in answers(pm, "engine_http_servers") for server in provided or ()}
    if name not in servers:
        hint = " (pip install engine[uvicorn])" if name == "uvicorn" else ""
        raise MissingPluginError(f"--server {name}: no installed plugin provides that HTTP server{hint}; installed: "
                                 f"{', '.join(sorted(servers))}")
    return servers[name]


def hardware_targets(pm: PluginManager) -> list[str]:
    """Every compute target some installed plugin owns."""
    return sorted({target for _, targets in answers(pm, "engine_hardware_targets") for target in targets or ()})


def compute_target(api: Api) -> str:
    """The hardware target an API's compute section asks for."""
    return "gpu" if api.compute.gpu else "inf" if api.compute.inf else "cpu"


def check_hardware_target(pm: PluginManager, api: Api) -> None:
    """Raise MissingPluginError when no installed plugin owns the API's hardware target."""
    installed = hardware_targets(pm)
    target = compute_target(api)
    if target not in installed:
        raise MissingPluginError(
            f"compute.{target}: no plugin provides hardware target '{target}' (compute.{target}: "
            f"{getattr(api.compute, target, '')}); installed: {', '.join(installed) or 'none'}. {_install_hint(target)}"
        )


def setup_device(pm: PluginManager, api: Api, process_index: int) -> Device:
    """Ask the hardware plugin that owns `api.compute` to set up this process."""
    device = pm.hook.engine_setup_device(api=api, process_index=process_index)
    if device is None:
        check_hardware_target(pm, api)
        raise MissingPluginError(f"api '{api.name}': the plugin owning hardware target '{compute_target(api)}' "
                                 "did not set up a device")
    if not isinstance(device, Device):
        raise PluginError(f"api '{api.name}': engine_setup_device must return an engine.Device, not {_shown(device)}")
    return device


def model_format(ptype: PredictorType, api: Api, device: Device) -> ModelFormat:
    """The predictor type's model format for an API."""
    if ptype.model_format is None:
        raise PluginError(f"predictor type '{ptype.name}': models are configured but the type gives no "
                          "model_format, so they cannot be loaded")
    return ptype.model_format(api, device)


def create_client(pm: PluginManager, api: Api, device: Device, models: Any, batching: Batching | None) -> Any:
    """Build the model client of `api`'s predictor type; None when the type needs none for this config."""
    client = pm.hook.engine_create_client(api=api, device=device, models=models, batching=batching)
    ptype = predictor_type(pm, api.predictor.type)
    if client is None and (ptype.requires_models or models is not None):
        raise MissingPluginError(
            f"api '{api.name}': no plugin builds the {ptype.client_arg} for predictor type '{ptype.name}'. "
            f"{_install_hint(ptype.name)}"
        )
    return client


def require(pm: PluginManager, ptype: PredictorType, client: Any, part: type, flag: str) -> None:
    """A PluginError when the client of a type that sets `flag` lacks the part (a plugin_api Protocol) it implies."""
    if not isinstance(client, part):
        raise PluginError(f"predictor type '{ptype.name}' ({_named(pm, _provider(pm, ptype.name))}) sets {flag}, so "
                          f"its {ptype.client_arg} must implement engine.{part.__name__} ({type(client).__name__} "
                          "does not)")


def fast_caller(hook: pluggy.HookCaller, pm: PluginManager | None = None) -> Callable[..., Any]:
    """A firstresult hook, or its only implementation when nothing else is installed (a per-request saving)."""
    implementations = hook.get_hookimpls()
    if len(implementations) == 1 and tuple(implementations[0].argnames) == tuple(hook.spec.argnames) \
            and hook.spec.opts.get("firstresult") and not (pm is not None and pm.tracing):
        return implementations[0].function
    return hook


# --- the same plugins in worker processes ---------------------------------------------------------------------


def portable(pm: PluginManager) -> list[tuple[str, str | bytes]]:
    """The registered plugins, in order, as worker processes can rebuild them: a module's name, or a pickle."""
    specs: list[tuple[str, str | bytes]] = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked (see ONLY_ENV)
            continue
        if isinstance(plugin, types.ModuleType):
            specs.append((name, plugin.__name__))
            continue
        try:
            specs.append((name, pickle.dumps(plugin)))
        except Exception as error:
            raise PluginError(f"{_named(pm, plugin)} cannot be handed to worker processes (processes_per_replica "
                              f"> 1): it is neither a module nor picklable ({type(error).__name__}: {error})") from None
    return specs


def from_portable(specs: list[tuple[str, str | bytes]]) -> PluginManager:
    """A plugin manager holding exactly the plugins `portable` described, in the same order."""
    pm = PluginManager()
    for name, spec in specs:
        plugin = importlib.import_module(spec) if isinstance(spec, str) else pickle.loads(spec)
        pm.register(plugin, name=name)
    return pm


# --- engine plugins ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin as `engine plugins` lists it."""

    name: str
    distribution: str
    hooks: list[str]
    built_in: bool


def plugin_infos(pm: PluginManager) -> list[PluginInfo]:
    """Describe every registered plugin: its distribution, version and the hooks it implements."""
    from engine import __version__

    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked (see ONLY_ENV)
            continue
        built_in = name in DEFAULT_PLUGINS
        distribution = f"{BUILT_IN.split()[0]} {__version__}, built-in" if built_in else pm.distribution(plugin)
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        infos.append(PluginInfo(name, distribution, hooks, built_in))
    return infos


def _named(pm: PluginManager, plugin: object) -> str:
    """How errors name a plugin: `plugin 'onnx' (engine-onnx-predictor 0.1.0)`."""
    return f"plugin '{pm.get_name(plugin)}' ({pm.distribution(plugin)})"


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _install_hint(name: str) -> str:
    if name in KNOWN_EXTRAS:
        return f"Install {KNOWN_EXTRAS[name]}."
    return "Install the package that provides it (one with an entry point in the 'engine' group)."
