"""Predictor loading as Cortex did it: finding the class, checking signatures by name, calling with declared args."""
from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from engine_python_predictor import PYTHON

from engine.errors import PredictorLoadError
from engine.project.predictor_class import (
    Signature,
    check_class,
    import_class,
    runtime_methods,
    static_methods,
)
from engine.serving.predictor import Predictor
from engine.types import PredictorType

ONNX = PredictorType(name="onnx", class_name="ONNXPredictor", client_arg="onnx_client", requires_models=True)
# A third-party type whose plugin decides at start whether there is a client.
ECHO = PredictorType(name="echo", class_name="EchoPredictor", client_arg="echo_client")


@pytest.fixture(autouse=True)
def clean_modules(monkeypatch):
    """Forget the predictor modules a test imports, and restore sys.path."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write(directory: Path, source: str, name: str = "predictor.py") -> Path:
    """Write dedented source to directory/name and return its path."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def load(path: Path, class_name: str = "PythonPredictor") -> type:
    """Import the class under a fresh module name."""
    return import_class(path, class_name, f"engine_predictor_test_{uuid.uuid4().hex}")


def static_verdict(path: Path, ptype: PredictorType, has_models: bool) -> str | None:
    """None when the static checks pass, else the error text."""
    try:
        methods = static_methods(path, ptype.class_name)
        assert methods is not None, "the static check should be able to decide this source"
        check_class(methods, ptype, has_models, f"predictor.py: {ptype.class_name}")
    except PredictorLoadError as error:
        return str(error)
    return None


def runtime_verdict(path: Path, ptype: PredictorType, has_models: bool) -> str | None:
    """None when the import-time checks pass, else the error text."""
    try:
        check_class(runtime_methods(load(path, ptype.class_name)), ptype, has_models,
                    f"predictor.py: {ptype.class_name}")
    except PredictorLoadError as error:
        return str(error)
    return None


# --- finding the class ----------------------------------------------------------------------------------------


def test_class_is_found_by_exact_name(tmp_path):
    path = write(tmp_path, """
        class Helper:
            pass

        class PythonPredictor:
            def __init__(self, config):
                self.config = config

            def predict(self, payload):
                return payload
    """)
    assert static_methods(path, "PythonPredictor")["predict"] == Signature(("payload",), frozenset())
    cls = load(path)
    assert cls.__name__ == "PythonPredictor" and cls.predict(None, 5) == 5


@pytest.mark.parametrize("source", [
    "class pythonPredictor:\n    def predict(self): pass\n",
    "class PythonPredictorV2:\n    def predict(self): pass\n",
    "class Predictor:\n    def predict(self): pass\n",
    "",
])
def test_missing_class_names_the_file_and_class(tmp_path, source):
    path = write(tmp_path, source)
    with pytest.raises(PredictorLoadError, match=r"PythonPredictor class is not defined in predictor\.py"):
        static_methods(path, "PythonPredictor")
    with pytest.raises(PredictorLoadError, match=r"PythonPredictor class is not defined in predictor\.py"):
        load(path)


def test_a_name_that_is_not_a_class_is_not_the_predictor(tmp_path):
    path = write(tmp_path, "def PythonPredictor(config):\n    return None\n")
    with pytest.raises(PredictorLoadError, match="PythonPredictor class is not defined in predictor.py"):
        static_methods(path, "PythonPredictor")
    with pytest.raises(PredictorLoadError, match="PythonPredictor class is not defined in predictor.py"):
        load(path)


@pytest.mark.parametrize("mention", ["# PythonPredictor is below", '"""no PythonPredictor here"""',
                                     "NAME = 'PythonPredictor'", "print(PythonPredictor)"])
def test_a_mention_that_binds_nothing_is_not_a_definition(tmp_path, mention):
    path = write(tmp_path, f"{mention}\nclass Predictor:\n    def predict(self): pass\n")
    with pytest.raises(PredictorLoadError, match="PythonPredictor class is not defined in predictor.py"):
        static_methods(path, "PythonPredictor")


@pytest.mark.parametrize("binding", ["from elsewhere import PythonPredictor", "from elsewhere import *",
                                     "import PythonPredictor", "PythonPredictor = make()",
                                     "try:\n    class PythonPredictor: pass\nexcept ImportError: pass",
                                     "globals()['PythonPredictor'] = type('P', (), {})"])
def test_a_statement_that_may_bind_the_name_leaves_it_to_the_import(tmp_path, binding):
    path = write(tmp_path, binding + "\n")
    assert static_methods(path, "PythonPredictor") is None


