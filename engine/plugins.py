"""The plugin manager: hookspecs, built-in defaults and `engine` entry points; what plugins contribute (predictor
types, hardware targets, settings, ...; payload parsers in engine.serving.parsing, routes in engine.plugin_routes),
each hook called through pluggy's own call loop; plugin errors naming the plugin, and the deprecated hooks' warnings.

Two environment variables help plugin authors: ENGINE_PLUGINS=name,name loads only those entry points (the built-in
defaults always load), and ENGINE_TRACE_HOOKS=1 logs every hook call with its arguments and answers.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import pickle
import re
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

from engine import hookspecs, tracing
from engine.errors import MissingPluginError, PluginError
from engine.install_hints import install_hint, install_requirement
from engine.plugin_api import HttpServer, Operation, Setting
from engine.types import Device, PredictorType

if TYPE_CHECKING:
    from pathlib import Path

    from engine.models import ModelFormat, ModelRepository
    from engine.project.config import Api
    from engine.serving.batching import Batching

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

# The hooks of an older shape of the API, kept working for one release: each → what replaces it.
DEPRECATED = {
    "engine_create_client": "PredictorType(create_client=...)",
    "engine_parse_payload": "engine_payload_parsers (engine.PayloadParser)",
    "engine_payload_media_types": "engine_payload_parsers (PayloadParser.media_types)",
    "engine_routes": "engine_http_routes (engine.HttpRoute)",
    "engine_openapi_paths": "engine_http_routes (HttpRoute.openapi)",
}
_SETTING_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_warned: set[tuple[str, str]] = set()  # (plugin, hook): each deprecation is logged once per process
T = TypeVar("T")


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


def make_plugin_manager(load_entry_points: bool = True, warn: bool = True) -> PluginManager:
    """A plugin manager with the hookspecs, the built-in defaults and the installed `engine` plugins, all checked;
    with `warn`, a plugin that implements deprecated hooks is logged (once per process)."""
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
            raise PluginError(f"{named(pm, error.plugin)}: {error}") from None
    check(pm)
    if warn:
        warn_deprecated(pm)
    if os.environ.get(TRACE_ENV, "") not in ("", "0"):
        trace(pm)
    return pm


def check(pm: PluginManager) -> None:
    """Reject hook implementations whose names no hookspec knows (a misspelled hook would never be called)."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as error:
        known = ", ".join(sorted(name for name in dir(hookspecs) if name.startswith("engine_")))
        raise PluginError(f"{named(pm, error.plugin)}: {error}; the hooks are: {known}") from None


def warn_deprecated(pm: PluginManager) -> None:
    """Log each plugin that implements a deprecated hook, naming the plugin and what replaces the hook."""
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked (see ONLY_ENV)
            continue
        for hook in sorted(caller.name for caller in pm.get_hookcallers(plugin) or () if caller.name in DEPRECATED):
            if (name, hook) not in _warned:
                _warned.add((name, hook))
                log.warning("%s implements %s, which is deprecated and goes in the next release of engine: use %s "
                            "instead (docs/plugin_hooks.md)", named(pm, plugin), hook, DEPRECATED[hook])


def trace(pm: PluginManager) -> None:
    """Log every hook call, its arguments and its answers (at INFO, on the engine.plugins logger)."""
    pm.trace.root.setwriter(lambda message: log.info("%s", message.rstrip()))
    pm.enable_tracing()
    pm.tracing = True


def answers(pm: PluginManager, hook_name: str, **kwargs: Any) -> list[tuple[object, Any]]:
    """Each plugin's answer to a collecting hook, with the plugin (so that a bad answer can name who gave it): the
    hook called through pluggy once per implementing plugin, the others left out, in pluggy's order (the last
    registered first, tryfirst/trylast kept). Plugins that answer None are left out."""
    implementers = [impl.plugin for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls())]
    found = []
    for plugin in implementers:
        only_this = pm.subset_hook_caller(hook_name, [other for other in implementers if other is not plugin])
        found += [(plugin, answer) for answer in only_this(**kwargs)]
    return found


