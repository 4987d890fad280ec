"""Mistakes a plugin author makes are reported as theirs (a PluginError naming the plugin), before anything serves;
and the two environment variables that help while writing one."""
from __future__ import annotations

import logging
import types

import pytest

from engine import EngineError, PluginError, PredictorType, hookimpl
from engine import plugins
from engine.plugins import make_plugin_manager
from engine.testing import api_yaml, write_project
from engine.validate import validate_project

SIMPLE = "class PythonPredictor:\n    def __init__(self, config):\n        pass\n    def predict(self):\n        return 1\n"


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


def test_tracing_logs_hook_calls_and_answers(monkeypatch, caplog):
    monkeypatch.setenv(plugins.TRACE_ENV, "1")
    pm = make_plugin_manager()
    with caplog.at_level(logging.INFO, logger="engine.plugins"):
        plugins.hardware_targets(pm)
        pm.hook.engine_routes()
    assert "engine_hardware_targets" in caplog.text and "engine_routes" in caplog.text


def test_only_the_named_entry_points_load(monkeypatch):
    monkeypatch.setenv(plugins.ONLY_ENV, "python")
    pm = make_plugin_manager()
    names = {info.name for info in plugins.plugin_infos(pm) if not info.built_in}
    assert names == {"python"}
    assert set(plugins.predictor_types(pm)) == {"python"}