def test_two_definitions_are_an_error(tmp_path):
    path = write(tmp_path, """
        class PythonPredictor:
            def __init__(self, config): pass
            def predict(self): pass

        class PythonPredictor:
            def __init__(self, config): pass
            def predict(self, payload): pass
    """)
    with pytest.raises(PredictorLoadError, match=r"multiple definitions for PythonPredictor class found in "
                                                 r"predictor\.py \(lines 2, 6\)"):
        static_methods(path, "PythonPredictor")


def test_other_type_class_name_is_looked_up(tmp_path):
    path = write(tmp_path, """
        class PythonPredictor:
            pass

        class ONNXPredictor:
            def __init__(self, onnx_client, config): pass
            def predict(self, payload): pass
    """)
    assert set(static_methods(path, "ONNXPredictor")) == {"__init__", "predict"}
    assert load(path, "ONNXPredictor").__name__ == "ONNXPredictor"


def test_syntax_error_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "import os\n\nclass PythonPredictor:\n    def predict(self:\n        pass\n")
    with pytest.raises(PredictorLoadError, match=r"error in predictor\.py: .*\(line 4\)"):
        static_methods(path, "PythonPredictor")
    with pytest.raises(PredictorLoadError, match=r"predictor\.py.*SyntaxError"):
        load(path)


def test_import_error_names_the_file_and_carries_the_traceback(tmp_path):
    path = write(tmp_path, """
        import json

        def explode():
            raise RuntimeError("boom at import time")

        VALUES = explode()

        class PythonPredictor:
            def __init__(self, config): pass
            def predict(self): pass
    """)
    assert static_methods(path, "PythonPredictor") is not None  # the source itself is fine
    with pytest.raises(PredictorLoadError) as caught:
        load(path)
    message = str(caught.value)
    assert "error in predictor.py" in message and "PythonPredictor" in message
    assert "RuntimeError: boom at import time" in message
    assert "Traceback (most recent call last)" in message
    assert str(path) in message and "in explode" in message and 'raise RuntimeError("boom at import time")' in message
    assert "engine/project/predictor_class.py" not in message and "<frozen importlib" not in message


def test_missing_dependency_at_import_is_a_load_error(tmp_path):
    path = write(tmp_path, "import a_module_that_is_not_installed_anywhere\n\nclass PythonPredictor:\n    pass\n")
    with pytest.raises(PredictorLoadError, match="ModuleNotFoundError: No module named "
                                                 "'a_module_that_is_not_installed_anywhere'"):
        load(path)


def test_sys_exit_at_import_is_a_load_error(tmp_path):
    path = write(tmp_path, "import sys\nsys.exit(3)\n")
    with pytest.raises(PredictorLoadError, match="error in predictor.py .*SystemExit: 3"):
        load(path)


def test_failed_import_leaves_no_module_behind(tmp_path):
    path = write(tmp_path, "raise ValueError('no')\n")
    with pytest.raises(PredictorLoadError):
        import_class(path, "PythonPredictor", "engine_predictor_failed_import")
    assert "engine_predictor_failed_import" not in sys.modules


def test_imported_module_is_registered_under_its_name(tmp_path):
    path = write(tmp_path, "class PythonPredictor:\n    pass\n")
    cls = import_class(path, "PythonPredictor", "engine_predictor_registered")
    assert sys.modules["engine_predictor_registered"].PythonPredictor is cls
    assert cls.__module__ == "engine_predictor_registered"


def test_a_file_without_py_suffix_loads_as_cortex_did(tmp_path):
    path = write(tmp_path, "class PythonPredictor:\n    def predict(self): return 1\n", name="predictor")
    assert load(path)().predict() == 1


def test_class_imported_from_another_module_is_resolved_at_import(tmp_path):
    write(tmp_path, """
        class PythonPredictor:
            def __init__(self, config): pass
            def predict(self, payload, headers): pass
    """, name="implementation.py")
    path = write(tmp_path, "from implementation import PythonPredictor\n")
    sys.path.insert(0, str(tmp_path))
    assert static_methods(path, "PythonPredictor") is None
    assert runtime_methods(load(path))["predict"].args == ("payload", "headers")
    assert runtime_verdict(path, PYTHON, has_models=False) is None


