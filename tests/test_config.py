"""engine.project.config: every RealtimeAPI field of Cortex v0.22–v0.25 (both schemas), defaults, rules, errors."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.errors import ConfigError
from engine.project.config import (
    DEFAULT_MODEL_NAME,
    Api,
    load_config,
    not_applied_locally,
)

PYDANTIC_LEAKS = ("validation error", "pydantic", "input_value", "input_type", "Value error", "errors.pydantic.dev",
                  "Traceback", "type=")


def api(name: str = "my-api", predictor: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    """One API mapping: a python predictor plus the given predictor fields and sections."""
    return {"name": name, "kind": "RealtimeAPI",
            "predictor": {"type": "python", "path": "predictor.py", **(predictor or {})}, **sections}


def write(tmp_path: Path, content: Any) -> Path:
    """cortex.yaml in tmp_path: `content` as is when it is text, dumped as YAML otherwise."""
    path = tmp_path / "cortex.yaml"
    text = textwrap.dedent(content) if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, *apis: dict[str, Any]) -> list[Api]:
    """Load a config made of `apis`."""
    return load_config(write(tmp_path, list(apis)))


def load_one(tmp_path: Path, **kwargs: Any) -> Api:
    """Load a config with the one API `api(**kwargs)`."""
    (loaded,) = load(tmp_path, api(**kwargs))
    return loaded


def error_of(tmp_path: Path, content: Any) -> str:
    """The ConfigError message of loading `content`; checks that it is readable (no pydantic dump)."""
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    for leak in PYDANTIC_LEAKS:
        assert leak not in message, f"{leak!r} leaked into: {message}"
    for line in message.splitlines():
        assert line.startswith(f"{path}: "), f"line does not name the file: {line}"
    return message


def lines_of(tmp_path: Path, *apis: dict[str, Any]) -> list[str]:
    """The lines of the ConfigError of loading `apis`, each without the `<file>: ` prefix."""
    path = tmp_path / "cortex.yaml"
    message = error_of(tmp_path, list(apis))
    return [line.removeprefix(f"{path}: ") for line in message.splitlines()]


def one_line(tmp_path: Path, **kwargs: Any) -> str:
    """The only error line of loading `api(**kwargs)`, without the file prefix."""
    lines = lines_of(tmp_path, api(**kwargs))
    assert len(lines) == 1, lines
    return lines[0]


# --- every field parses ------------------------------------------------------------------------------------------

FULL_V023 = """\
- name: full-api
  kind: RealtimeAPI
  predictor:
    type: tensorflow
    path: serving/predictor.py
    models:
      paths:
        - name: iris
          model_path: s3://bucket/iris/
          signature_key: serving_default
        - name: resnet-50
          model_path: models/resnet
      signature_key: predict
      cache_size: 2
      disk_cache_size: 3
    server_side_batching:
      max_batch_size: 8
      batch_interval: 100ms
    processes_per_replica: 1
    threads_per_process: 8
    config:
      labels: [setosa, versicolor]
      nested: {depth: 2}
    python_path: lib/
    image: quay.io/cortexlabs/tensorflow-predictor:0.23.0
    tensorflow_serving_image: quay.io/cortexlabs/tensorflow-serving-gpu:0.23.0
    env:
      MODEL_FLAVOUR: "small"
      COUNT: "3"
    log_level: debug
  compute:
    cpu: 500m
    mem: 1Gi
    gpu: 1
    inf: 0
  autoscaling:
    min_replicas: 2
    max_replicas: 10
    init_replicas: 3
    target_replica_concurrency: 4.5
    max_replica_concurrency: 64
    window: 2m
    downscale_stabilization_period: 10m
    upscale_stabilization_period: 30s
    max_downscale_factor: 0.5
    max_upscale_factor: 2
    downscale_tolerance: 0.1
    upscale_tolerance: 0
  networking:
    endpoint: /v1/iris
    api_gateway: none
    local_port: 8890
  update_strategy:
    max_surge: 1
    max_unavailable: 50%
  monitoring:
    model_type: classification
    key: label
"""


def test_every_field_of_cortex_v023_parses(tmp_path):
    (full,) = load_config(write(tmp_path, FULL_V023))
    p = full.predictor
    assert (full.name, full.kind, p.type, p.path) == ("full-api", "RealtimeAPI", "tensorflow", "serving/predictor.py")
    assert [(m.name, m.path, m.signature_key) for m in p.models.paths] == [
        ("iris", "s3://bucket/iris/", "serving_default"), ("resnet-50", "models/resnet", None)]
    assert (p.models.signature_key, p.models.cache_size, p.models.disk_cache_size) == ("predict", 2, 3)
    assert p.models.caching is True
    assert (p.server_side_batching.max_batch_size, p.server_side_batching.batch_interval) == (8, pytest.approx(0.1))
    assert (p.processes_per_replica, p.threads_per_process) == (1, 8)
    assert p.config == {"labels": ["setosa", "versicolor"], "nested": {"depth": 2}}
    assert p.python_path == "lib"
    assert p.image == "quay.io/cortexlabs/tensorflow-predictor:0.23.0"
    assert p.tensorflow_serving_image == "quay.io/cortexlabs/tensorflow-serving-gpu:0.23.0"
    assert p.env == {"MODEL_FLAVOUR": "small", "COUNT": "3"}
    assert p.log_level == "debug"
    assert (full.compute.cpu, full.compute.mem, full.compute.gpu, full.compute.inf) == (0.5, 2**30, 1, 0)
    s = full.autoscaling
    assert (s.min_replicas, s.max_replicas, s.init_replicas) == (2, 10, 3)
    assert (s.target_replica_concurrency, s.max_replica_concurrency) == (4.5, 64)
    assert (s.window, s.downscale_stabilization_period, s.upscale_stabilization_period) == (120.0, 600.0, 30.0)
    assert (s.max_downscale_factor, s.max_upscale_factor, s.downscale_tolerance, s.upscale_tolerance) == \
        (0.5, 2.0, 0.1, 0.0)
    assert (full.networking.endpoint, full.networking.api_gateway, full.networking.local_port) == \
        ("/v1/iris", "none", 8890)
    assert full.endpoint == "/v1/iris"
    assert (full.update_strategy.max_surge, full.update_strategy.max_unavailable) == (1, "50%")
    assert (full.monitoring.model_type, full.monitoring.key) == ("classification", "label")


FULL_V025 = """\
- name: python-api
  kind: RealtimeAPI
  predictor:
    type: python
    path: predictor.py
    multi_model_reloading:
      dir: s3://bucket/models/
      cache_size: 1
      disk_cache_size: 4
    server_side_batching:
      max_batch_size: 4
      batch_interval: 0.5s
    threads_per_process: 4
    log_level: warning
- name: onnx-api
  kind: RealtimeAPI
  predictor:
    type: onnx
    path: onnx_predictor.py
    models:
      path: models/model.onnx
- name: tf-api
  kind: RealtimeAPI
  predictor:
    type: tensorflow
    path: tf_predictor.py
    models:
      paths:
        - name: a
          path: models/a
      signature_key: serve
