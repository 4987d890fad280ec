"""Turn pydantic validation errors into one readable line per problem: field path, what is wrong, what was given."""
from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

_TEMPLATES = {
    "missing": "is required",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "string_too_long": "must be at most {max_length} characters",
    "string_type": "must be a string (quote numbers and booleans in YAML)",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "dict_type": "must be a mapping (key: value)",
    "list_type": "must be a list",
    "model_type": "must be a mapping (key: value)",
    "model_attributes_type": "must be a mapping (key: value)",
    "literal_error": "must be one of {expected}",
}


def format_validation_error(error: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per problem, e.g. `predictor.processes_per_replica: must be at most 100 (given: 101)`."""
    lines = []
    for problem in error.errors(include_url=False):
        loc = tuple(problem["loc"])
        field = _field_path(loc)
        if problem["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(_allowed_fields(root, loc[:-1])))
            lines.append(f"{field}: is not a supported field; allowed here: {allowed}")
            continue
        message = _describe(problem)
        given = "" if problem["type"] == "missing" or "input" not in problem or isinstance(problem["input"], dict) \
            else f" (given: {_short(problem['input'])})"
        lines.append(f"{field}: {message}{given}" if field else f"{message}{given}")
    return lines


def _describe(problem: dict[str, Any]) -> str:
    if problem["type"] in ("value_error", "assertion_error"):
        return str(problem.get("ctx", {}).get("error", problem["msg"]))
    template = _TEMPLATES.get(problem["type"])
    if template is None:
        return problem["msg"][0].lower() + problem["msg"][1:]
    return template.format(**{key: str(value) for key, value in problem.get("ctx", {}).items()})


def _field_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed_fields(root: type[BaseModel], loc: tuple) -> list[str]:
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field else None
    return list(model.model_fields) if model else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, (types.UnionType, typing._GenericAlias)) or typing.get_origin(annotation):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found:
                return found
    return None