def test_inherited_methods_are_resolved_at_import(tmp_path):
    path = write(tmp_path, """
        class Base:
            def __init__(self, config):
                self.config = config

            def predict(self, payload, bogus):
                pass

        class PythonPredictor(Base):
            def post_predict(self, response):
                pass
    """)
    assert static_methods(path, "PythonPredictor") is None
    methods = runtime_methods(load(path))
    assert set(methods) == {"__init__", "predict", "post_predict"}
    assert '"bogus" is not a supported argument' in runtime_verdict(path, PYTHON, has_models=False)


def test_explicit_object_base_is_still_checked_statically(tmp_path):
    path = write(tmp_path, "class PythonPredictor(object):\n    def __init__(self, config): pass\n"
                           "    def predict(self, payload): pass\n")
    assert static_methods(path, "PythonPredictor") is not None


@pytest.mark.parametrize("source", [
    # a class decorator may write __init__ (dataclass) or replace the class
    "import dataclasses\n@dataclasses.dataclass\nclass PythonPredictor:\n    config: dict\n"
    "    def predict(self): pass\n",
    # a metaclass may add methods
    "class Meta(type):\n    pass\nclass PythonPredictor(metaclass=Meta):\n"
    "    def __init__(self, config): pass\n    def predict(self): pass\n",
    # methods assigned, not defined with def
    "def _predict(self, payload): return payload\nclass PythonPredictor:\n"
    "    def __init__(self, config): pass\n    predict = _predict\n",
    # methods defined under a condition
    "import os\nclass PythonPredictor:\n    def __init__(self, config): pass\n"
    "    if os.name:\n        def predict(self, payload): pass\n",
    # a decorated checked method
    "import functools\nclass PythonPredictor:\n    def __init__(self, config): pass\n"
    "    @functools.lru_cache\n    def predict(self, payload): pass\n",
])
def test_classes_the_source_cannot_describe_are_left_to_the_import(tmp_path, source):
    path = write(tmp_path, source)
    assert static_methods(path, "PythonPredictor") is None
    assert runtime_verdict(path, PYTHON, has_models=False) is None


def test_helper_attributes_and_decorated_helpers_keep_the_static_check(tmp_path):
    path = write(tmp_path, """
        class PythonPredictor:
            \"\"\"A docstring.\"\"\"
            labels = ["a", "b"]
            threshold: float = 0.5

            def __init__(self, config): pass

            @staticmethod
            def helper(x, y): return x

            @property
            def size(self): return 1

            def predict(self, payload): pass
    """)
    assert static_methods(path, "PythonPredictor")["predict"].args == ("payload",)


def test_source_encoding_declaration_is_honoured(tmp_path):
    path = tmp_path / "predictor.py"
    path.write_bytes("# -*- coding: latin-1 -*-\nNAME = 'caf\xe9'\nclass PythonPredictor:\n"
                     "    def __init__(self, config): pass\n    def predict(self): return NAME\n".encode("latin-1"))
    assert set(static_methods(path, "PythonPredictor")) == {"__init__", "predict"}
    assert load(path)(config={}).predict() == "caf\xe9"


def test_undecodable_source_is_a_load_error(tmp_path):
    path = tmp_path / "predictor.py"
    path.write_bytes(b"X = '\xff\xfe'\nclass PythonPredictor:\n    pass\n")
    with pytest.raises(PredictorLoadError, match="error in predictor.py"):
        static_methods(path, "PythonPredictor")


# --- signatures, static and at import: the same verdicts -------------------------------------------------------

OK = None
INIT = "    def __init__(self, config):\n        pass\n"
PREDICT = "    def predict(self):\n        pass\n"

