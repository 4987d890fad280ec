"""Cortex's BatchAPI configuration (engine.project.batch): every shape of Cortex v0.22–v0.25 accepted, each of
Cortex v0.25's refusals in its words, the batch predictor class checks, and what validate, load and `engine validate`
give."""
from __future__ import annotations

import importlib.util
import os
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from engine_python_predictor import PYTHON

from engine import Api, BatchApi, ConfigError, PredictorLoadError
from engine.cli import main
from engine.project.config import load_config, read_config
from engine.project.loading import load_project
from engine.project.predictor_class import check_class, import_class, load_class, runtime_methods, static_methods
from engine.project.validate import validate_project
from engine.testing import api_yaml

ONNX_MODEL = Path(__file__).resolve().parents[1] / "examples" / "onnx-iris" / "model" / "model.onnx"
HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None

BATCH_PYTHON = """\
class PythonPredictor:
    def __init__(self, config, job_spec):
        self.config = config

    def predict(self, payload, batch_id):
        return payload

    def on_job_complete(self, batch_metrics):
        pass
"""
BATCH_PYTHON_MODELS = """\
class PythonPredictor:
    def __init__(self, python_client, config, job_spec):
        self.client = python_client

    def load_model(self, model_path):
        return model_path

    def predict(self, payload):
        return payload
"""
BATCH_ONNX = """\
class ONNXPredictor:
    def __init__(self, onnx_client, config, job_spec):
        self.client = onnx_client

    def predict(self, payload, batch_id):
        return payload

    def on_job_complete(self):
        pass
"""
BATCH_TENSORFLOW = BATCH_ONNX.replace("ONNXPredictor", "TensorFlowPredictor").replace("onnx_client",
                                                                                     "tensorflow_client")
REALTIME = "class PythonPredictor:\n    def __init__(self, config):\n        pass\n\n" \
           "    def predict(self, payload):\n        return payload\n"


def batch_yaml(name: str = "batch", predictor: str = "predictor.py", predictor_extra: str = "", api_extra: str = "",
               type_: str = "python") -> str:
    """One BatchAPI entry of cortex.yaml; *_extra are YAML lines added under `predictor:` and under the API."""
    return api_yaml(name, predictor, predictor_extra, api_extra, type_).replace("kind: RealtimeAPI", "kind: BatchAPI")


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    """Write `files` (relative path -> content) under root and return root."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content))
    return root


def config_lines(tmp_path: Path, config: str) -> list[str]:
    """The lines of the ConfigError of reading `config`, each without the `<file>: ` prefix (which each must have)."""
    path = tmp_path / "cortex.yaml"
    path.write_text(config)
    with pytest.raises(ConfigError) as caught:
        read_config(path)
    lines = str(caught.value).splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines), lines
    return [line.removeprefix(f"{path}: ") for line in lines]


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """Restore the working directory, sys.path, sys.modules and os.environ after the test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(os, "environ", os.environ.copy())
    before = set(sys.modules)
    yield monkeypatch
    for name in set(sys.modules) - before:
        del sys.modules[name]


# --- what is accepted ---------------------------------------------------------------------------------------------

def test_a_python_batch_api_reads_with_cortexs_defaults(tmp_path):
    path = tmp_path / "cortex.yaml"
    path.write_text(api_yaml("realtime") + batch_yaml("batch", predictor_extra="config:\n  bucket: s3://out",
                                                      api_extra="compute:\n  cpu: 1\n  mem: 1Gi"))
    config = read_config(path)
    (batch,) = config.batch_apis
    assert isinstance(batch, BatchApi) and isinstance(batch, Api)
    assert batch.kind == "BatchAPI" and batch.endpoint == "/batch"
    assert batch.predictor.config == {"bucket": "s3://out"}
    assert batch.predictor.processes_per_replica == batch.predictor.threads_per_process == 1
    assert batch.compute.cpu == 1 and batch.compute.mem == 2**30 and batch.compute.gpu == 0
    assert batch.autoscaling.max_replica_concurrency == 1024  # the sections it lacks keep the defaults of an Api
    assert [api.name for api in config.apis] == [api.name for api in load_config(path)] == ["realtime"]
    assert config.splitters == []