def contributed(pm: PluginManager, hook_name: str, kind: type[T], **kwargs: Any) -> list[tuple[object, T]]:
    """Every object of `kind` the plugins return from a collecting hook, with its plugin; a PluginError naming the
    plugin for an answer that is not a list of them."""
    found: list[tuple[object, T]] = []
    for plugin, provided in answers(pm, hook_name, **kwargs):
        if not isinstance(provided, (list, tuple)) or not all(isinstance(item, kind) for item in provided):
            raise PluginError(f"{named(pm, plugin)}: {hook_name} must return a list of engine.{kind.__name__}, "
                              f"not {shown(provided)}")
        found += [(plugin, item) for item in provided]
    return found


def predictor_types(pm: PluginManager) -> dict[str, PredictorType]:
    """All predictor types the installed plugins provide, by name; a PluginError for a bad or duplicate one."""
    types_: dict[str, PredictorType] = {}
    owners: dict[str, object] = {}
    for plugin, ptype in contributed(pm, "engine_predictor_types", PredictorType):
        if ptype.name in types_:
            raise PluginError(f"predictor type '{ptype.name}' is provided twice: by "
                              f"{named(pm, owners[ptype.name])} and by {named(pm, plugin)}; uninstall one "
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
            raise PluginError(f"predictor type '{name}' ({named(pm, _provider(pm, name))}): {problem}")
        return types_[name]
    installed = ", ".join(sorted(types_)) or "none"
    raise MissingPluginError(f"no plugin provides predictor type '{name}'; installed: {installed}. "
                             f"{install_hint(name)}")


def _provider(pm: PluginManager, type_name: str) -> object:
    return next(plugin for plugin, ptype in contributed(pm, "engine_predictor_types", PredictorType)
                if ptype.name == type_name)


def api_problems(pm: PluginManager, api: Api, project_root: Path) -> list[str]:
    """What the API's predictor type (its validate) and the engine_validate_api hook find wrong with an API."""
    ptype = predictor_types(pm).get(api.predictor.type)  # a missing type is reported by the checks of the config
    found = list(ptype.validate(api, project_root) or ()) if ptype is not None and ptype.validate else []
    return found + [problem for answer in pm.hook.engine_validate_api(api=api, project_root=project_root)
                    for problem in answer or ()]


def operations(pm: PluginManager) -> dict[str, Operation]:
    """Every operation the installed plugins provide, by name."""
    found: dict[str, Operation] = {}
    for plugin, provided in answers(pm, "engine_operations"):
        for operation in provided or ():
            if not isinstance(operation, Operation):
                raise PluginError(f"{named(pm, plugin)}: engine_operations must return engine.Operation objects, "
                                  f"not {shown(operation)}")
            found[operation.name] = operation
    return found


def http_server(pm: PluginManager, name: str) -> HttpServer:
    """The installed HTTP server called `name` (engine serve --server)."""
    servers: dict[str, HttpServer] = {server.name: server for _, provided in answers(pm, "engine_http_servers")
                                      for server in provided or ()}
    if name not in servers:
        requirement = install_requirement(name)
        hint = f" (pip install {requirement})" if requirement else ""
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
            f"{getattr(api.compute, target, '')}); installed: {', '.join(installed) or 'none'}. {install_hint(target)}"
        )


def setup_device(pm: PluginManager, api: Api, process_index: int) -> Device:
    """Ask the hardware plugin that owns `api.compute` to set up this process."""
    device = pm.hook.engine_setup_device(api=api, process_index=process_index)
    if device is None:
        check_hardware_target(pm, api)
        raise MissingPluginError(f"api '{api.name}': the plugin owning hardware target '{compute_target(api)}' "
                                 "did not set up a device")
    if not isinstance(device, Device):
        raise PluginError(f"api '{api.name}': engine_setup_device must return an engine.Device, not {shown(device)}")
    return device