SIGNATURE_CASES = [
    # (id, type, has_models, class body, None or a text the error must contain)
    ("minimal", PYTHON, False, INIT + PREDICT, OK),
    ("all-arguments", PYTHON, False,
     "    def __init__(self, config, job_spec, python_client=None): pass\n"
     "    def predict(self, payload, query_params, headers, batch_id): pass\n"
     "    def post_predict(self, response, payload, query_params, headers): pass\n", OK),
    ("any-order", PYTHON, False,
     "    def __init__(self, job_spec, config): pass\n    def predict(self, headers, payload): pass\n"
     "    def post_predict(self, headers, response): pass\n", OK),
    ("no-init", PYTHON, False, PREDICT, '__init__() argument "config" is required'),
    ("config-missing", PYTHON, False, "    def __init__(self): pass\n" + PREDICT,
     '__init__() argument "config" is required'),
    ("init-unknown", PYTHON, False, "    def __init__(self, config, cfg): pass\n" + PREDICT,
     '__init__() argument "cfg" is not a supported argument'),
    ("init-renamed-config", PYTHON, False, "    def __init__(self, configuration): pass\n" + PREDICT,
     '"configuration" is not a supported argument'),
    ("predict-missing", PYTHON, False, INIT, "predict() is not defined"),
    ("predict-unknown", PYTHON, False, INIT + "    def predict(self, payload, body): pass\n",
     'predict() argument "body" is not a supported argument'),
    ("predict-response", PYTHON, False, INIT + "    def predict(self, response): pass\n",
     'predict() argument "response" is not a supported argument'),
    ("post-predict-unknown", PYTHON, False, INIT + PREDICT + "    def post_predict(self, response, result): pass\n",
     'post_predict() argument "result" is not a supported argument'),
    ("post-predict-batch-id", PYTHON, False, INIT + PREDICT + "    def post_predict(self, batch_id): pass\n",
     'post_predict() argument "batch_id" is not a supported argument'),
    ("post-predict-none", PYTHON, False, INIT + PREDICT + "    def post_predict(self): pass\n", OK),
    ("varargs-ignored", PYTHON, False,
     "    def __init__(self, config, *args, **kwargs): pass\n    def predict(self, *args, **kwargs): pass\n", OK),
    ("keyword-only-ok", PYTHON, False,
     "    def __init__(self, *, config): pass\n    def predict(self, *, payload, headers=None): pass\n", OK),
    ("keyword-only-unknown", PYTHON, False, INIT + "    def predict(self, payload, *, bogus=None): pass\n",
     'predict() argument "bogus" is not a supported argument'),
    ("keyword-only-init-unknown", PYTHON, False, "    def __init__(self, *, cfg): pass\n" + PREDICT,
     '"cfg" is not a supported argument'),
    ("positional-only", PYTHON, False, INIT + "    def predict(self, payload, /): pass\n",
     'predict() argument "payload" is positional-only'),
    ("client-without-models-no-default", PYTHON, False, "    def __init__(self, config, python_client): pass\n"
     + PREDICT, "declares python_client, which is only given when predictor.model_path or predictor.models"),
    ("client-without-models-keyword-only", PYTHON, False,
     "    def __init__(self, config, *, python_client): pass\n" + PREDICT, "give it a default"),
    ("client-without-models-default", PYTHON, False,
     "    def __init__(self, config, python_client=None): pass\n" + PREDICT, OK),
    ("models-ok", PYTHON, True, "    def __init__(self, config, python_client): pass\n" + PREDICT
     + "    def load_model(self, model_path): pass\n", OK),
    ("models-client-missing", PYTHON, True, INIT + PREDICT + "    def load_model(self, model_path): pass\n",
     '__init__() argument "python_client" is required'),
    ("models-load-model-missing", PYTHON, True, "    def __init__(self, config, python_client): pass\n" + PREDICT,
     "load_model(self, model_path) must be defined"),
    ("models-load-model-no-path", PYTHON, True, "    def __init__(self, config, python_client): pass\n" + PREDICT
     + "    def load_model(self): pass\n", 'load_model() argument "model_path" is required'),
    ("models-load-model-unknown", PYTHON, True, "    def __init__(self, config, python_client): pass\n" + PREDICT
     + "    def load_model(self, model_path, device): pass\n", 'load_model() argument "device" is not a supported'),
    ("load-model-checked-without-models", PYTHON, False, INIT + PREDICT + "    def load_model(self, path): pass\n",
     'load_model() argument "path" is not a supported argument'),
    ("onnx-ok", ONNX, True, "    def __init__(self, onnx_client, config): pass\n" + PREDICT, OK),
    ("onnx-client-missing", ONNX, True, INIT + PREDICT, '__init__() argument "onnx_client" is required'),
    ("onnx-client-required-by-type", ONNX, False, INIT + PREDICT, '__init__() argument "onnx_client" is required'),
    ("onnx-client-given-by-type", ONNX, False, "    def __init__(self, config, onnx_client): pass\n" + PREDICT, OK),
    ("onnx-python-client", ONNX, True, "    def __init__(self, config, onnx_client, python_client): pass\n" + PREDICT,
     '__init__() argument "python_client" is not a supported argument'),
    ("onnx-helper-load-model", ONNX, True, "    def __init__(self, config, onnx_client): pass\n" + PREDICT
     + "    def load_model(self, a, b): pass\n", OK),
    ("third-party-client-no-models", ECHO, False, "    def __init__(self, echo_client, config): pass\n" + PREDICT,
     OK),
    ("third-party-wrong-client", ECHO, False, "    def __init__(self, config, python_client=None): pass\n" + PREDICT,
     '__init__() argument "python_client" is not a supported argument'),
    ("onnx-job-spec", ONNX, True, "    def __init__(self, config, onnx_client, job_spec=None): pass\n" + PREDICT, OK),
]


