"""Model layouts: files → versions, the interface a predictor type implements, and layout error messages."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.errors import ModelError

MAX_TREE_LINES = 50


@dataclass(frozen=True)
class FileEntry:
    """One file of a model, relative to the model's location (posix path; '' for a single-file model)."""

    path: str
    size: int
    mtime: float


@dataclass(frozen=True)
class VersionInfo:
    """One version of a model as its store lists it."""

    version: int
    location: str  # the version's directory (or the model file) in its store
    files: tuple[FileEntry, ...]

    @property
    def timestamp(self) -> float:
        """When its newest file was written."""
        return max((entry.mtime for entry in self.files), default=0.0)

    @property
    def signature(self) -> tuple:
        """Changes whenever a file is added, removed, resized or rewritten."""
        return tuple((entry.path, entry.size, entry.mtime) for entry in self.files)


class ModelFormat(Protocol):
    """What a predictor type tells the repository: how to check, load and free one version."""

    expected_tree: str  # shown in layout errors, e.g. "model.onnx" or "saved_model.pb\nvariables/..."

    def validate(self, files: list[str]) -> str | None:
        """Return None when these relative file paths form a loadable version, else what is wrong."""

    def load(self, path: Path) -> Any:
        """Load the version at `path` (its directory, or the file of a single-file model)."""

    def unload(self, model: Any) -> None:
        """Release what `load` returned; the repository drops its reference right after."""

    def describe(self, model: Any) -> dict[str, Any]:
        """What the API's GET summary shows about a loaded version (inputs, signatures...)."""


def is_hidden(relative: str) -> bool:
    """True for paths with a component starting with '.' (editor and OS droppings)."""
    return any(part.startswith(".") for part in relative.split("/"))


def group_versions(location: str, entries: list[FileEntry], is_file: bool) -> dict[int, VersionInfo]:
    """Integer top-level directories are versions; otherwise the whole model is version 1; empty versions are skipped."""
    if is_file:
        return {1: VersionInfo(1, location, tuple(entries))}
    visible = [entry for entry in entries if not is_hidden(entry.path)]
    if not visible:
        return {}
    tops = {entry.path.split("/", 1)[0] for entry in visible}
    versioned = all(top.isdigit() and any(e.path.startswith(top + "/") for e in visible) for top in tops)
    if not versioned:
        return {1: VersionInfo(1, location, tuple(visible))}
    versions = {}
    for top in tops:
        files = tuple(FileEntry(e.path[len(top) + 1:], e.size, e.mtime) for e in visible if e.path.startswith(top + "/"))
        if files:
            versions[int(top)] = VersionInfo(int(top), f"{location.rstrip('/')}/{top}", files)
    return versions


def check_layout(name: str, location: str, version: VersionInfo, fmt: ModelFormat, type_name: str) -> None:
    """Raise ModelError with the expected and the found tree when the format cannot load this version."""
    problem = fmt.validate([entry.path for entry in version.files])
    if problem is None:
        return
    found = [entry.path or Path(location).name for entry in version.files]
    shown = "\n".join(f"    {path}" for path in found[:MAX_TREE_LINES])
    more = f"\n    ... and {len(found) - MAX_TREE_LINES} more" if len(found) > MAX_TREE_LINES else ""
    expected = "\n".join(f"    {line}" for line in fmt.expected_tree.splitlines())
    raise ModelError(
        f"model '{name}' version {version.version} at {version.location} cannot be loaded by the {type_name} "
        f"predictor: {problem}.\n  expected (in the model directory, or in each integer version directory "
        f"such as 1/, 2/):\n{expected}\n  found:\n{shown or '    (nothing)'}{more}"
    )
