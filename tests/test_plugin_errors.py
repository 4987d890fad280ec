"""Mistakes a plugin author makes are reported as theirs (a PluginError naming the plugin), before anything serves;
and the two environment variables that help while writing one."""
from __future__ import annotations

import logging
import types

import pytest

from engine import (
    EngineError,
    HttpRoute,
    PluginError,
    PredictorType,
    Setting,
    hookimpl,
    plugin_routes,
    plugins,
)
from engine.plugins import make_plugin_manager
from engine.project.validate import validate_project
from engine.serving import parsing
from engine.testing import api_yaml, write_project

SIMPLE = "class PythonPredictor:\n    def __init__(self, config):\n        pass\n    def predict(self):\n" \
         "        return 1\n"


def plugin(name: str, **hooks) -> types.ModuleType:
    """A plugin module holding the given hook implementations."""
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    return module


def manager(*extra: types.ModuleType) -> plugins.PluginManager:
    pm = make_plugin_manager()
    for module in extra:
        pm.register(module, name=module.__name__)
    return pm


def test_a_misspelled_hook_is_rejected_naming_the_plugin():
    pm = manager(plugin("typo", engine_parse_paylod=lambda body: None))
    with pytest.raises(PluginError, match=r"plugin 'typo' \(plugin registered as 'typo'\): .*engine_parse_paylod.*"
                                          r"the hooks are: .*engine_parse_payload"):
        plugins.check(pm)


def test_a_wrong_answer_names_the_plugin_and_what_was_expected():
    pm = manager(plugin("wrong", engine_predictor_types=lambda: "sklearn"))
    with pytest.raises(PluginError, match="plugin 'wrong' .*: engine_predictor_types must return a list of "
                                          "engine.PredictorType, not str 'sklearn'"):
        plugins.predictor_types(pm)


def test_a_wrong_device_names_the_hook(tmp_path):
    pm = manager(plugin("bad-device", engine_setup_device=lambda api, process_index: {"kind": "cpu"}))
    write_project(tmp_path, {"cortex.yaml": api_yaml("x"), "predictor.py": SIMPLE})
    api = validate_project(tmp_path, pm=pm).apis[0]
    with pytest.raises(PluginError, match="engine_setup_device must return an engine.Device, not dict"):
        plugins.setup_device(pm, api, 0)


def test_two_plugins_providing_one_type_are_both_named():
    twin = PredictorType("python", "PythonPredictor", "python_client")
    pm = manager(plugin("twin", engine_predictor_types=lambda: [twin]))
    with pytest.raises(PluginError, match=r"predictor type 'python' is provided twice: by plugin '(python|twin)' "
                                          r"\(.*\) and by plugin '(python|twin)'"):
        plugins.predictor_types(pm)


NO_FORMAT = PredictorType("sklearn", "SklearnPredictor", "sklearn_client", requires_models=True)


def test_a_type_needing_models_without_a_model_format_fails_validate(tmp_path):
    pm = manager(plugin("no-format", engine_predictor_types=lambda: [NO_FORMAT]))
    assert plugins.type_problems(pm) == ["predictor type 'sklearn': it sets requires_models but gives no "
                                         "model_format, so its models cannot be loaded (its plugin must set one)"]
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights").write_text("0")
    write_project(tmp_path, {"cortex.yaml": api_yaml("x", type_="sklearn", predictor_extra="model_path: model"),
                             "predictor.py": SIMPLE.replace("PythonPredictor", "SklearnPredictor")})
    with pytest.raises(EngineError, match="api 'x': predictor type 'sklearn' \\(plugin 'no-format' .*it sets "
                                          "requires_models but gives no model_format"):
        validate_project(tmp_path, pm=pm)


def test_each_kind_of_object_is_checked_naming_the_plugin():
    wrong_parser = manager(plugin("wrong-parser", engine_payload_parsers=lambda: [("text/x", str)]))
    with pytest.raises(PluginError, match=r"plugin 'wrong-parser' .*: engine_payload_parsers must return a list of "
                                          r"engine.PayloadParser, not list \[\('text/x'"):
        parsing.payload_parser(wrong_parser)
    relative = manager(plugin("relative", engine_http_routes=lambda: [HttpRoute("v1/x", None)]))
    with pytest.raises(PluginError, match="plugin 'relative' .*: the path of an engine.HttpRoute must start with /"):
        plugin_routes.http_routes(relative)
    listed = manager(plugin("listed", engine_http_routes=lambda: HttpRoute("/x", None)))
    with pytest.raises(PluginError, match="plugin 'listed' .*: engine_http_routes must return a list"):
        plugin_routes.starlette_routes(listed)


@pytest.mark.parametrize("name, expected", [
    ("port", r"plugin 'knobs' .*: setting 'port' is one of engine's own; choose another name"),
    ("grpc_port", r"setting 'grpc_port' is declared twice: by plugin '(knobs|oip)' \(.*\) and by plugin '(knobs|oip)'"),
    ("Knob", r"plugin 'knobs' .*: setting 'Knob': a name is lower-case letters, digits and underscores"),
])
def test_a_setting_engine_or_another_plugin_has_is_refused(name, expected):
    pm = manager(plugin("knobs", engine_settings=lambda: [Setting(name, "a knob")]))
    with pytest.raises(PluginError, match=expected):
        plugins.settings(pm)


def test_a_plugin_using_deprecated_hooks_is_warned_of_once(caplog, monkeypatch):
    monkeypatch.setattr(plugins, "_warned", set())  # once per process: this test's process, as if fresh
    old = plugin("old-style", engine_parse_payload=lambda body: None, engine_routes=lambda: [])
    with caplog.at_level(logging.WARNING, logger="engine.plugins"):
        plugins.warn_deprecated(manager(old))
        plugins.warn_deprecated(manager(old))
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "plugin 'old-style' (plugin registered as 'old-style') implements engine_parse_payload, which is deprecated "
        "and goes in the next release of engine: use engine_payload_parsers (engine.PayloadParser) instead "
        "(docs/plugin_hooks.md)",
        "plugin 'old-style' (plugin registered as 'old-style') implements engine_routes, which is deprecated and goes "
        "in the next release of engine: use engine_http_routes (engine.HttpRoute) instead (docs/plugin_hooks.md)"]


def test_tracing_logs_hook_calls_and_answers(monkeypatch, caplog):
    monkeypatch.setenv(plugins.TRACE_ENV, "1")
    pm = make_plugin_manager()
    with caplog.at_level(logging.INFO, logger="engine.plugins"):
        plugins.hardware_targets(pm)
        plugin_routes.http_routes(pm)
    assert "engine_hardware_targets" in caplog.text and "engine_http_routes" in caplog.text


def test_only_the_named_entry_points_load(monkeypatch):
    monkeypatch.setenv(plugins.ONLY_ENV, "python")
    pm = make_plugin_manager()
    names = {info.name for info in plugins.plugin_infos(pm) if not info.built_in}
    assert names == {"python"}
    assert set(plugins.predictor_types(pm)) == {"python"}