def model_format(ptype: PredictorType, api: Api, device: Device) -> ModelFormat:
    """The predictor type's model format for an API."""
    if ptype.model_format is None:
        raise PluginError(f"predictor type '{ptype.name}': models are configured but the type gives no "
                          "model_format, so they cannot be loaded")
    return ptype.model_format(api, device)


def create_client(pm: PluginManager, api: Api, device: Device, models: ModelRepository | None,
                  batching: Batching | None) -> object:
    """Build the model client of `api`'s predictor type (its create_client, else the deprecated engine_create_client
    hook); None when the type needs none for this config."""
    ptype = predictor_type(pm, api.predictor.type)
    if ptype.create_client is not None:
        client = ptype.create_client(api, device, models, batching)
    else:
        client = pm.hook.engine_create_client(api=api, device=device, models=models, batching=batching)
    if client is None and (ptype.requires_models or models is not None):
        raise PluginError(f"api '{api.name}': predictor type '{ptype.name}' ({named(pm, _provider(pm, ptype.name))}) "
                          f"built no {ptype.client_arg}, which its models need (its create_client returned None)")
    return client


def require(pm: PluginManager, ptype: PredictorType, client: object, part: type, flag: str) -> None:
    """A PluginError when the client of a type that sets `flag` lacks the part (a plugin_api Protocol) it implies."""
    if not isinstance(client, part):
        raise PluginError(f"predictor type '{ptype.name}' ({named(pm, _provider(pm, ptype.name))}) sets {flag}, so "
                          f"its {ptype.client_arg} must implement engine.{part.__name__} ({type(client).__name__} "
                          "does not)")


def settings(pm: PluginManager) -> list[Setting]:
    """Every engine serve setting the plugins own; a PluginError for a bad name or one already taken."""
    from engine.settings import taken

    found = contributed(pm, "engine_settings", Setting)
    owners: dict[str, object] = {}
    for plugin, setting in found:
        if not _SETTING_NAME.match(setting.name):
            raise PluginError(f"{named(pm, plugin)}: setting {setting.name!r}: a name is lower-case letters, "
                              "digits and underscores")
        if taken(setting.name):
            raise PluginError(f"{named(pm, plugin)}: setting '{setting.name}' is one of engine's own; choose another "
                              "name")
        if setting.name in owners:
            raise PluginError(f"setting '{setting.name}' is declared twice: by {named(pm, owners[setting.name])} and "
                              f"by {named(pm, plugin)}; uninstall one (or load only one with {ONLY_ENV})")
        owners[setting.name] = plugin
    return [setting for _, setting in found]


def fast_caller(hook: pluggy.HookCaller, pm: PluginManager | None = None) -> Callable[..., Any]:
    """A firstresult hook, or its only implementation when nothing else is installed (a per-request saving)."""
    implementations, spec = hook.get_hookimpls(), hook.spec
    if len(implementations) == 1 and spec is not None and tuple(implementations[0].argnames) == tuple(spec.argnames) \
            and spec.opts.get("firstresult") and not (pm is not None and pm.tracing):
        return implementations[0].function
    return hook


# --- the same plugins in worker processes ---------------------------------------------------------------------


def install_tracer(pm: PluginManager) -> None:
    """Make the installed tracing plugin's tracer (engine_tracer) this process's, or none when there is none."""
    tracing.install(pm.hook.engine_tracer())


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
            raise PluginError(f"{named(pm, plugin)} cannot be handed to worker processes (processes_per_replica "
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


def named(pm: PluginManager, plugin: object) -> str:
    """How errors name a plugin: `plugin 'onnx' (engine-onnx-predictor 0.1.0)`."""
    return f"plugin '{pm.get_name(plugin)}' ({pm.distribution(plugin)})"


def shown(value: Any) -> str:
    """A value as an error shows it: its type and a short repr."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


