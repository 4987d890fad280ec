"""Model layouts: files → versions, the interface a predictor type implements, and layout error messages."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.errors import ModelError

MAX_TREE_LINES = 50

Signature = tuple[tuple[str, int, float, str], ...]  # a version's (path, size, mtime, tag) per file


@dataclass(frozen=True)
class FileEntry:
    """One file of a model, relative to the model's location (posix path; '' for a single-file model)."""

    path: str
    size: int
    mtime: float
    tag: str = ""  # what else tells two contents apart: S3's ETag, a local file's inode


@dataclass(frozen=True)
class VersionInfo:
    """One version of a model as its store lists it."""

    version: int
    location: str  # the version's directory (or the model file) in its store
    files: tuple[FileEntry, ...]
    written: float = 0.0  # last write seen under it, hidden files and directories included (see `activity`)

    @property
    def timestamp(self) -> float:
        """When its newest file was written."""
        return max((entry.mtime for entry in self.files), default=0.0)

    @property
    def activity(self) -> float:
        """When anything under it last changed: its files, hidden files (rsync's temporaries) and directories."""
        return max(self.timestamp, self.written)

    @property
    def signature(self) -> Signature:
        """Changes whenever a file is added, removed, resized, rewritten or replaced by another."""
        return tuple((entry.path, entry.size, entry.mtime, entry.tag) for entry in self.files)


class ModelFormat(Protocol):
    """What a predictor type tells the repository: how to check, load and free one version. A format may also have
    `size(model) -> int | None`, the bytes a loaded version holds, for the memory budget (engine.models.budget);
    without it, the growth of resident memory during `load` counts."""

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
    """True for paths with a component starting with '.' (editor and OS droppings, '.' and '..')."""
    return any(part.startswith(".") for part in relative.split("/"))


def is_version_name(name: str) -> bool:
    """Version directories are named with ASCII digits only ("²" and "١" are digits to str.isdigit, not to int)."""
    return name.isascii() and name.isdigit()


def group_versions(location: str, entries: list[FileEntry], is_file: bool) -> dict[int, VersionInfo]:
    """Integer top-level directories are versions; otherwise the whole model is version 1; empty versions are skipped.

    Entries whose path ends with "/" are directories and hidden entries are not part of any version; both only
    count as write activity (VersionInfo.written), so that a version still being copied looks unsettled.
    """
    if is_file:
        return {1: VersionInfo(1, location, tuple(entries), max((e.mtime for e in entries), default=0.0))}
    visible = [entry for entry in entries if not entry.path.endswith("/") and not is_hidden(entry.path)]
    if not visible:
        return {}
    tops = {entry.path.split("/", 1)[0] for entry in visible}
    versioned = all(is_version_name(top) and any(e.path.startswith(top + "/") for e in visible) for top in tops)
    if not versioned:
        return {1: VersionInfo(1, location, tuple(visible), _written(entries))}
    versions: dict[int, VersionInfo] = {}
    # "1" before "01": when two spellings name one version, the canonical one wins
    for top in sorted(tops, key=lambda top: (int(top), top != str(int(top)), top)):
        if int(top) in versions:
            continue
        files = tuple(FileEntry(e.path[len(top) + 1:], e.size, e.mtime, e.tag)
                      for e in visible if e.path.startswith(top + "/"))
        written = _written([e for e in entries if e.path.startswith(top + "/")])
        versions[int(top)] = VersionInfo(int(top), f"{location.rstrip('/')}/{top}", files, written)
    return versions


def _written(entries: list[FileEntry]) -> float:
    return max((entry.mtime for entry in entries), default=0.0)


def check_layout(name: str, location: str, version: VersionInfo, fmt: ModelFormat, type_name: str) -> None:
    """Raise ModelError with the expected and the found tree when the format cannot load this version."""
    problem = fmt.validate([entry.path for entry in version.files])
    if problem is None:
        return
    found = sorted(entry.path or Path(location).name for entry in version.files)
    shown = "\n".join(f"    {path}" for path in found[:MAX_TREE_LINES])
    more = f"\n    ... and {len(found) - MAX_TREE_LINES} more" if len(found) > MAX_TREE_LINES else ""
    expected = "\n".join(f"    {line}" for line in fmt.expected_tree.splitlines())
    raise ModelError(
        f"model '{name}' version {version.version} at {version.location} cannot be loaded by the {type_name} "
        f"predictor: {problem}.\n  expected (in the model directory, or in each integer version directory "
        f"such as 1/, 2/):\n{expected}\n  found:\n{shown or '    (nothing)'}{more}"
    )
