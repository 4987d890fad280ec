"""The plugin manager: hookspecs, built-in defaults and `engine` entry points, plus typed call helpers."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from engine import hookspecs
from engine.errors import MissingPluginError
from engine.types import Device, PredictorType

if TYPE_CHECKING:
    from engine.config import Api

ENTRY_POINT_GROUP = "engine"

# Registered exactly like third-party plugins; their hooks are `trylast` so an installed plugin wins.
DEFAULT_PLUGINS = (
    "engine.default_plugins.cpu",
    "engine.default_plugins.payloads",
    "engine.default_plugins.responses",
    "engine.default_plugins.metrics",
)

# Which pip extra installs the plugin for a predictor type or a hardware target.
KNOWN_EXTRAS = {"python": "engine-python-predictor", "onnx": "engine[onnx]", "tensorflow": "engine[tensorflow]",
                "gpu": "engine[gpu]", "inf": "engine[inferentia]"}


def make_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """Build a plugin manager with the hookspecs, the built-in defaults and every installed `engine` plugin."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


def predictor_types(pm: pluggy.PluginManager) -> dict[str, PredictorType]:
    """All predictor types the installed plugins provide, by name."""
    types: dict[str, PredictorType] = {}
    for provided in pm.hook.engine_predictor_types():
        for ptype in provided or ():
            types.setdefault(ptype.name, ptype)
    return types


def predictor_type(pm: pluggy.PluginManager, name: str) -> PredictorType:
    """The installed predictor type called `name`, or a MissingPluginError saying what to install."""
    types = predictor_types(pm)
    if name in types:
        return types[name]
    installed = ", ".join(sorted(types)) or "none"
    raise MissingPluginError(f"no plugin provides predictor type '{name}'; installed: {installed}. "
                             f"{_install_hint(name)}")


def compute_target(api: Api) -> str:
    """The hardware target an API's compute section asks for."""
    return "gpu" if api.compute.gpu else "inf" if api.compute.inf else "cpu"


def check_hardware_target(pm: pluggy.PluginManager, api: Api) -> None:
    """Raise MissingPluginError when no installed plugin owns the API's hardware target."""
    installed = sorted({target for targets in pm.hook.engine_hardware_targets() for target in targets or ()})
    target = compute_target(api)
    if target not in installed:
        raise MissingPluginError(
            f"compute.{target}: no plugin provides hardware target '{target}' (compute.{target}: "
            f"{getattr(api.compute, target, '')}); installed: {', '.join(installed) or 'none'}. {_install_hint(target)}"
        )


def setup_device(pm: pluggy.PluginManager, api: Api, process_index: int) -> Device:
    """Ask the hardware plugin that owns `api.compute` to set up this process."""
    device = pm.hook.engine_setup_device(api=api, process_index=process_index)
    if device is None:
        check_hardware_target(pm, api)
        raise MissingPluginError(f"api '{api.name}': the plugin owning hardware target '{compute_target(api)}' "
                                 "did not set up a device")
    return device


def create_client(pm: pluggy.PluginManager, api: Api, device: Device, models: Any) -> Any:
    """Build the model client of `api`'s predictor type; None when the type needs none for this config."""
    client = pm.hook.engine_create_client(api=api, device=device, models=models)
    ptype = predictor_type(pm, api.predictor.type)
    if client is None and (ptype.requires_models or models is not None):
        raise MissingPluginError(
            f"api '{api.name}': no plugin builds the {ptype.client_arg} for predictor type '{ptype.name}'. "
            f"{_install_hint(ptype.name)}"
        )
    return client


def fast_caller(hook: pluggy.HookCaller) -> Callable[..., Any]:
    """A firstresult hook, or its only implementation when nothing else is installed (a per-request saving)."""
    implementations = hook.get_hookimpls()
    if len(implementations) == 1 and tuple(implementations[0].argnames) == tuple(hook.spec.argnames) \
            and hook.spec.opts.get("firstresult"):
        return implementations[0].function
    return hook


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin as `engine plugins` lists it."""

    name: str
    distribution: str
    version: str
    hooks: list[str]


def plugin_infos(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Describe every registered plugin: its distribution, version and the hooks it implements."""
    from engine import __version__

    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    infos = []
    for name, plugin in pm.list_name_plugin():
        dist = dists.get(id(plugin))
        dist_name = dist.project_name if dist else "engine (built-in)"
        version = dist.version if dist else __version__
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        infos.append(PluginInfo(name, dist_name, version, hooks))
    return infos


def _install_hint(name: str) -> str:
    if name in KNOWN_EXTRAS:
        return f"Install {KNOWN_EXTRAS[name]}."
    return "Install the package that provides it (one with an entry point in the 'engine' group)."
