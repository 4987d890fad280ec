"""The user's predictor class: found, imported and signature-checked as Cortex did (before any request)."""
from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import tracebacks
from engine.errors import PredictorLoadError
from engine.project.batch import BatchApi
from engine.types import PredictorType

if TYPE_CHECKING:
    from engine.project.config import Api

PREDICT_ARGS = frozenset({"payload", "query_params", "headers", "batch_id"})
POST_PREDICT_ARGS = frozenset({"response", "payload", "query_params", "headers"})
# Cortex passed on_job_complete only self; engine also passes the job's {"succeeded", "failed",
# "average_time_per_batch"} when the method declares batch_metrics
ON_JOB_COMPLETE_ARGS = frozenset({"batch_metrics"})
CHECKED_METHODS = ("__init__", "predict", "post_predict", "load_model", "on_job_complete")


@dataclass(frozen=True)
class Signature:
    """The argument names a method declares (without self) and which of them have defaults."""

    args: tuple[str, ...]
    with_defaults: frozenset[str]
    positional_only: frozenset[str] = frozenset()


def check_class(methods: dict[str, Signature], ptype: PredictorType, has_models: bool, where: str, *,
                batch: bool = False) -> None:
    """Cortex's signature rules by argument name (a BatchAPI's class with `batch`); raise PredictorLoadError naming
    the argument."""
    init = methods.get("__init__", Signature((), frozenset()))
    gets_client = has_models or ptype.requires_models
    required = {"config"} | ({ptype.client_arg} if gets_client else set())
    _check_args(init, "__init__", allowed=required | {ptype.client_arg, "job_spec"}, required=required, where=where)
    # Cortex gave python_client only with models; other types' plugins decide at start (see Predictor.construct).
    no_client = not gets_client and ptype.user_loads_models
    if no_client and ptype.client_arg in init.args and ptype.client_arg not in init.with_defaults:
        raise PredictorLoadError(f"{where}: __init__ declares {ptype.client_arg}, which is only given when "
                                 "predictor.model_path or predictor.models is configured; give it a default or "
                                 "remove it")
    if "predict" not in methods:
        raise PredictorLoadError(f"{where}: predict() is not defined; it is required")
    _check_args(methods["predict"], "predict", allowed=PREDICT_ARGS, required=set(), where=where)
    if "post_predict" in methods:
        _check_args(methods["post_predict"], "post_predict", allowed=POST_PREDICT_ARGS, required=set(), where=where)
    if batch and "on_job_complete" in methods:
        _check_args(methods["on_job_complete"], "on_job_complete", allowed=ON_JOB_COMPLETE_ARGS, required=set(),
                    where=where)
    if ptype.user_loads_models:
        _check_load_model(methods, has_models, where)


def _check_load_model(methods: dict[str, Signature], has_models: bool, where: str) -> None:
    """load_model(self, model_path): required when models are configured, checked whenever it is defined."""
    if has_models and "load_model" not in methods:
        raise PredictorLoadError(f"{where}: load_model(self, model_path) must be defined when models are "
                                 "configured (predictor.model_path or predictor.models)")
    if "load_model" in methods:
        _check_args(methods["load_model"], "load_model", allowed={"model_path"}, required={"model_path"}, where=where)


def _check_args(signature: Signature, method: str, allowed: set[str] | frozenset[str], required: set[str],
                where: str) -> None:
    for name in signature.args:
        if name not in allowed:
            raise PredictorLoadError(f"{where}: {method}() argument \"{name}\" is not a supported argument; "
                                     f"supported: {', '.join(sorted(allowed))}")
        if name in signature.positional_only:
            raise PredictorLoadError(f"{where}: {method}() argument \"{name}\" is positional-only (declared before "
                                     "'/'), but arguments are passed by name; remove the '/'")
    for name in sorted(required):
        if name not in signature.args:
            raise PredictorLoadError(f"{where}: {method}() argument \"{name}\" is required, but was not declared")


