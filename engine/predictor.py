"""The user's predictor class: found and signature-checked as Cortex did, then called with only declared arguments."""
from __future__ import annotations

import ast
import copy
import importlib.util
import inspect
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import PredictorLoadError
from engine.types import PredictorType

PREDICT_ARGS = frozenset({"payload", "query_params", "headers", "batch_id"})
POST_PREDICT_ARGS = frozenset({"response", "payload", "query_params", "headers"})


@dataclass(frozen=True)
class Signature:
    """The argument names a method declares (without self) and which of them have defaults."""

    args: tuple[str, ...]
    with_defaults: frozenset[str]


def check_class(methods: dict[str, Signature], ptype: PredictorType, has_models: bool, where: str) -> None:
    """Cortex's signature rules by argument name; raise PredictorLoadError naming the argument."""
    init = methods.get("__init__", Signature((), frozenset()))
    required = {"config"} | ({ptype.client_arg} if has_models or ptype.requires_models else set())
    _check_args(init, "__init__", allowed=required | {ptype.client_arg, "job_spec"}, required=required, where=where)
    if not has_models and ptype.client_arg in init.args and ptype.client_arg not in init.with_defaults:
        raise PredictorLoadError(f"{where}: __init__ declares {ptype.client_arg}, which is only given when "
                                 "predictor.model_path or predictor.models is configured; give it a default or "
                                 "remove it")
    if "predict" not in methods:
        raise PredictorLoadError(f"{where}: predict() is not defined; it is required")
    _check_args(methods["predict"], "predict", allowed=PREDICT_ARGS, required=set(), where=where)
    if "post_predict" in methods:
        _check_args(methods["post_predict"], "post_predict", allowed=POST_PREDICT_ARGS, required=set(), where=where)
    if has_models and ptype.user_loads_models:
        if "load_model" not in methods:
            raise PredictorLoadError(f"{where}: load_model(self, model_path) must be defined when models are "
                                     "configured (predictor.model_path or predictor.models)")
        _check_args(methods["load_model"], "load_model", allowed={"model_path"}, required={"model_path"}, where=where)


def _check_args(signature: Signature, method: str, allowed: set[str] | frozenset[str], required: set[str],
                where: str) -> None:
    for name in signature.args:
        if name not in allowed:
            raise PredictorLoadError(f"{where}: {method}() argument \"{name}\" is not a supported argument; "
                                     f"supported: {', '.join(sorted(allowed))}")
    for name in sorted(required):
        if name not in signature.args:
            raise PredictorLoadError(f"{where}: {method}() argument \"{name}\" is required, but was not declared")


def static_methods(source_file: Path, class_name: str) -> dict[str, Signature] | None:
    """Read the class's method signatures from source without importing it; None when only an import can tell."""
    where = f"{source_file.name}"
    try:
        tree = ast.parse(source_file.read_text(), filename=str(source_file))
    except SyntaxError as error:
        raise PredictorLoadError(f"error in {where}: {error.msg} (line {error.lineno})") from None
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name]
    if len(classes) > 1:
        raise PredictorLoadError(f"multiple definitions for {class_name} class found in {where} "
                                 f"(lines {', '.join(str(c.lineno) for c in classes)})")
    if not classes:
        if re.search(rf"\b{re.escape(class_name)}\b", source_file.read_text()):
            return None  # imported or assigned: only importing the module can tell
        raise PredictorLoadError(f"{class_name} class is not defined in {where}")
    cls = classes[0]
    methods = {node.name: _ast_signature(node) for node in cls.body
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    inherits = any(not (isinstance(base, ast.Name) and base.id == "object") for base in cls.bases)
    return None if inherits else methods


def _ast_signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> Signature:
    positional = [arg.arg for arg in node.args.posonlyargs + node.args.args][1:]  # drop self
    defaults = positional[len(positional) - len(node.args.defaults):] if node.args.defaults else []
    keyword = [arg.arg for arg in node.args.kwonlyargs]
    keyword_defaults = [arg.arg for arg, default in zip(node.args.kwonlyargs, node.args.kw_defaults) if default]
    return Signature(tuple(positional + keyword), frozenset(defaults + keyword_defaults))


def runtime_methods(cls: type) -> dict[str, Signature]:
    """The signatures of the class's methods, inherited ones included."""
    methods = {}
    for name in ("__init__", "predict", "post_predict", "load_model"):
        method = getattr(cls, name, None)
        if method is None or (name == "__init__" and method is object.__init__):
            continue
        params = list(inspect.signature(method).parameters.values())[1:]
        named = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        methods[name] = Signature(tuple(p.name for p in named),
                                  frozenset(p.name for p in named if p.default is not p.empty))
    return methods


def import_class(source_file: Path, class_name: str, module_name: str) -> type:
    """Import the predictor module and return its class; import errors name the file and carry the traceback."""
    spec = importlib.util.spec_from_file_location(module_name, source_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        details = "".join(traceback.format_exception(error)[1:])
        raise PredictorLoadError(f"error in {source_file.name} while importing it to load {class_name}: "
                                 f"{type(error).__name__}: {error}\n{details}") from None
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls):
        raise PredictorLoadError(f"{class_name} class is not defined in {source_file.name}")
    return cls


class Predictor:
    """A constructed predictor and the argument names its methods take."""

    def __init__(self, instance: Any, methods: dict[str, Signature]) -> None:
        self.instance = instance
        self.predict_args = methods["predict"].args
        self.post_predict_args = methods["post_predict"].args if "post_predict" in methods else None
        wanted = set(self.predict_args) | set(self.post_predict_args or ())
        self.wants_payload = "payload" in wanted
        self.wants_query_params = "query_params" in wanted
        self.wants_headers = "headers" in wanted

    @classmethod
    def construct(cls, predictor_class: type, methods: dict[str, Signature], config: dict[str, Any],
                  client_arg: str, client: Any) -> Predictor:
        """Run the user's __init__ with the declared arguments (config is a deep copy)."""
        declared = methods.get("__init__", Signature((), frozenset())).args
        offered = {"config": copy.deepcopy(config), "job_spec": None}
        if client is not None:
            offered[client_arg] = client
        instance = predictor_class(**{name: offered[name] for name in declared if name in offered})
        return cls(instance, methods)

    def predict(self, arguments: dict[str, Any]) -> Any:
        """Call predict() with the arguments it declared."""
        return self.instance.predict(**{name: arguments.get(name) for name in self.predict_args})

    def post_predict(self, response: Any, arguments: dict[str, Any]) -> None:
        """Call post_predict() with the arguments it declared."""
        offered = {**arguments, "response": response}
        self.instance.post_predict(**{name: offered.get(name) for name in self.post_predict_args})
