"""What engine may find on a model client (what `engine_create_client` returns); every part is optional.

engine checks for each part with isinstance, so a client implements only the parts it needs, by their names alone.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class DescribesModels(Protocol):
    """A client whose models the API's GET summary shows, as `model_metadata`."""

    def metadata(self) -> dict[str, Any]:
        """Per model: versions, which are loaded, load errors and what the format tells of a loaded version."""


@runtime_checkable
class LoadsUserModels(Protocol):
    """The client of a predictor type with `user_loads_models`: the predictor's own load_model() loads versions."""

    def set_load_method(self, load_model: Callable[[str], Any]) -> None:
        """Called once the predictor's __init__ has returned, with its load_model(model_path)."""