def static_methods(source_file: Path, class_name: str) -> dict[str, Signature] | None:
    """Read the class's method signatures from source without importing it; None when only an import can tell."""
    where = f"{source_file.name}"
    try:
        source = importlib.util.decode_source(source_file.read_bytes())  # honours a `# coding:` line
        tree = ast.parse(source, filename=str(source_file))
    except UnicodeDecodeError as error:
        raise PredictorLoadError(f"error in {where}: it is not valid text in its encoding ({error.reason})") from None
    except SyntaxError as error:
        raise PredictorLoadError(f"error in {where}: {error.msg} (line {error.lineno})") from None
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name]
    if len(classes) > 1:
        raise PredictorLoadError(f"multiple definitions for {class_name} class found in {where} "
                                 f"(lines {', '.join(str(c.lineno) for c in classes)})")
    if not classes:
        if _may_bind(tree, class_name):
            return None  # imported, assigned or defined conditionally: only importing the module can tell
        raise PredictorLoadError(f"{class_name} class is not defined in {where}")
    cls = classes[0]
    if not _statically_known(cls):
        return None  # inherited, decorated or computed methods: only importing the module can tell
    return {node.name: _ast_signature(node) for node in cls.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _may_bind(tree: ast.Module, name: str) -> bool:
    """True when some statement of the module could bind `name` (a mention in a comment or a string cannot)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(alias.name == "*" or (alias.asname or alias.name.split(".")[0]) == name for alias in node.names):
                return True
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id == name:
            return True
        elif isinstance(node, ast.ClassDef) and node.name == name:
            return True  # defined inside an if, a try or a function
        elif isinstance(node, ast.Name) and node.id in ("globals", "exec", "setattr", "__import__"):
            return True
    return False


def _statically_known(cls: ast.ClassDef) -> bool:
    """True when the class body alone says what the checked methods are."""
    if cls.decorator_list or cls.keywords:
        return False
    if any(not (isinstance(base, ast.Name) and base.id == "object") for base in cls.bases):
        return False
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.decorator_list and node.name in CHECKED_METHODS:
                return False
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {name.id for target in targets for name in ast.walk(target) if isinstance(name, ast.Name)}
            if names & set(CHECKED_METHODS):
                return False
        elif not isinstance(node, (ast.Expr, ast.Pass, ast.ClassDef)):
            return False  # if/try/with/for/import in the body may define methods
    return True


def _ast_signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> Signature:
    positional_only = [arg.arg for arg in node.args.posonlyargs]
    positional = [arg.arg for arg in node.args.posonlyargs + node.args.args][1:]  # drop self
    defaults = positional[len(positional) - len(node.args.defaults):] if node.args.defaults else []
    keyword = [arg.arg for arg in node.args.kwonlyargs]
    keyword_defaults = [arg.arg for arg, default in zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True)
                        if default]
    return Signature(tuple(positional + keyword), frozenset(defaults + keyword_defaults),
                     frozenset(positional_only[1:]))


def runtime_methods(cls: type) -> dict[str, Signature]:
    """The signatures of the class's methods, inherited ones included."""
    methods = {}
    for name in CHECKED_METHODS:
        method = getattr(cls, name, None)
        if method is None or (name == "__init__" and method is object.__init__):
            continue
        methods[name] = _runtime_signature(cls, name, method)
    return methods


def _runtime_signature(cls: type, name: str, method: Any) -> Signature:
    """The arguments a call on an instance gives by name: self (or cls) is not one of them."""
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        raise PredictorLoadError(f"{cls.__name__}.{name} is not a method whose signature can be read") from None
    if not isinstance(inspect.getattr_static(cls, name), (staticmethod, classmethod)):
        params = params[1:]  # self
    named = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return Signature(tuple(p.name for p in named), frozenset(p.name for p in named if p.default is not p.empty),
                     frozenset(p.name for p in named if p.kind is p.POSITIONAL_ONLY))


def load_class(view: Path, api: Api, ptype: PredictorType) -> tuple[type, dict[str, Signature]]:
    """Import an API's predictor class from the project view and check its methods' signatures."""
    module_name = "engine_predictor_" + re.sub(r"\W", "_", api.name)
    predictor_class = import_class(view / api.predictor.path, ptype.class_name, module_name)
    methods = runtime_methods(predictor_class)
    check_class(methods, ptype, api.predictor.models is not None, f"{api.predictor.path}: {ptype.class_name}",
                batch=isinstance(api, BatchApi))
    return predictor_class, methods


def import_class(source_file: Path, class_name: str, module_name: str) -> type:
    """Import the predictor module and return its class; import errors name the file and carry the traceback."""
    loader = importlib.machinery.SourceFileLoader(module_name, str(source_file))  # any file name, as imp.load_source
    spec = importlib.util.spec_from_file_location(module_name, source_file, loader=loader)
    assert spec is not None  # always one, given a loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        loader.exec_module(module)
    except (Exception, SystemExit) as error:
        del sys.modules[module_name]
        raise PredictorLoadError(f"error in {source_file.name} while importing it to load {class_name}: "
                                 f"{type(error).__name__}: {error}\n{tracebacks.format_exception(error)}") from None
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls):
        raise PredictorLoadError(f"{class_name} class is not defined in {source_file.name}")
    return cls
