"""Turn pydantic validation errors into one readable line per problem: field path, what is wrong, what was given."""
from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

RULE_ERROR = "cortex_rule"
Loc = tuple[int | str, ...]  # where a problem is: field names and list indices

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
    "list_type": "must be a list (items starting with '- ')",
    "model_type": "must be a mapping (key: value)",
    "model_attributes_type": "must be a mapping (key: value)",
    "literal_error": "must be one of {expected}",
}


class Rules:
    """The rule violations one model validator finds, raised together so that each gets its own line."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.errors: list[InitErrorDetails] = []

    def add(self, loc: str | tuple[str | int, ...], message: str) -> None:
        """Record one problem at `loc`, a field name or a path relative to the model (`()` for the model itself)."""
        loc = (loc,) if isinstance(loc, str) else loc
        error = PydanticCustomError(RULE_ERROR, "{message}", {"message": message})
        self.errors.append(InitErrorDetails(type=error, loc=loc, input=None))

    def check(self) -> None:
        """Raise every recorded problem at once; do nothing when there are none."""
        if self.errors:
            raise ValidationError.from_exception_data(self.model, self.errors)


def format_validation_error(error: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per problem, e.g. `predictor.processes_per_replica: must be at most 100 (given: 101)`."""
    return [_format_problem(problem, root) for problem in error.errors(include_url=False)]


def _format_problem(problem: ErrorDetails, root: type[BaseModel]) -> str:
    loc = tuple(problem["loc"])
    if problem["type"] == "extra_forbidden":
        return f"{_field_path(loc)}: {_unknown_field(root, loc)}"
    if loc and loc[-1] == "[key]":
        return f"{_field_path(loc[:-2])}: keys must be strings (given: {_short(problem['input'])})"
    message = _describe(problem)
    field = _field_path(loc)
    return f"{field}: {message}{_given(problem)}" if field else f"{message}{_given(problem)}"


def _unknown_field(root: type[BaseModel], loc: Loc) -> str:
    allowed = sorted(_allowed_fields(root, loc[:-1]))
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"is not a supported field; {hint}allowed here: {', '.join(allowed)}"


def _given(problem: ErrorDetails) -> str:
    if problem["type"] in ("missing", RULE_ERROR) or "input" not in problem or isinstance(problem["input"], dict):
        return ""
    return f" (given: {_short(problem['input'])})"


def _describe(problem: ErrorDetails) -> str:
    if problem["type"] in ("value_error", "assertion_error"):
        return str(problem.get("ctx", {}).get("error", problem["msg"]))
    if problem["type"] == RULE_ERROR:
        return problem["msg"]
    template = _TEMPLATES.get(problem["type"])
    if template is None:
        return problem["msg"][:1].lower() + problem["msg"][1:]
    return template.format(**{key: _plain(value) for key, value in problem.get("ctx", {}).items()})


def _plain(value: Any) -> str:
    """A limit as a person writes it: `1`, not `1.0`."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _field_path(loc: Loc) -> str:
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


def _allowed_fields(root: type[BaseModel], loc: Loc) -> list[str]:
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
    if typing.get_origin(annotation) is not None:  # X | Y, Optional[X], list[X], Annotated[X, ...]...
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found:
                return found
    return None