@pytest.mark.parametrize("ptype, has_models, body, expected",
                         [case[1:] for case in SIGNATURE_CASES], ids=[case[0] for case in SIGNATURE_CASES])
def test_signature_rules_static_and_runtime_agree(tmp_path, ptype, has_models, body, expected):
    path = write(tmp_path, f"class {ptype.class_name}:\n{body}")
    static, runtime = static_verdict(path, ptype, has_models), runtime_verdict(path, ptype, has_models)
    if expected is None:
        assert static is None and runtime is None
    else:
        assert static is not None and expected in static
        assert runtime == static


def test_signature_errors_name_where(tmp_path):
    path = write(tmp_path, f"class PythonPredictor:\n{INIT}    def predict(self, body): pass\n")
    with pytest.raises(PredictorLoadError, match=r"^src/predictor\.py: PythonPredictor: predict\(\) argument "
                                                 r"\"body\" is not a supported argument; supported: batch_id, "
                                                 r"headers, payload, query_params$"):
        check_class(static_methods(path, "PythonPredictor"), PYTHON, False, "src/predictor.py: PythonPredictor")


def test_static_and_runtime_signatures_are_equal(tmp_path):
    path = write(tmp_path, """
        class PythonPredictor:
            def __init__(self, config, job_spec=None, *, python_client=None): pass
            def predict(self, payload, headers=None, *rest, query_params, **more): pass
            def post_predict(self, response, payload=1): pass
            def load_model(self, model_path): pass
    """)
    assert static_methods(path, "PythonPredictor") == runtime_methods(load(path)) == {
        "__init__": Signature(("config", "job_spec", "python_client"), frozenset({"job_spec", "python_client"})),
        "predict": Signature(("payload", "headers", "query_params"), frozenset({"headers"})),
        "post_predict": Signature(("response", "payload"), frozenset({"payload"})),
        "load_model": Signature(("model_path",), frozenset()),
    }


def test_runtime_signature_of_static_and_class_methods_has_no_self(tmp_path):
    path = write(tmp_path, """
        class PythonPredictor:
            def __init__(self, config): pass

            @staticmethod
            def predict(payload, headers):
                return payload

            @classmethod
            def post_predict(cls, response):
                pass
    """)
    methods = runtime_methods(load(path))
    assert methods["predict"].args == ("payload", "headers")
    assert methods["post_predict"].args == ("response",)


def test_a_predict_that_is_not_callable_is_a_load_error(tmp_path):
    path = write(tmp_path, f"class PythonPredictor:\n{INIT}    predict = 3\n")
    with pytest.raises(PredictorLoadError, match="PythonPredictor.predict is not a method"):
        runtime_methods(load(path))


def test_runtime_methods_skip_the_default_init():
    class PythonPredictor:
        def predict(self):
            pass

    assert set(runtime_methods(PythonPredictor)) == {"predict"}


# --- calling with declared arguments --------------------------------------------------------------------------


def construct(cls: type, config: dict | None = None, client: object = None, client_arg: str = "python_client"):
    """Build a Predictor the way the runtime does."""
    return Predictor.construct(cls, runtime_methods(cls), config if config is not None else {}, client_arg, client)


REQUEST = {"payload": {"x": 1}, "query_params": {"q": "1"}, "headers": {"h": "v"}}


def test_init_gets_only_config_when_it_declares_only_config():
    class PythonPredictor:
        def __init__(self, config):
            self.config = config

        def predict(self):
            return "ok"

    predictor = construct(PythonPredictor, {"k": "v"}, client=object())
    assert predictor.instance.config == {"k": "v"}


def test_config_is_a_deep_copy():
    original = {"nested": {"values": [1, 2]}, "name": "x"}

    class PythonPredictor:
        def __init__(self, config):
            config["nested"]["values"].append(3)
            config["added"] = True
            self.config = config

        def predict(self):
            pass

    predictor = construct(PythonPredictor, original)
    assert original == {"nested": {"values": [1, 2]}, "name": "x"}
    assert predictor.instance.config["nested"]["values"] == [1, 2, 3]