def test_a_batch_apis_dump_has_cortexs_keys_only_and_validates_again(tmp_path):
    path = tmp_path / "cortex.yaml"
    path.write_text(batch_yaml("x", "p.py", "models: {paths: [{name: a, model_path: s3://b/a/}]}\nconfig: {k: 1}",
                               "networking: {endpoint: jobs, api_gateway: none}\ncompute: {cpu: 1}", "onnx"))
    (batch,) = read_config(path).batch_apis
    dump = batch.model_dump()
    assert list(dump) == ["name", "kind", "predictor", "compute", "networking"]
    assert dump["networking"] == {"endpoint": "/jobs", "api_gateway": "none"}
    assert BatchApi.model_validate(dump) == BatchApi.model_validate(batch.model_dump(mode="json")) == batch


# Cortex's BatchAPI shapes: v0.25's test/batch/{image-classifier,onnx,tensorflow}, the networking section of its
# configuration page, and v0.22–v0.24's python BatchAPI with models (and its model_path spelling).
SHAPES = {
    "python v0.25": (BATCH_PYTHON, """
        - name: image-classifier
          kind: BatchAPI
          predictor:
            type: python
            path: predictor.py
            config:
              dest_s3_dir: s3://cortex-examples/image-classifier/results
          compute:
            cpu: 1
        """),
    "python networking": (BATCH_PYTHON, """
        - name: image-classifier
          kind: BatchAPI
          predictor:
            type: python
            path: predictor.py
            processes_per_replica: 1
            threads_per_process: 1
            log_level: debug
            env: {MODE: batch}
          networking:
            endpoint: jobs/images
            api_gateway: none
          compute:
            cpu: 200m
            mem: 512Mi
        """),
    "python models v0.24": (BATCH_PYTHON_MODELS, """
        - name: image-classifier
          kind: BatchAPI
          predictor:
            type: python
            path: predictor.py
            model_path: s3://cortex-examples/pytorch/image-classifier/
        """),
    "python models v0.23": (BATCH_PYTHON_MODELS, """
        - name: image-classifier
          kind: BatchAPI
          predictor:
            type: python
            path: predictor.py
            models:
              paths:
                - {name: resnet, model_path: s3://cortex-examples/pytorch/resnet/}
        """),
    "onnx v0.25": (BATCH_ONNX, """
        - name: image-classifier
          kind: BatchAPI
          predictor:
            type: onnx
            path: predictor.py
            models:
              path: s3://cortex-examples/onnx/resnet50/
          compute:
            cpu: 1
        """),
    "onnx local model_path": (BATCH_ONNX, """
        - name: image-classifier
          kind: BatchAPI
          predictor:
            type: onnx
            path: predictor.py
            model_path: model/
        """),
    "tensorflow v0.25": (BATCH_TENSORFLOW, """
        - name: image-classifier
          kind: BatchAPI
          predictor:
            type: tensorflow
            path: predictor.py
            models:
              path: s3://cortex-examples/tensorflow/image-classifier/inception/
              signature_key: predict
          compute:
            cpu: 1
        """),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_cortex_batch_api_shape_validates(tmp_path, shape):
    if shape.startswith("tensorflow") and not HAS_TENSORFLOW:
        pytest.skip("the tensorflow predictor type needs TensorFlow")
    source, config = SHAPES[shape]
    write_tree(tmp_path, {"cortex.yaml": config, "predictor.py": source, "model/model.onnx": ONNX_MODEL.read_bytes()})
    validated = validate_project(tmp_path)
    assert validated.apis == [] and validated.splitters == []
    (batch,) = validated.batch_apis
    assert batch.name == "image-classifier" and batch.kind == "BatchAPI"
    assert batch.endpoint == ("/jobs/images" if shape == "python networking" else "/image-classifier")
    assert (batch.predictor.models is not None) == ("models" in shape or not shape.startswith("python"))


# --- what is refused, in Cortex's words ---------------------------------------------------------------------------

ALLOWED = "allowed here: compute, kind, name, networking, predictor"
REFUSED = [
    (dict(api_extra="autoscaling:\n  min_replicas: 2"), f'autoscaling: key "autoscaling" is not supported; {ALLOWED}'),
    (dict(api_extra="monitoring:\n  model_type: classification"),
     f'monitoring: key "monitoring" is not supported; {ALLOWED}'),
    (dict(api_extra="update_strategy:\n  max_surge: 1"),
     f'update_strategy: key "update_strategy" is not supported; {ALLOWED}'),
    (dict(api_extra="autoscaling: null"), f'autoscaling: key "autoscaling" is not supported; {ALLOWED}'),
    (dict(api_extra="apis:\n  - {name: a, weight: 100}"), f'apis: key "apis" is not supported; {ALLOWED}'),
    (dict(api_extra="computes: {cpu: 1}"),
     f'computes: key "computes" is not supported; did you mean compute? {ALLOWED}'),
    (dict(api_extra="networking:\n  local_port: 8890"),
     'networking.local_port: key "local_port" is not supported; allowed here: api_gateway, endpoint'),
    (dict(predictor_extra="processes_per_replica: 2"),
     "predictor.processes_per_replica: processes_per_replica key is not supported for BatchAPI kind (given: 2; only "
     "1 is allowed: a job's batches run in parallel on its workers)"),
    (dict(predictor_extra="threads_per_process: 4"),
     "predictor.threads_per_process: threads_per_process key is not supported for BatchAPI kind (given: 4; only 1 "
     "is allowed: a job's batches run in parallel on its workers)"),
    (dict(predictor_extra="server_side_batching: {max_batch_size: 8, batch_interval: 1s}"),
     "predictor.server_side_batching: server_side_batching key is not supported for BatchAPI kind (a worker "
     "predicts one batch of the job at a time, of the submission's batch_size)"),
    (dict(predictor_extra="multi_model_reloading: {path: s3://bucket/model/}"),
     "predictor.multi_model_reloading: multi_model_reloading key is not supported for BatchAPI kind (give "
     "predictor.models or predictor.model_path, as Cortex v0.22–v0.24 did)"),
    (dict(predictor_extra="models: {dir: s3://bucket/models/, cache_size: 1, disk_cache_size: 2}"),
     "predictor.models.cache_size: cache_size key is not supported for BatchAPI kind (a worker loads its models "
     "once, before its first batch)\n"
     "predictor.models.disk_cache_size: disk_cache_size key is not supported for BatchAPI kind (a worker loads its "
     "models once, before its first batch)"),
]


@pytest.mark.parametrize(("fields", "line"), REFUSED, ids=[line.split(":")[0] + str(n)
                                                          for n, (_, line) in enumerate(REFUSED)])
def test_what_a_batch_api_cannot_have_is_refused_in_cortexs_words(tmp_path, fields, line):
    assert config_lines(tmp_path, batch_yaml("x", **fields)) == [f"api 'x' (BatchAPI): {one}"
                                                                  for one in line.splitlines()]


def test_every_problem_of_a_batch_api_is_reported_at_once(tmp_path):
    lines = config_lines(tmp_path, batch_yaml(
        "x", predictor_extra="models: {dir: m, cache_size: 1, disk_cache_size: 2}\nthreads_per_process: 2",
        api_extra="autoscaling: {min_replicas: 2}\nnetworking: {local_port: 1, endpoint: '/a b'}\ncompute: {gpu: -1}"))
    assert lines == [
        "api 'x' (BatchAPI): compute.gpu: must be at least 0 (given: -1)",
        "api 'x' (BatchAPI): networking.endpoint: may only contain letters, digits and _ - . /, without '//', at "
        "most 1000 characters (given: '/a b')",
        f'api \'x\' (BatchAPI): autoscaling: key "autoscaling" is not supported; {ALLOWED}',
        "api 'x' (BatchAPI): networking.local_port: key \"local_port\" is not supported; allowed here: api_gateway, "
        "endpoint"]
    lines = config_lines(tmp_path, batch_yaml(
        "x", predictor_extra="models: {dir: m, cache_size: 1, disk_cache_size: 2}\nthreads_per_process: 2\n"
                             "processes_per_replica: 3"))
    assert [line.split(": ")[1] for line in lines] == [
        "predictor.processes_per_replica", "predictor.threads_per_process", "predictor.models.cache_size",
        "predictor.models.disk_cache_size"]


def test_a_batch_apis_predictor_fields_are_checked_as_a_realtime_apis(tmp_path):
    extra = "processes_per_replica: 0\nproceses_per_replica: 1"
    assert config_lines(tmp_path, batch_yaml("x", predictor_extra=extra)) == [
        "api 'x' (BatchAPI): predictor.processes_per_replica: must be at least 1 (given: 0)",
        "api 'x' (BatchAPI): predictor.proceses_per_replica: is not a supported field; did you mean "
        "processes_per_replica? allowed here: config, env, image, log_level, model_path, models, "
        "multi_model_reloading, path, processes_per_replica, python_path, server_side_batching, signature_key, "
        "tensorflow_serving_image, threads_per_process, type, warmup_file"]


def test_a_batch_api_refuses_a_warmup_file(tmp_path):
    lines = config_lines(tmp_path, batch_yaml("x", predictor_extra="warmup_file: warmup.jsonl"))
    assert [line.split(": ", 2)[1:] for line in lines] == [
        ["predictor.warmup_file", "warmup_file key is not supported for BatchAPI kind (a job's workers answer no "
                                  "requests before their batches)"]]


def test_processes_and_threads_of_one_are_accepted(tmp_path):
    path = tmp_path / "cortex.yaml"
    path.write_text(batch_yaml("x", predictor_extra="processes_per_replica: 1\nthreads_per_process: 1"))
    assert read_config(path).batch_apis[0].predictor.threads_per_process == 1


def test_names_and_endpoints_are_unique_across_kinds(tmp_path):
    assert config_lines(tmp_path, api_yaml("a") + batch_yaml("a")) == \
        ["api 'a': name: 'a' is already the name of api #1; names must be unique across APIs"]
    assert config_lines(tmp_path, batch_yaml("b") + api_yaml("a", api_extra="networking: {endpoint: /b}")) == \
        ["api 'a': networking.endpoint: the endpoint /b is already used by api 'b'; endpoints must be unique across "
         "APIs"]
    splitter = "- name: b\n  kind: TrafficSplitter\n  apis:\n    - {name: a, weight: 100}\n"
    assert config_lines(tmp_path, api_yaml("a") + batch_yaml("b") + splitter) == \
        ["api 'b': name: 'b' is already the name of api #2; names must be unique across APIs"]


def test_a_traffic_splitter_cannot_target_a_batch_api(tmp_path):
    splitter = "- name: s\n  kind: TrafficSplitter\n  apis:\n    - {name: a, weight: 50}\n    - {name: b, weight: 50}\n"
    assert config_lines(tmp_path, api_yaml("a") + batch_yaml("b") + splitter) == \
        ["api 's' (TrafficSplitter): apis: api b was either not found or is not a RealtimeAPI"]


def test_the_realtime_model_refuses_a_batch_api_and_other_kinds_name_the_three(tmp_path):
    assert config_lines(tmp_path, batch_yaml("x").replace("BatchAPI", "TaskAPI")) == \
        ["api 'x': kind: TaskAPI is not supported by engine serve; only RealtimeAPI, BatchAPI and TrafficSplitter are "
         "(given: 'TaskAPI')"]
    with pytest.raises(ValueError, match="a BatchAPI is validated as BatchApi, not as a RealtimeAPI"):
        Api.model_validate({"name": "x", "kind": "BatchAPI", "predictor": {"type": "python", "path": "p.py"}})


# --- validate_project and load_project ----------------------------------------------------------------------------

def two_kinds(root: Path) -> Path:
    """A RealtimeAPI and two BatchAPIs, one with the settings engine accepts and does not apply."""
    return write_tree(root, {
        "cortex.yaml": api_yaml("realtime", "realtime.py", predictor_extra="env:\n  MODE: realtime")
        + batch_yaml("batch", predictor_extra="env:\n  MODE: batch",
                     api_extra="networking: {api_gateway: none}\ncompute: {cpu: 1, mem: 1Gi, gpu: 1}")
        + batch_yaml("other", "other.py"),
        "realtime.py": REALTIME, "predictor.py": BATCH_PYTHON, "other.py": BATCH_PYTHON})


def test_validate_and_load_give_the_batch_apis_with_their_warnings(tmp_path, isolated):
    root = two_kinds(tmp_path)
    validated = validate_project(root, cpu=True)
    assert [api.name for api in validated.apis] == ["realtime"]
    assert [api.name for api in validated.batch_apis] == ["batch", "other"]
    assert validated.batch_apis[0].compute.gpu == 0  # --cpu serves it on the CPU, as a RealtimeAPI
    assert [str(warning) for warning in validated.warnings] == [
        "api 'batch': served on the CPU (--cpu), ignoring compute.gpu: 1",
        "api 'batch': not applied locally (accepted for Cortex compatibility): compute.cpu, compute.mem, "
        "networking.api_gateway"]
    loaded = load_project(root, cpu=True)
    assert [api.name for api in loaded.apis] == loaded.every_api == ["realtime"]
    assert [api.name for api in loaded.batch_apis] == ["batch", "other"]
    assert loaded.environment["MODE"] == "batch"  # every API's predictor.env, in file order


def test_load_projects_apis_selects_batch_apis_too(tmp_path, isolated):
    root = two_kinds(tmp_path)
    loaded = load_project(root, cpu=True, apis=["other"])
    assert loaded.apis == [] and [api.name for api in loaded.batch_apis] == ["other"]
    assert loaded.every_api == ["realtime"] and "MODE" not in loaded.environment
    loaded = load_project(root, cpu=True, apis=["realtime", "batch"])
    assert [api.name for api in loaded.apis] == ["realtime"] and [api.name for api in loaded.batch_apis] == ["batch"]
    assert loaded.environment["MODE"] == "batch"
    with pytest.raises(ConfigError, match="cortex.yaml: no api named nothing$"):
        load_project(root, cpu=True, apis=["batch", "nothing"])


def test_a_batch_api_gets_the_checks_of_a_realtime_api(tmp_path, isolated):
    root = write_tree(tmp_path, {"cortex.yaml": batch_yaml("gone", "missing.py")
                                 + batch_yaml("onnx", "onnx.py", type_="onnx")
                                 + batch_yaml("inf", "onnx.py", "model_path: model/", "compute: {inf: 1}", "onnx"),
                                 "onnx.py": BATCH_ONNX, "model/model.onnx": ONNX_MODEL.read_bytes()})
    with pytest.raises(ConfigError) as caught:
        validate_project(root)
    config = root / "cortex.yaml"
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{config}: api 'gone': predictor.path: missing.py does not exist, or has been excluded from " \
                       "the project directory (hidden, bytecode, or matched by .cortexignore)"
    assert lines[1].startswith(f"{config}: api 'onnx': predictor: at least one model must be specified for the onnx "
                               "predictor type")
    assert any(line.startswith(f"{config}: api 'inf': compute.inf: 1: the onnx predictor type cannot run on "
                               "Inferentia") for line in lines[2:]), lines


def test_validate_checks_a_batch_predictors_on_job_complete(tmp_path, isolated):
    source = BATCH_PYTHON.replace("on_job_complete(self, batch_metrics)", "on_job_complete(self, metrics)")
    root = write_tree(tmp_path, {"cortex.yaml": batch_yaml("batch"), "predictor.py": source})
    with pytest.raises(ConfigError) as caught:
        validate_project(root)
    assert str(caught.value) == \
        f"{root / 'cortex.yaml'}: api 'batch': predictor.py: PythonPredictor: on_job_complete() argument \"metrics\" " \
        "is not a supported argument; supported: batch_metrics"
    (root / "cortex.yaml").write_text(api_yaml("realtime"))  # a RealtimeAPI never calls it: it is not checked
    assert [api.name for api in validate_project(root).apis] == ["realtime"]


# --- the batch predictor class ------------------------------------------------------------------------------------

def methods_of(tmp_path: Path, source: str) -> dict:
    """The static methods of PythonPredictor in `source`, which must be the same as those found by importing it."""
    path = tmp_path / f"p_{uuid.uuid4().hex}.py"
    path.write_text(textwrap.dedent(source))
    methods = static_methods(path, "PythonPredictor")
    assert methods == runtime_methods(import_class(path, "PythonPredictor", f"engine_test_{uuid.uuid4().hex}"))
    return methods


def batch_verdict(methods: dict, has_models: bool = False) -> str | None:
    try:
        check_class(methods, PYTHON, has_models, "predictor.py: PythonPredictor", batch=True)
    except PredictorLoadError as error:
        return str(error)
    return None


@pytest.mark.parametrize(("signature", "verdict"), [
    ("self", None),
    ("self, batch_metrics", None),
    ("self, batch_metrics=None", None),
    ("self, metrics", 'on_job_complete() argument "metrics" is not a supported argument; supported: batch_metrics'),
    ("self, batch_metrics, job_spec",
     'on_job_complete() argument "job_spec" is not a supported argument; supported: batch_metrics'),
    ("self, batch_metrics, /", 'on_job_complete() argument "batch_metrics" is positional-only (declared before '
                               "'/'), but arguments are passed by name; remove the '/'"),
])
def test_on_job_complete_may_declare_only_batch_metrics(tmp_path, signature, verdict):
    methods = methods_of(tmp_path, f"""
        class PythonPredictor:
            def __init__(self, config, job_spec):
                pass

            def predict(self, payload, batch_id):
                pass

            def on_job_complete({signature}):
                pass
        """)
    assert "on_job_complete" in methods
    assert batch_verdict(methods) == (verdict and f"predictor.py: PythonPredictor: {verdict}")
    check_class(methods, PYTHON, False, "predictor.py: PythonPredictor")  # a RealtimeAPI's class: never called


@pytest.mark.parametrize(("init", "predict", "verdict"), [
    ("self, config", "self, payload, batch_id, headers, query_params", None),
    ("self, config, job_spec=None", "self", None),
    ("self, job_spec", "self, payload", '__init__() argument "config" is required, but was not declared'),
    ("self, config, spec", "self, payload", '__init__() argument "spec" is not a supported argument; supported: '
                                            "config, job_spec, python_client"),
    ("self, config", "self, items", 'predict() argument "items" is not a supported argument; supported: batch_id, '
                                    "headers, payload, query_params"),
])
def test_a_batch_predictors_init_and_predict_follow_cortexs_rules(tmp_path, init, predict, verdict):
    methods = methods_of(tmp_path, f"""
        class PythonPredictor:
            def __init__({init}):
                pass

            def predict({predict}):
                pass
        """)
    assert batch_verdict(methods) == (verdict and f"predictor.py: PythonPredictor: {verdict}")


def test_a_batch_python_predictor_with_models_needs_load_model_and_gets_its_client(tmp_path):
    methods = methods_of(tmp_path, BATCH_PYTHON_MODELS)
    assert batch_verdict(methods, has_models=True) is None
    del methods["load_model"]
    assert batch_verdict(methods, has_models=True) == \
        "predictor.py: PythonPredictor: load_model(self, model_path) must be defined when models are configured " \
        "(predictor.model_path or predictor.models)"


def test_load_class_checks_a_batch_apis_class_as_a_batch_one(tmp_path, isolated):
    source = BATCH_PYTHON.replace("on_job_complete(self, batch_metrics)", "on_job_complete(self, batch_metrics, x)")
    root = write_tree(tmp_path, {"cortex.yaml": batch_yaml("batch"), "predictor.py": source})
    config = read_config(root / "cortex.yaml")
    (batch,) = config.batch_apis
    with pytest.raises(PredictorLoadError, match='on_job_complete\\(\\) argument "x" is not a supported argument'):
        load_class(root, batch, PYTHON)
    realtime = Api.model_validate({**batch.model_dump(exclude_defaults=True), "kind": "RealtimeAPI"})
    cls, methods = load_class(root, realtime, PYTHON)
    assert cls.__name__ == "PythonPredictor" and methods["on_job_complete"].args == ("batch_metrics", "x")


# --- engine validate ----------------------------------------------------------------------------------------------

def test_engine_validate_says_each_batch_api(tmp_path, isolated, capsys):
    root = two_kinds(tmp_path)
    assert main(["validate", str(root), "--cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3:] == ["ok: api 'realtime' (python predictor, realtime.py) at /realtime",
                        "ok: api 'batch' (BatchAPI, python predictor, predictor.py) at /batch",
                        "ok: api 'other' (BatchAPI, python predictor, other.py) at /other"]


def test_engine_validate_imports_each_batch_predictor(tmp_path, isolated, capsys):
    root = write_tree(tmp_path, {"cortex.yaml": batch_yaml("batch"),
                                 "predictor.py": "import no_such_module_here\n\n" + BATCH_PYTHON})
    assert main(["validate", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {root / 'cortex.yaml'}: api 'batch': error in predictor.py while importing it to "
                          "load PythonPredictor: ModuleNotFoundError: No module named 'no_such_module_here'"), err