"""


def test_every_field_of_cortex_v025_parses(tmp_path):
    python, onnx, tf = load_config(write(tmp_path, FULL_V025))
    assert python.predictor.models.dir == "s3://bucket/models/"
    assert (python.predictor.models.cache_size, python.predictor.models.disk_cache_size) == (1, 4)
    assert python.predictor.server_side_batching.batch_interval == 0.5
    assert python.predictor.log_level == "warning"
    assert onnx.predictor.models.path == "models/model.onnx"
    assert [(m.name, m.path) for m in tf.predictor.models.paths] == [("a", "models/a")]
    assert tf.predictor.models.signature_key == "serve"


def test_minimal_api_gets_cortex_defaults(tmp_path):
    minimal = load_one(tmp_path)
    p = minimal.predictor
    assert (p.processes_per_replica, p.threads_per_process, p.log_level) == (1, 1, "info")
    assert (p.config, p.env, p.models, p.model_path, p.signature_key) == ({}, {}, None, None, None)
    assert (p.python_path, p.image, p.tensorflow_serving_image, p.server_side_batching) == (None, None, None, None)
    assert (minimal.compute.cpu, minimal.compute.mem, minimal.compute.gpu, minimal.compute.inf) == (None, None, 0, 0)
    s = minimal.autoscaling
    assert (s.min_replicas, s.max_replicas, s.init_replicas, s.target_replica_concurrency) == (1, 100, None, None)
    assert s.max_replica_concurrency == 1024
    assert (s.window, s.downscale_stabilization_period, s.upscale_stabilization_period) == (60.0, 300.0, 60.0)
    assert (s.max_downscale_factor, s.max_upscale_factor, s.downscale_tolerance, s.upscale_tolerance) == \
        (0.75, 1.5, 0.05, 0.05)
    assert (minimal.networking.endpoint, minimal.networking.api_gateway, minimal.networking.local_port) == \
        (None, "public", None)
    assert minimal.endpoint == "/my-api"
    assert (minimal.update_strategy, minimal.monitoring) == (None, None)


def test_explicit_null_config_env_and_sections_take_the_defaults(tmp_path):
    loaded = load_one(tmp_path, predictor={"config": None, "env": None}, compute=None, autoscaling=None,
                      networking=None, update_strategy=None, monitoring=None)
    assert (loaded.predictor.config, loaded.predictor.env) == ({}, {})
    assert loaded.autoscaling.max_replica_concurrency == 1024
    assert (loaded.compute.gpu, loaded.networking.endpoint, loaded.update_strategy, loaded.monitoring) == \
        (0, None, None, None)


def test_explicit_null_cpu_is_allowed(tmp_path):
    assert load_one(tmp_path, compute={"cpu": None}).compute.cpu is None


def test_update_strategy_defaults_to_25_percent(tmp_path):
    strategy = load_one(tmp_path, update_strategy={}).update_strategy
    assert (strategy.max_surge, strategy.max_unavailable) == ("25%", "25%")


@pytest.mark.parametrize("given, parsed", [(0, 0), (3, 3), ("2", 2), ("0%", "0%"), ("100%", "100%"), ("10%", "10%")])
def test_update_strategy_accepts_counts_and_percentages(tmp_path, given, parsed):
    assert load_one(tmp_path, update_strategy={"max_surge": given}).update_strategy.max_surge == parsed


def test_config_keeps_any_yaml_values(tmp_path):
    config = {"threshold": 0.5, "flags": [True, None], "nested": {"a": {"b": [1, "two"]}}, "n": 3}
    assert load_one(tmp_path, predictor={"config": config}).predictor.config == config


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_log_levels(tmp_path, level):
    assert load_one(tmp_path, predictor={"log_level": level}).predictor.log_level == level


def test_cpu_and_mem_are_parsed_as_quantities(tmp_path):
    compute = load_one(tmp_path, compute={"cpu": 2, "mem": "512Mi"}).compute
    assert (compute.cpu, compute.mem) == (2.0, 512 * 2**20)
    assert load_one(tmp_path, compute={"cpu": 0.25, "mem": "1G"}).compute.mem == 1e9


def test_inf_with_dividing_processes_parses(tmp_path):
    loaded = load_one(tmp_path, predictor={"processes_per_replica": 4}, compute={"inf": 1})
    assert (loaded.compute.inf, loaded.predictor.processes_per_replica) == (1, 4)


def test_several_apis_load_in_order(tmp_path):
    names = [a.name for a in load(tmp_path, api("first"), api("second"), api("third"))]
    assert names == ["first", "second", "third"]


def test_load_config_accepts_a_string_path(tmp_path):
    path = write(tmp_path, [api()])
    assert [a.name for a in load_config(str(path))] == ["my-api"]


# --- both schema generations normalise to one internal form -----------------------------------------------------

def test_v022_model_path_becomes_models_path(tmp_path):
    p = load_one(tmp_path, predictor={"type": "tensorflow", "model_path": "s3://bucket/model/"}).predictor
    assert p.model_path is None
    assert (p.models.path, p.models.paths, p.models.dir) == ("s3://bucket/model/", None, None)


def test_v025_models_path_is_the_same_internal_form(tmp_path):
    old = load_one(tmp_path, predictor={"model_path": "models/m"}).predictor.models
    new = load_one(tmp_path, predictor={"models": {"path": "models/m"}}).predictor.models
    assert old.model_dump() == new.model_dump()


def test_v022_paths_model_path_becomes_path(tmp_path):
    models = load_one(tmp_path, predictor={"models": {"paths": [{"name": "a", "model_path": "m/a"}]}}).predictor.models
    assert [(m.name, m.path, m.model_path) for m in models.paths] == [("a", "m/a", None)]


def test_both_spellings_of_paths_give_the_same_model(tmp_path):
    old = load_one(tmp_path, predictor={"models": {"paths": [{"name": "a", "model_path": "m/a"}]}})
    new = load_one(tmp_path, predictor={"models": {"paths": [{"name": "a", "path": "m/a"}]}})
    assert old.predictor.models.model_dump() == new.predictor.models.model_dump()


def test_v025_python_multi_model_reloading_becomes_models(tmp_path):
    p = load_one(tmp_path, predictor={"multi_model_reloading": {"dir": "models"}}).predictor
    assert p.models is not None and p.models.dir == "models"
    assert p.type_fields_set() == ["multi_model_reloading"]


def test_v022_python_models_is_accepted_too(tmp_path):
    p = load_one(tmp_path, predictor={"models": {"dir": "models"}}).predictor
    assert p.models.dir == "models"
    assert p.type_fields_set() == []


def test_top_level_signature_key_moves_into_models(tmp_path):
    p = load_one(tmp_path, predictor={"type": "tensorflow", "model_path": "m", "signature_key": "serve"}).predictor
    assert p.models.signature_key == "serve"
    assert p.type_fields_set() == ["signature_key"]


def test_top_level_signature_key_moves_into_models_section(tmp_path):
    p = load_one(tmp_path, predictor={"models": {"dir": "m"}, "signature_key": "serve"}).predictor
    assert p.models.signature_key == "serve"


def test_signature_key_given_twice_with_different_values_is_an_error(tmp_path):
    line = one_line(tmp_path, predictor={"models": {"dir": "m", "signature_key": "a"}, "signature_key": "b"})
    assert line == "api 'my-api': predictor.signature_key: differs from models.signature_key; give it in one place"


def test_signature_keys_of_paths_are_reported_as_type_fields(tmp_path):
    paths = [{"name": "a", "path": "m", "signature_key": "s"}]
    p = load_one(tmp_path, predictor={"models": {"paths": paths}}).predictor
    assert p.type_fields_set() == ["signature_key"]


def test_tensorflow_serving_image_is_reported_as_a_type_field(tmp_path):
    p = load_one(tmp_path, predictor={"tensorflow_serving_image": "tfs:1"}).predictor
    assert p.type_fields_set() == ["tensorflow_serving_image"]


def test_no_models_stays_none(tmp_path):
    assert load_one(tmp_path).predictor.models is None


def test_paths_are_normalised(tmp_path):
    p = load_one(tmp_path, predictor={"path": "./src/predictor.py", "python_path": "./lib/"}).predictor
    assert (p.path, p.python_path) == ("src/predictor.py", "lib")


# --- name and kind ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a", "iris-classifier", "api2", "a" * 42, "x-1-y"])
def test_valid_api_names(tmp_path, name):
    assert load_one(tmp_path, name=name).name == name


@pytest.mark.parametrize("name", ["Iris", "iris_classifier", "2api", "-api", "api-", "my api", "api.v1", ""])
def test_names_that_are_not_dns_1035_labels_are_rejected(tmp_path, name):
    line = one_line(tmp_path, name=name)
    assert line == (f"api #1: name: must be a DNS-1035 label: lower-case letters, digits and '-', starting with a "
                    f"letter and not ending with '-' (given: {name!r})")


def test_name_longer_than_42_characters_is_rejected(tmp_path):
    line = one_line(tmp_path, name="a" * 43)
    assert line.startswith("api #1: name: must be at most 42 characters (given: 'aaaa")


def test_missing_name_is_reported_by_position(tmp_path):
    lines = lines_of(tmp_path, api("first"), {"kind": "RealtimeAPI", "predictor": {"type": "python", "path": "p.py"}})
    assert lines == ["api #2: name: is required"]


def test_non_string_name_is_rejected(tmp_path):
    assert one_line(tmp_path, name=123) == \
        "api #1: name: must be a string (quote numbers and booleans in YAML) (given: 123)"


def test_names_must_be_unique(tmp_path):
    lines = lines_of(tmp_path, api("a"), api("b"), api("a"))
    assert lines == ["api 'a': name: 'a' is already the name of api #1; names must be unique across APIs"]


def test_duplicate_name_error_counts_positions_in_the_file(tmp_path):
    lines = lines_of(tmp_path, api("Bad"), api("a"), api("a"))
    assert lines[1] == "api 'a': name: 'a' is already the name of api #2; names must be unique across APIs"


def test_kind_is_required(tmp_path):
    config = api()
    del config["kind"]
    assert lines_of(tmp_path, config) == ["api 'my-api': kind: is required"]


@pytest.mark.parametrize("kind", ["TaskAPI", "AsyncAPI"])
def test_other_cortex_kinds_are_rejected_clearly(tmp_path, kind):
    config = {**api(), "kind": kind}
    assert lines_of(tmp_path, config) == \
        [f"api 'my-api': kind: {kind} is not supported by engine serve; only RealtimeAPI, BatchAPI and "
         f"TrafficSplitter are (given: '{kind}')"]


def test_unknown_kind_is_rejected(tmp_path):
    config = {**api(), "kind": "realtimeapi"}
    assert lines_of(tmp_path, config) == \
        ["api 'my-api': kind: must be RealtimeAPI, BatchAPI or TrafficSplitter (given: 'realtimeapi')"]


# --- predictor ----------------------------------------------------------------------------------------------------

def test_predictor_is_required(tmp_path):
    config = api()
    del config["predictor"]
    assert lines_of(tmp_path, config) == ["api 'my-api': predictor: is required"]


def test_predictor_type_and_path_are_required(tmp_path):
    config = {"name": "my-api", "kind": "RealtimeAPI", "predictor": {}}
    assert lines_of(tmp_path, config) == ["api 'my-api': predictor.type: is required",
                                          "api 'my-api': predictor.path: is required"]


def test_predictor_must_be_a_mapping(tmp_path):
    config = {"name": "my-api", "kind": "RealtimeAPI", "predictor": "predictor.py"}
    assert lines_of(tmp_path, config) == \
        ["api 'my-api': predictor: must be a mapping (key: value) (given: 'predictor.py')"]


@pytest.mark.parametrize("value, allowed", [(1, True), (100, True), (0, False), (101, False), (-1, False)])
def test_processes_per_replica_is_1_to_100(tmp_path, value, allowed):
    if allowed:
        assert load_one(tmp_path, predictor={"processes_per_replica": value}).predictor.processes_per_replica == value
    else:
        limit = "must be at least 1" if value < 1 else "must be at most 100"
        assert one_line(tmp_path, predictor={"processes_per_replica": value}) == \
            f"api 'my-api': predictor.processes_per_replica: {limit} (given: {value})"


def test_threads_per_process_is_at_least_1_with_no_upper_bound(tmp_path):
    assert load_one(tmp_path, predictor={"threads_per_process": 1000}).predictor.threads_per_process == 1000
    assert one_line(tmp_path, predictor={"threads_per_process": 0}) == \
        "api 'my-api': predictor.threads_per_process: must be at least 1 (given: 0)"


def test_whole_floats_count_as_integers_as_in_cortex(tmp_path):
    loaded = load_one(tmp_path, predictor={"threads_per_process": 2.0}, compute={"gpu": 1.0})
    assert (loaded.predictor.threads_per_process, loaded.compute.gpu) == (2, 1)
    assert isinstance(loaded.predictor.threads_per_process, int)


@pytest.mark.parametrize("value", ["2", 2.5, True, None])
def test_integers_must_be_yaml_integers(tmp_path, value):
    assert one_line(tmp_path, predictor={"threads_per_process": value}) == \
        f"api 'my-api': predictor.threads_per_process: must be an integer (given: {value!r})"


def test_env_values_must_be_strings(tmp_path):
    line = one_line(tmp_path, predictor={"env": {"OK": "1", "N": 1}})
    assert line == "api 'my-api': predictor.env.N: must be a string (quote numbers and booleans in YAML) (given: 1)"


def test_env_keys_may_not_start_with_cortex(tmp_path):
    line = one_line(tmp_path, predictor={"env": {"CORTEX_VERSION": "1", "CORTEX_X": "2", "MY_CORTEX_Y": "3"}})
    assert line == ("api 'my-api': predictor.env: environment variables starting with CORTEX_ are reserved: "
                    "CORTEX_VERSION, CORTEX_X")


def test_env_must_be_a_mapping(tmp_path):
    assert one_line(tmp_path, predictor={"env": ["A=1"]}) == \
        "api 'my-api': predictor.env: must be a mapping (key: value) (given: ['A=1'])"


def test_config_must_be_a_mapping_with_string_keys(tmp_path):
    assert one_line(tmp_path, predictor={"config": [1, 2]}) == \
        "api 'my-api': predictor.config: must be a mapping (key: value) (given: [1, 2])"
    assert one_line(tmp_path, predictor={"config": {1: "a"}}) == \
        "api 'my-api': predictor.config: keys must be strings (given: 1)"


@pytest.mark.parametrize("level", ["INFO", "warn", "critical"])
def test_log_level_is_one_of_four(tmp_path, level):
    assert one_line(tmp_path, predictor={"log_level": level}) == \
        (f"api 'my-api': predictor.log_level: must be one of 'debug', 'info', 'warning' or 'error' "
         f"(given: '{level}')")


@pytest.mark.parametrize("field", ["path", "python_path"])
@pytest.mark.parametrize("value", ["/abs/dir", "~/dir", "C:\\dir", "\\dir"])
def test_paths_must_be_relative(tmp_path, field, value):
    assert one_line(tmp_path, predictor={field: value}) == \
        f"api 'my-api': predictor.{field}: must be a path relative to the project directory (given: {value!r})"


@pytest.mark.parametrize("field", ["path", "python_path"])
def test_paths_must_stay_inside_the_project(tmp_path, field):
    assert one_line(tmp_path, predictor={field: "lib/../../outside"}) == \
        (f"api 'my-api': predictor.{field}: must stay inside the project directory (no '..') "
         "(given: 'lib/../../outside')")


@pytest.mark.parametrize("value", [".", "./", "./."])
def test_python_path_may_not_be_the_project_root(tmp_path, value):
    assert one_line(tmp_path, predictor={"python_path": value}) == \
        (f"api 'my-api': predictor.python_path: the project root is already on sys.path; remove python_path or "
         f"name a sub-directory (given: {value!r})")


def test_predictor_path_may_not_be_empty(tmp_path):
    assert one_line(tmp_path, predictor={"path": " "}) == "api 'my-api': predictor.path: cannot be empty (given: ' ')"
    assert one_line(tmp_path, predictor={"path": "./"}) == \
        "api 'my-api': predictor.path: must name the predictor file, e.g. predictor.py (given: './')"


# --- models -------------------------------------------------------------------------------------------------------

def test_model_path_and_models_are_exclusive(tmp_path):
    assert one_line(tmp_path, predictor={"model_path": "m", "models": {"dir": "d"}}) == \
        ("api 'my-api': predictor.models: cannot be given together with model_path; give one of model_path (Cortex "
         "v0.22–v0.24), models, or multi_model_reloading (python, v0.25)")


def test_models_and_multi_model_reloading_are_exclusive(tmp_path):
    line = one_line(tmp_path, predictor={"models": {"dir": "d"}, "multi_model_reloading": {"dir": "d"}})
    assert line.startswith("api 'my-api': predictor.multi_model_reloading: cannot be given together with models;")


def test_empty_model_path_is_rejected(tmp_path):
    assert one_line(tmp_path, predictor={"model_path": ""}) == "api 'my-api': predictor.model_path: cannot be empty"


@pytest.mark.parametrize("models, given", [
    ({}, "none"),
    ({"signature_key": "s"}, "none"),
    ({"path": "a", "dir": "b"}, "path and dir"),
    ({"paths": [{"name": "a", "path": "a"}], "dir": "b"}, "paths and dir"),
    ({"path": "a", "paths": [{"name": "a", "path": "a"}], "dir": "b"}, "path and paths and dir"),
])
def test_exactly_one_of_path_paths_and_dir(tmp_path, models, given):
    assert one_line(tmp_path, predictor={"models": models}) == \
        ("api 'my-api': predictor.models: give exactly one of path (one model), paths (a list of named models) or "
         f"dir (a directory whose sub-directories are models); given: {given}")


def test_the_same_rules_apply_under_multi_model_reloading(tmp_path):
    line = one_line(tmp_path, predictor={"multi_model_reloading": {"path": "a", "dir": "b"}})
    assert line.startswith("api 'my-api': predictor.multi_model_reloading: give exactly one of path")


def test_empty_models_path_and_dir_are_rejected(tmp_path):
    assert one_line(tmp_path, predictor={"models": {"dir": ""}}) == \
        "api 'my-api': predictor.models.dir: cannot be empty"


def test_paths_must_list_a_model(tmp_path):
    assert one_line(tmp_path, predictor={"models": {"paths": []}}) == \
        "api 'my-api': predictor.models.paths: must list at least one model"


@pytest.mark.parametrize("name", ["iris", "Iris_2", "resnet-50", "0"])
def test_valid_model_names(tmp_path, name):
    models = load_one(tmp_path, predictor={"models": {"paths": [{"name": name, "path": "m"}]}}).predictor.models
    assert models.paths[0].name == name


@pytest.mark.parametrize("name", ["my model", "a/b", "a.b", ""])
def test_invalid_model_names(tmp_path, name):
    assert one_line(tmp_path, predictor={"models": {"paths": [{"name": name, "path": "m"}]}}) == \
        (f"api 'my-api': predictor.models.paths[0].name: must be a model name: letters, digits, '-' and '_' only "
         f"(given: {name!r})")


def test_reserved_model_name_is_rejected(tmp_path):
    line = one_line(tmp_path, predictor={"models": {"paths": [{"name": DEFAULT_MODEL_NAME, "path": "m"}]}})
    assert line == ("api 'my-api': predictor.models.paths[0].name: '_cortex_default' is reserved for the single model "
                    "of predictor.model_path (given: '_cortex_default')")


def test_model_names_must_be_unique(tmp_path):
    paths = [{"name": "a", "path": "1"}, {"name": "b", "path": "2"}, {"name": "a", "model_path": "3"}]
    assert one_line(tmp_path, predictor={"models": {"paths": paths}}) == \
        ("api 'my-api': predictor.models.paths[2].name: 'a' is already the name of paths[0]; model names must be "
         "unique")


def test_model_name_is_required(tmp_path):
    assert one_line(tmp_path, predictor={"models": {"paths": [{"path": "m"}]}}) == \
        "api 'my-api': predictor.models.paths[0].name: is required"


def test_model_path_of_a_named_model_is_required(tmp_path):
    assert one_line(tmp_path, predictor={"models": {"paths": [{"name": "a"}]}}) == \
        ("api 'my-api': predictor.models.paths[0].path: is required: the model's directory, local or s3:// "
         "(model_path in Cortex v0.22–v0.24)")


def test_named_model_may_not_use_both_spellings(tmp_path):
    assert one_line(tmp_path, predictor={"models": {"paths": [{"name": "a", "path": "x", "model_path": "y"}]}}) == \
        ("api 'my-api': predictor.models.paths[0].model_path: give path (Cortex v0.25+) or model_path (v0.22–v0.24), "
         "not both")


def test_named_model_path_may_not_be_empty(tmp_path):
    assert one_line(tmp_path, predictor={"models": {"paths": [{"name": "a", "model_path": ""}]}}) == \
        "api 'my-api': predictor.models.paths[0].model_path: cannot be empty"


@pytest.mark.parametrize("sizes, line", [
    ({"cache_size": 2}, "predictor.models.disk_cache_size: is required when cache_size is given: specify both "
                        "cache_size and disk_cache_size or neither of them"),
    ({"disk_cache_size": 2}, "predictor.models.cache_size: is required when disk_cache_size is given: specify both "
                             "cache_size and disk_cache_size or neither of them"),
    ({"cache_size": 3, "disk_cache_size": 2}, "predictor.models.cache_size: must be less than or equal to "
                                              "disk_cache_size (2) (given: 3)"),
    ({"cache_size": 0, "disk_cache_size": 2}, "predictor.models.cache_size: must be greater than 0 (given: 0)"),
    ({"cache_size": 1, "disk_cache_size": -1}, "predictor.models.disk_cache_size: must be greater than 0 (given: -1)"),
])
def test_cache_sizes(tmp_path, sizes, line):
    assert one_line(tmp_path, predictor={"models": {"dir": "m", **sizes}}) == f"api 'my-api': {line}"


def test_equal_cache_sizes_are_allowed(tmp_path):
    loaded = load_one(tmp_path, predictor={"models": {"dir": "m", "cache_size": 2, "disk_cache_size": 2}})
    models = loaded.predictor.models
    assert models.caching and (models.cache_size, models.disk_cache_size) == (2, 2)


def test_caching_forces_one_process(tmp_path):
    predictor = {"multi_model_reloading": {"dir": "m", "cache_size": 1, "disk_cache_size": 2},
                 "processes_per_replica": 2}
    assert one_line(tmp_path, predictor=predictor) == \
        ("api 'my-api': predictor.processes_per_replica: must be 1 when model caching is on (cache_size and "
         "disk_cache_size are set) (given: 2)")


def test_several_processes_without_caching_are_fine(tmp_path):
    loaded = load_one(tmp_path, predictor={"models": {"dir": "m"}, "processes_per_replica": 4})
    assert loaded.predictor.processes_per_replica == 4 and not loaded.predictor.models.caching


# --- server-side batching -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [2, 1024])
def test_max_batch_size_bounds_are_allowed(tmp_path, size):
    batching = load_one(tmp_path, predictor={"server_side_batching": {"max_batch_size": size,
                                                                      "batch_interval": "1s"}}).predictor
    assert batching.server_side_batching.max_batch_size == size


@pytest.mark.parametrize("size, limit", [(1, "must be at least 2"), (1025, "must be at most 1024")])
def test_max_batch_size_is_2_to_1024(tmp_path, size, limit):
    line = one_line(tmp_path, predictor={"server_side_batching": {"max_batch_size": size, "batch_interval": "1s"}})
    assert line == f"api 'my-api': predictor.server_side_batching.max_batch_size: {limit} (given: {size})"


@pytest.mark.parametrize("interval, seconds", [("100ms", 0.1), ("0.5s", 0.5), ("1m", 60.0), ("250us", 2.5e-4)])
def test_batch_interval_is_a_duration(tmp_path, interval, seconds):
    p = load_one(tmp_path, predictor={"server_side_batching": {"max_batch_size": 2, "batch_interval": interval}})
    assert p.predictor.server_side_batching.batch_interval == pytest.approx(seconds)


@pytest.mark.parametrize("interval", [0.1, 100, "100", "fast", "1 s"])
def test_batch_interval_must_be_a_duration_string(tmp_path, interval):
    line = one_line(tmp_path, predictor={"server_side_batching": {"max_batch_size": 2, "batch_interval": interval}})
    assert line == ("api 'my-api': predictor.server_side_batching.batch_interval: must be a duration string with a "
                    f"unit, such as 100ms, 0.5s or 5m (given: {interval!r})")


@pytest.mark.parametrize("interval", ["0s", "0", "-1s"])
def test_batch_interval_must_be_positive(tmp_path, interval):
    line = one_line(tmp_path, predictor={"server_side_batching": {"max_batch_size": 2, "batch_interval": interval}})
    assert line == ("api 'my-api': predictor.server_side_batching.batch_interval: must be a duration greater than 0, "
                    f"such as 100ms or 0.5s (given: {interval!r})")


def test_batching_fields_are_required(tmp_path):
    assert lines_of(tmp_path, api(predictor={"server_side_batching": {}})) == [
        "api 'my-api': predictor.server_side_batching.max_batch_size: is required",
        "api 'my-api': predictor.server_side_batching.batch_interval: is required"]


# --- compute ------------------------------------------------------------------------------------------------------

def test_gpu_and_inf_cannot_be_used_together(tmp_path):
    assert one_line(tmp_path, compute={"gpu": 1, "inf": 1}) == \
        "api 'my-api': compute: gpu and inf resources cannot be used together (given: gpu 1, inf 1)"


@pytest.mark.parametrize("field", ["gpu", "inf"])
def test_accelerators_are_non_negative_integers(tmp_path, field):
    assert one_line(tmp_path, compute={field: -1}) == f"api 'my-api': compute.{field}: must be at least 0 (given: -1)"
    assert one_line(tmp_path, compute={field: "1"}) == f"api 'my-api': compute.{field}: must be an integer (given: '1')"


@pytest.mark.parametrize("processes", [1, 3, 8])
def test_how_processes_share_neuron_cores_is_left_to_the_hardware_plugin(tmp_path, processes):
    kwargs = {"predictor": {"processes_per_replica": processes}, "compute": {"inf": 1}}
    assert load_one(tmp_path, **kwargs).predictor.processes_per_replica == processes  # the devices present decide


@pytest.mark.parametrize("cpu, line", [
    ("10m", "compute.cpu: must be at least 20m (0.02 CPU) (given: '10m')"),
    (0, "compute.cpu: must be at least 20m (0.02 CPU) (given: 0)"),
    ("two", "compute.cpu: must be a Kubernetes quantity such as 500m, 2, 512Mi or 1Gi (given: 'two')"),
    (True, "compute.cpu: must be a Kubernetes quantity such as 500m, 2, 512Mi or 1Gi (given: True)"),
    ([1], "compute.cpu: must be a Kubernetes quantity such as 500m, 2, 512Mi or 1Gi (given: [1])"),
])
def test_cpu_rules(tmp_path, cpu, line):
    assert one_line(tmp_path, compute={"cpu": cpu}) == f"api 'my-api': {line}"


def test_mem_rules(tmp_path):
    assert one_line(tmp_path, compute={"mem": "10Mi"}) == \
        "api 'my-api': compute.mem: must be at least 20Mi (given: '10Mi')"
    assert one_line(tmp_path, compute={"mem": "1GB"}) == \
        "api 'my-api': compute.mem: must be a Kubernetes quantity such as 500m, 2, 512Mi or 1Gi (given: '1GB')"
    assert load_one(tmp_path, compute={"mem": "20Mi"}).compute.mem == 20 * 2**20


# --- autoscaling --------------------------------------------------------------------------------------------------

def test_min_init_max_replicas(tmp_path):
    assert one_line(tmp_path, autoscaling={"min_replicas": 5, "max_replicas": 2}) == \
        "api 'my-api': autoscaling.min_replicas: must be less than or equal to max_replicas (2) (given: 5)"
    assert one_line(tmp_path, autoscaling={"min_replicas": 2, "max_replicas": 4, "init_replicas": 5}) == \
        "api 'my-api': autoscaling.init_replicas: must be between min_replicas (2) and max_replicas (4) (given: 5)"
    assert one_line(tmp_path, autoscaling={"min_replicas": 2, "init_replicas": 1}) == \
        "api 'my-api': autoscaling.init_replicas: must be between min_replicas (2) and max_replicas (100) (given: 1)"


def test_min_above_max_and_init_out_of_range_are_both_reported(tmp_path):
    lines = lines_of(tmp_path, api(autoscaling={"min_replicas": 5, "max_replicas": 2, "init_replicas": 9}))
    assert [line.split(":")[1].strip() for line in lines] == ["autoscaling.min_replicas", "autoscaling.init_replicas"]


@pytest.mark.parametrize("field", ["min_replicas", "max_replicas", "init_replicas", "max_replica_concurrency"])
def test_replica_counts_are_positive(tmp_path, field):
    assert one_line(tmp_path, autoscaling={field: 0}) == \
        f"api 'my-api': autoscaling.{field}: must be greater than 0 (given: 0)"


def test_max_replica_concurrency_is_at_most_30000(tmp_path):
    loaded = load_one(tmp_path, autoscaling={"max_replica_concurrency": 30000})
    assert loaded.autoscaling.max_replica_concurrency == 30000
    assert one_line(tmp_path, autoscaling={"max_replica_concurrency": 30001}) == \
        "api 'my-api': autoscaling.max_replica_concurrency: must be at most 30000 (given: 30001)"


@pytest.mark.parametrize("window, seconds", [("10s", 10.0), ("60s", 60.0), ("2m", 120.0), ("1m30s", 90.0)])
def test_window_is_a_multiple_of_10s(tmp_path, window, seconds):
    assert load_one(tmp_path, autoscaling={"window": window}).autoscaling.window == seconds


@pytest.mark.parametrize("window", ["5s", "15s", "0s", "10500ms", "-10s"])
def test_window_rejects_other_durations(tmp_path, window):
    assert one_line(tmp_path, autoscaling={"window": window}) == \
        ("api 'my-api': autoscaling.window: must be a duration of at least 10s and a multiple of 10s, such as 60s "
         f"or 2m (given: '{window}')")


@pytest.mark.parametrize("field", ["downscale_stabilization_period", "upscale_stabilization_period"])
def test_stabilization_periods_are_non_negative_durations(tmp_path, field):
    assert getattr(load_one(tmp_path, autoscaling={field: "0s"}).autoscaling, field) == 0.0
    assert one_line(tmp_path, autoscaling={field: "-1m"}) == \
        f"api 'my-api': autoscaling.{field}: must be a duration of 0s or more, such as 0s, 30s or 5m (given: '-1m')"
    assert one_line(tmp_path, autoscaling={field: 300}) == \
        (f"api 'my-api': autoscaling.{field}: must be a duration string with a unit, such as 100ms, 0.5s or 5m "
         "(given: 300)")


@pytest.mark.parametrize("field, value, line", [
    ("max_downscale_factor", 1, "must be less than 1 (given: 1)"),
    ("max_downscale_factor", -0.1, "must be at least 0 (given: -0.1)"),
    ("max_upscale_factor", 1, "must be greater than 1 (given: 1)"),
    ("downscale_tolerance", 1.0, "must be less than 1 (given: 1.0)"),
    ("downscale_tolerance", -0.5, "must be at least 0 (given: -0.5)"),
    ("upscale_tolerance", -0.01, "must be at least 0 (given: -0.01)"),
    ("target_replica_concurrency", 0, "must be greater than 0 (given: 0)"),
    ("max_upscale_factor", "2", "must be a number (given: '2')"),
])
def test_factor_and_tolerance_ranges(tmp_path, field, value, line):
    assert one_line(tmp_path, autoscaling={field: value}) == f"api 'my-api': autoscaling.{field}: {line}"


@pytest.mark.parametrize("field, value", [("max_downscale_factor", 0), ("max_downscale_factor", 0.99),
                                          ("max_upscale_factor", 1.01), ("downscale_tolerance", 0),
                                          ("upscale_tolerance", 5)])
def test_factor_and_tolerance_bounds_that_are_allowed(tmp_path, field, value):
    assert getattr(load_one(tmp_path, autoscaling={field: value}).autoscaling, field) == value


def test_target_replica_concurrency_may_not_exceed_max(tmp_path):
    assert one_line(tmp_path, autoscaling={"target_replica_concurrency": 11, "max_replica_concurrency": 10}) == \
        ("api 'my-api': autoscaling.target_replica_concurrency: must be less than or equal to "
         "autoscaling.max_replica_concurrency (10) (given: 11)")
    assert load_one(tmp_path, autoscaling={"target_replica_concurrency": 10,
                                           "max_replica_concurrency": 10}).autoscaling.target_replica_concurrency == 10


def test_default_target_is_processes_times_threads(tmp_path):
    assert one_line(tmp_path, predictor={"processes_per_replica": 2, "threads_per_process": 8},
                    autoscaling={"max_replica_concurrency": 10}) == \
        ("api 'my-api': autoscaling.target_replica_concurrency: defaults to processes_per_replica * "
         "threads_per_process (16), which must be less than or equal to autoscaling.max_replica_concurrency (10); "
         "set one of them")
    assert load_one(tmp_path, predictor={"threads_per_process": 10}, autoscaling={"max_replica_concurrency": 10})


# --- networking ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("endpoint, normalised", [("/v1/iris", "/v1/iris"), ("iris", "/iris"), ("/a/b/", "/a/b"),
                                                  ("/my_api-2.0", "/my_api-2.0")])
def test_endpoints(tmp_path, endpoint, normalised):
    loaded = load_one(tmp_path, networking={"endpoint": endpoint})
    assert (loaded.networking.endpoint, loaded.endpoint) == (normalised, normalised)


@pytest.mark.parametrize("endpoint", ["/a//b", "/a b", "/a?b=1", "/ä", "/a\n"])
def test_endpoint_syntax(tmp_path, endpoint):
    assert one_line(tmp_path, networking={"endpoint": endpoint}) == \
        ("api 'my-api': networking.endpoint: may only contain letters, digits and _ - . /, without '//', at most 1000 "
         f"characters (given: {endpoint!r})")


@pytest.mark.parametrize("endpoint", ["/", ""])
def test_endpoint_may_not_be_the_root(tmp_path, endpoint):
    assert one_line(tmp_path, networking={"endpoint": endpoint}) == \
        (f"api 'my-api': networking.endpoint: cannot be '/' (with one API, engine serves it at / too) "
         f"(given: {endpoint!r})")


def test_endpoint_longer_than_1000_characters_is_rejected(tmp_path):
    assert "networking.endpoint: may only contain" in one_line(tmp_path, networking={"endpoint": "/" + "a" * 1000})


def test_endpoints_must_be_unique(tmp_path):
    lines = lines_of(tmp_path, api("a", networking={"endpoint": "/x"}), api("b", networking={"endpoint": "x/"}))
    assert lines == ["api 'b': networking.endpoint: the endpoint /x is already used by api 'a'; endpoints must be "
                     "unique across APIs"]


def test_endpoint_may_not_collide_with_another_api_name(tmp_path):
    lines = lines_of(tmp_path, api("a"), api("b", networking={"endpoint": "/a"}))
    assert lines == ["api 'b': networking.endpoint: the endpoint /a is already used by api 'a'; endpoints must be "
                     "unique across APIs"]


SERVER_ROUTES = "/healthz, /readyz, /metrics, /openapi.json, /docs and the paths under /docs/"


@pytest.mark.parametrize("route", ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/predict"])
def test_endpoint_may_not_collide_with_server_routes(tmp_path, route):
    assert one_line(tmp_path, networking={"endpoint": route}) == \
        (f"api 'my-api': networking.endpoint: the endpoint {route} collides with a route engine serves itself "
         f"({SERVER_ROUTES}); rename the API or set networking.endpoint")


@pytest.mark.parametrize("name", ["healthz", "readyz", "metrics", "docs"])
def test_api_name_may_not_collide_with_server_routes(tmp_path, name):
    assert one_line(tmp_path, name=name) == \
        (f"api '{name}': name: the endpoint /{name} collides with a route engine serves itself "
         f"({SERVER_ROUTES}); rename the API or set networking.endpoint")
    assert load_one(tmp_path, name=name, networking={"endpoint": f"/api/{name}"}).endpoint == f"/api/{name}"


def test_api_gateway_values(tmp_path):
    assert load_one(tmp_path, networking={"api_gateway": "public"}).networking.api_gateway == "public"
    assert one_line(tmp_path, networking={"api_gateway": "private"}) == \
        "api 'my-api': networking.api_gateway: must be one of 'public' or 'none' (given: 'private')"


@pytest.mark.parametrize("port, line", [(0, "must be greater than 0 (given: 0)"),
                                        (65536, "must be at most 65535 (given: 65536)")])
def test_local_port_range(tmp_path, port, line):
    assert one_line(tmp_path, networking={"local_port": port}) == f"api 'my-api': networking.local_port: {line}"
    assert load_one(tmp_path, networking={"local_port": 65535}).networking.local_port == 65535


# --- update_strategy and monitoring -------------------------------------------------------------------------------

@pytest.mark.parametrize("surge, unavailable", [(0, 0), ("0%", "0%"), (0, "0%"), ("0", "00%")])
def test_update_strategy_both_zero_is_rejected(tmp_path, surge, unavailable):
    assert one_line(tmp_path, update_strategy={"max_surge": surge, "max_unavailable": unavailable}) == \
        "api 'my-api': update_strategy: max_surge and max_unavailable cannot both be zero"


def test_update_strategy_one_zero_is_fine(tmp_path):
    strategy = load_one(tmp_path, update_strategy={"max_surge": 0, "max_unavailable": "10%"}).update_strategy
    assert (strategy.max_surge, strategy.max_unavailable) == (0, "10%")


@pytest.mark.parametrize("value", ["101%", "-1", -1, "25 percent", True, 1.5, "%"])
def test_update_strategy_amounts(tmp_path, value):
    assert one_line(tmp_path, update_strategy={"max_unavailable": value}) == \
        ("api 'my-api': update_strategy.max_unavailable: must be a percentage from 0% to 100% or an integer of 0 or "
         f"more (given: {value!r})")


def test_monitoring_model_type(tmp_path):
    assert load_one(tmp_path, monitoring={"model_type": "regression"}).monitoring.model_type == "regression"
    assert one_line(tmp_path, monitoring={"model_type": "ranking"}) == \
        "api 'my-api': monitoring.model_type: must be one of 'classification' or 'regression' (given: 'ranking')"
    assert one_line(tmp_path, monitoring={"key": "label"}) == "api 'my-api': monitoring.model_type: is required"


# --- unknown keys -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, field, allowed", [
    ({**api(), "replicas": 2}, "replicas",
     "autoscaling, compute, kind, monitoring, name, networking, predictor, update_strategy"),
    (api(predictor={"model": "m"}), "predictor.model",
     "config, env, image, log_level, model_path, models, multi_model_reloading, path, processes_per_replica, "
     "python_path, server_side_batching, signature_key, tensorflow_serving_image, threads_per_process, type, "
     "warmup_file"),
    (api(predictor={"models": {"dir": "m", "cache": 1}}), "predictor.models.cache",
     "cache_size, dir, disk_budget, disk_cache_size, memory_budget, path, paths, signature_key"),
    (api(predictor={"multi_model_reloading": {"paths": [{"name": "a", "path": "p", "version": 1}]}}),
     "predictor.multi_model_reloading.paths[0].version", "model_path, name, path, signature_key"),
    (api(predictor={"server_side_batching": {"max_batch_size": 2, "batch_interval": "1s", "timeout": "1s"}}),
     "predictor.server_side_batching.timeout", "batch_interval, dispatch, max_batch_size, max_concurrent_batches"),
    (api(compute={"memory": "1Gi"}), "compute.memory", "cpu, gpu, inf, mem"),
    (api(autoscaling={"replicas": 1}), "autoscaling.replicas",
     "downscale_stabilization_period, downscale_tolerance, init_replicas, max_downscale_factor, "
     "max_replica_concurrency, max_replicas, max_upscale_factor, min_replicas, target_replica_concurrency, "
     "upscale_stabilization_period, upscale_tolerance, window"),
    (api(networking={"port": 1}), "networking.port", "api_gateway, endpoint, local_port"),
    (api(update_strategy={"surge": 1}), "update_strategy.surge", "max_surge, max_unavailable"),
    (api(monitoring={"model_type": "regression", "keys": "a"}), "monitoring.keys", "key, model_type"),
])
def test_unknown_keys_are_errors_that_list_the_allowed_fields(tmp_path, config, field, allowed):
    (line,) = lines_of(tmp_path, config)
    assert line.startswith(f"api 'my-api': {field}: is not a supported field; ")
    assert line.endswith(f"allowed here: {allowed}")


def test_unknown_key_suggests_a_close_match(tmp_path):
    assert one_line(tmp_path, predictor={"proceses_per_replica": 2}) == \
        ("api 'my-api': predictor.proceses_per_replica: is not a supported field; did you mean processes_per_replica? "
         "allowed here: config, env, image, log_level, model_path, models, multi_model_reloading, path, "
         "processes_per_replica, python_path, server_side_batching, signature_key, tensorflow_serving_image, "
         "threads_per_process, type, warmup_file")


# --- error reporting ----------------------------------------------------------------------------------------------

def test_all_problems_of_a_file_are_reported_one_per_line(tmp_path):
    lines = lines_of(tmp_path,
                     api("good"),
                     api("first", predictor={"processes_per_replica": 0, "env": {"CORTEX_A": "x"}},
                         compute={"gpu": -1}),
                     api("Bad_Name"),
                     api("second", networking={"endpoint": "/a b"}, extra=True))
    assert lines == [
        "api 'first': predictor.processes_per_replica: must be at least 1 (given: 0)",
        "api 'first': predictor.env: environment variables starting with CORTEX_ are reserved: CORTEX_A",
        "api 'first': compute.gpu: must be at least 0 (given: -1)",
        "api #3: name: must be a DNS-1035 label: lower-case letters, digits and '-', starting with a letter and not "
        "ending with '-' (given: 'Bad_Name')",
        "api 'second': networking.endpoint: may only contain letters, digits and _ - . /, without '//', at most 1000 "
        "characters (given: '/a b')",
        "api 'second': extra: is not a supported field; allowed here: autoscaling, compute, kind, monitoring, name, "
        "networking, predictor, update_strategy",
    ]


def test_cross_field_problems_of_one_api_are_all_reported(tmp_path):
    lines = lines_of(tmp_path, api(predictor={"processes_per_replica": 3,
                                              "models": {"dir": "m", "cache_size": 1, "disk_cache_size": 1}},
                                   compute={"inf": 1}, autoscaling={"target_replica_concurrency": 2000}))
    assert [line.split(": ")[1] for line in lines] == ["autoscaling.target_replica_concurrency",
                                                       "predictor.processes_per_replica"]


def test_problems_inside_models_are_all_reported(tmp_path):
    paths = [{"name": "a", "path": "1"}, {"name": "a", "path": "2"}]
    lines = lines_of(tmp_path, api(predictor={"models": {"paths": paths, "dir": "d", "cache_size": 1}}))
    assert [line.split(": ")[1] for line in lines] == ["predictor.models", "predictor.models.paths[1].name",
                                                       "predictor.models.disk_cache_size"]


def test_every_error_line_is_one_line_and_names_file_api_and_field(tmp_path):
    message = error_of(tmp_path, [api(predictor={"threads_per_process": "x"}), api("b", compute={"cpu": "x"})])
    path = tmp_path / "cortex.yaml"
    assert message.splitlines() == [
        f"{path}: api 'my-api': predictor.threads_per_process: must be an integer (given: 'x')",
        f"{path}: api 'b': compute.cpu: must be a Kubernetes quantity such as 500m, 2, 512Mi or 1Gi (given: 'x')"]


def test_long_given_values_are_shortened(tmp_path):
    line = one_line(tmp_path, predictor={"log_level": "x" * 200})
    assert line.endswith("(given: '" + "x" * 56 + "...)")
    assert len(line) < 200


# --- file-level problems ------------------------------------------------------------------------------------------

def test_yaml_syntax_error_is_one_clear_line(tmp_path):
    message = error_of(tmp_path, "- name: a\n  kind: [RealtimeAPI\n")
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'cortex.yaml'}: not valid YAML: ")
    assert "line 3, column 1" in message


def test_yaml_tab_indentation_error_says_where(tmp_path):
    message = error_of(tmp_path, "- name: a\n\tkind: RealtimeAPI\n")
    assert message == (f"{tmp_path / 'cortex.yaml'}: not valid YAML: found character '\\t' that cannot start any "
                       "token while scanning for the next token at line 2, column 1")


def test_duplicate_keys_are_an_error(tmp_path):
    message = error_of(tmp_path, "- name: a\n  kind: RealtimeAPI\n  name: b\n")
    assert message == (f"{tmp_path / 'cortex.yaml'}: not valid YAML: key 'name' is given twice in one mapping "
                       "at line 3, column 3")


def test_yaml_merge_keys_still_work(tmp_path):
    text = """\
    - &base
      name: a
      kind: RealtimeAPI
      predictor: {type: python, path: predictor.py}
    - <<: *base
      name: b
    """
    assert [loaded.name for loaded in load_config(write(tmp_path, text))] == ["a", "b"]


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "[]\n", "---\n"])
def test_empty_file_is_a_clear_error(tmp_path, text):
    assert error_of(tmp_path, text) == (f"{tmp_path / 'cortex.yaml'}: no APIs are defined; the file must be a YAML "
                                        "list of APIs (each item starting with '- name: ...')")


def test_single_mapping_at_top_level_is_a_clear_error(tmp_path):
    message = error_of(tmp_path, "name: a\nkind: RealtimeAPI\npredictor: {type: python, path: p.py}\n")
    assert message == (f"{tmp_path / 'cortex.yaml'}: must be a YAML list of APIs, but it is a single mapping; start "
                       "each API with '- ' (e.g. '- name: my-api', with the other keys indented under it)")


@pytest.mark.parametrize("text, kind", [("hello\n", "a string ('hello')"), ("42\n", "a number (42)"),
                                        ("true\n", "a boolean (True)")])
def test_other_top_level_values_are_clear_errors(tmp_path, text, kind):
    assert error_of(tmp_path, text) == (f"{tmp_path / 'cortex.yaml'}: must be a YAML list of APIs (each item starting "
                                        f"with '- name: ...'), not {kind}")


def test_list_items_must_be_mappings(tmp_path):
    lines = lines_of(tmp_path, api("a"), "b", None)
    assert lines == ["api #2: must be a mapping with name, kind and predictor (given: a string ('b'))",
                     "api #3: must be a mapping with name, kind and predictor (given: nothing (null))"]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.yaml")
    assert str(caught.value) == \
        f"{tmp_path / 'missing.yaml'}: cannot read the configuration file: No such file or directory"


def test_binary_file_is_a_clear_error(tmp_path):
    path = tmp_path / "cortex.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: not a text file (it is not valid UTF-8)"


# --- not applied locally ------------------------------------------------------------------------------------------

def test_plain_config_has_nothing_not_applied_locally(tmp_path):
    assert not_applied_locally(load_one(tmp_path)) == []


def test_fields_that_apply_locally_are_not_listed(tmp_path):
    loaded = load_one(tmp_path, predictor={"processes_per_replica": 2, "threads_per_process": 4, "config": {"a": 1},
                                           "env": {"A": "1"}, "log_level": "debug", "models": {"dir": "m"}},
                      compute={"gpu": 1, "cpu": None}, autoscaling={"max_replica_concurrency": 8},
                      networking={"endpoint": "/x"})
    assert not_applied_locally(loaded) == []


def test_cluster_only_fields_are_listed(tmp_path):
    loaded = load_config(write(tmp_path, FULL_V023))[0]
    assert not_applied_locally(loaded) == [
        "predictor.image", "predictor.tensorflow_serving_image", "compute.cpu", "compute.mem",
        "autoscaling.min_replicas", "autoscaling.max_replicas", "autoscaling.init_replicas",
        "autoscaling.target_replica_concurrency", "autoscaling.window", "autoscaling.downscale_stabilization_period",
        "autoscaling.upscale_stabilization_period", "autoscaling.max_downscale_factor",
        "autoscaling.max_upscale_factor", "autoscaling.downscale_tolerance", "autoscaling.upscale_tolerance",
        "networking.api_gateway", "networking.local_port", "update_strategy", "monitoring"]


@pytest.mark.parametrize("kwargs, listed", [
    ({"predictor": {"image": "my/image:1"}}, ["predictor.image"]),
    ({"compute": {"mem": "1Gi"}}, ["compute.mem"]),
    ({"autoscaling": {"window": "30s"}}, ["autoscaling.window"]),
    ({"networking": {"local_port": 8889}}, ["networking.local_port"]),
    ({"update_strategy": {}}, ["update_strategy"]),
    ({"monitoring": {"model_type": "classification"}}, ["monitoring"]),
])
def test_each_cluster_only_field_is_listed_alone(tmp_path, kwargs, listed):
    assert not_applied_locally(load_one(tmp_path, **kwargs)) == listed