def test_job_spec_is_none_and_the_client_is_passed_by_name():
    client = object()

    class ONNXPredictor:
        def __init__(self, onnx_client, config, job_spec):
            self.seen = (onnx_client, config, job_spec)

        def predict(self):
            pass

    predictor = construct(ONNXPredictor, {"a": 1}, client=client, client_arg="onnx_client")
    assert predictor.instance.seen == (client, {"a": 1}, None)


def test_client_default_is_kept_when_there_is_no_client():
    class PythonPredictor:
        def __init__(self, config, python_client="default"):
            self.client = python_client

        def predict(self):
            pass

    assert construct(PythonPredictor).instance.client == "default"


def test_client_without_default_and_no_client_is_a_clear_error():
    class EchoPredictor:
        def __init__(self, echo_client, config):
            self.client = echo_client

        def predict(self):
            pass

    with pytest.raises(PredictorLoadError, match="EchoPredictor.__init__ declares echo_client, but no echo_client "
                                                 "is created for this API"):
        construct(EchoPredictor, client_arg="echo_client")
    client = object()
    assert construct(EchoPredictor, client=client, client_arg="echo_client").instance.client is client


def test_keyword_only_init_arguments_are_passed():
    class PythonPredictor:
        def __init__(self, *, config, python_client=None):
            self.seen = (config, python_client)

        def predict(self):
            pass

    client = object()
    assert construct(PythonPredictor, {"a": 1}, client=client).instance.seen == ({"a": 1}, client)


def test_init_exception_propagates_unchanged():
    class PythonPredictor:
        def __init__(self, config):
            raise KeyError("missing setting")

        def predict(self):
            pass

    with pytest.raises(KeyError, match="missing setting"):
        construct(PythonPredictor)


def test_predict_without_arguments_gets_none_of_them():
    class PythonPredictor:
        def __init__(self, config):
            pass

        def predict(self):
            return "no args"

    predictor = construct(PythonPredictor)
    assert predictor.predict(REQUEST) == "no args"
    assert not (predictor.wants_payload or predictor.wants_query_params or predictor.wants_headers)
    assert predictor.post_predict_args is None


def test_predict_gets_declared_arguments_by_name_in_any_order():
    class PythonPredictor:
        def __init__(self, config):
            pass

        def predict(self, headers, payload):
            return headers, payload

    predictor = construct(PythonPredictor)
    assert predictor.predict(REQUEST) == ({"h": "v"}, {"x": 1})
    assert predictor.wants_payload and predictor.wants_headers and not predictor.wants_query_params


def test_predict_with_payload_only():
    class PythonPredictor:
        def __init__(self, config):
            pass

        def predict(self, payload):
            return payload

    assert construct(PythonPredictor).predict(REQUEST) == {"x": 1}


def test_predict_batch_id_is_none_and_query_params_passed():
    class PythonPredictor:
        def __init__(self, config):
            pass

        def predict(self, batch_id, query_params):
            return batch_id, query_params

    assert construct(PythonPredictor).predict(REQUEST) == (None, {"q": "1"})


def test_predict_as_static_method_is_called_with_its_arguments():
    class PythonPredictor:
        def __init__(self, config):
            pass

        @staticmethod
        def predict(payload):
            return payload

    assert construct(PythonPredictor).predict(REQUEST) == {"x": 1}


def test_post_predict_gets_response_and_declared_arguments():
    seen = []

    class PythonPredictor:
        def __init__(self, config):
            pass

        def predict(self):
            return "result"

        def post_predict(self, query_params, response):
            seen.append((response, query_params))

    predictor = construct(PythonPredictor)
    assert predictor.post_predict_args == ("query_params", "response")
    assert predictor.wants_query_params and not predictor.wants_payload
    predictor.post_predict("result", REQUEST)
    assert seen == [("result", {"q": "1"})]


def test_post_predict_with_response_only():
    seen = []

    class PythonPredictor:
        def __init__(self, config):
            pass

        def predict(self, payload):
            return payload

        def post_predict(self, response):
            seen.append(response)

    construct(PythonPredictor).post_predict({"y": 2}, REQUEST)
    assert seen == [{"y": 2}]


def test_post_predict_arguments_count_for_what_the_request_must_parse():
    class PythonPredictor:
        def __init__(self, config):
            pass

        def predict(self):
            pass

        def post_predict(self, payload, headers):
            pass

    predictor = construct(PythonPredictor)
    assert predictor.wants_payload and predictor.wants_headers and not predictor.wants_query_params
