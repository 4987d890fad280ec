"""The project directory: the files a predictor may see, its .env, and the view it runs in."""
from __future__ import annotations

import os
import posixpath
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dotenv.parser
import pathspec

from engine import tempdirs, tracebacks

IGNORE_FILE = ".cortexignore"
ENV_FILE = ".env"
_BYTECODE_SUFFIXES = (".pyc", ".pyo", ".pyd")
_DEBUG_PREFIX = "cortex-debug-"
# $NAME, ${NAME} and ${NAME:-default}, as bash expands them; \$ is a literal dollar sign.
_VARIABLE = re.compile(r"\\\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
                       r"|\$(?P<plain>[A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class ProjectWarning:
    """Something about a project that engine serves anyway and tells the user once, at start-up."""

    message: str
    # True when it holds only for engine serve, which serves every API in one process on this machine; an engine
    # that serves each API on its own replicas says its own instead.
    local: bool = False

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class _Binding:
    """One `NAME=value` line of a .env file."""

    name: str
    value: str
    literal: bool  # in single quotes, where bash expands nothing


class Project:
    """The directory holding cortex.yaml, the set of files the seed makes visible to the predictor, and its .env."""

    def __init__(self, root: Path, config_file: Path) -> None:
        self.root = root.resolve()
        # Only the directory is resolved: a config file that is a symlink hides itself, not its target.
        self.config_file = config_file.absolute().parent.resolve() / config_file.name
        self.ignore = self._read_ignore_file()
        self.warnings: list[ProjectWarning] = []
        self.files: list[str] = []
        self.dirs: list[str] = []
        self._walk(self.root, "", frozenset({str(self.root)}))
        self._file_set, self._dir_set = set(self.files), set(self.dirs)
        self._env_file = self._read_env_file()

    def _read_ignore_file(self) -> pathspec.GitIgnoreSpec:
        ignore_file = self.root / IGNORE_FILE
        lines = ignore_file.read_text().splitlines() if ignore_file.is_file() else []
        return pathspec.GitIgnoreSpec.from_lines(lines)

    def _ignored_dir(self, relative: str) -> bool:
        """Git's rule for a directory: the last pattern that matches the directory itself decides."""
        ignored = False
        for pattern in self.ignore.patterns:
            if pattern.include is None:
                continue
            dir_only = str(pattern.pattern).rstrip(" ").endswith("/")
            if pattern.match_file(relative + "/" if dir_only else relative) is not None:
                ignored = pattern.include
        return ignored

    def _hidden_dir(self, relative: str, name: str) -> bool:
        return (name.startswith(".") or name == "__pycache__" or name.startswith(_DEBUG_PREFIX)
                or self._ignored_dir(relative))

    def _hidden_file(self, relative: str, name: str) -> bool:
        if relative == ENV_FILE:
            return False  # hidden, but the seed makes it visible
        return (name.startswith(".") or name.endswith(_BYTECODE_SUFFIXES) or name.startswith(_DEBUG_PREFIX)
                or self.ignore.match_file(relative))

    def _walk(self, directory: Path, prefix: str, ancestors: frozenset[str]) -> None:
        """Collect the visible files and directories under `directory`, following symlinked directories once."""
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as error:
            self.warnings.append(ProjectWarning(f"project directory {prefix or '.'} cannot be read, so its files are "
                                                f"not visible: {error.strerror}"))
            return
        for entry in entries:
            relative = prefix + entry.name
            if _is_dir(entry):
                real = os.path.realpath(entry.path)
                if real in ancestors or self._hidden_dir(relative, entry.name):
                    continue  # a symlink back to an ancestor would never end
                self.dirs.append(relative)
                self._walk(Path(entry.path), relative + "/", ancestors | {real})
            elif Path(entry.path) != self.config_file and not self._hidden_file(relative, entry.name):
                self.files.append(relative)

    def watches(self, path: Path) -> bool:
        """True when a change at `path` can change what is served: the configuration file, .cortexignore, .env, or a
        file the project shows (or would show, for a new one)."""
        if path == self.config_file:
            return True
        try:
            relative = path.relative_to(self.root).as_posix()
        except ValueError:
            return False
        parts = relative.split("/")
        if any(self._hidden_dir("/".join(parts[:index + 1]), name) for index, name in enumerate(parts[:-1])):
            return False
        return relative == IGNORE_FILE or not self._hidden_file(relative, parts[-1])

    def has_file(self, relative: str) -> bool:
        """True when `relative` is a visible project file."""
        return _normalise(relative) in self._file_set

    def has_dir(self, relative: str) -> bool:
        """True when `relative` is a visible project directory."""
        return _normalise(relative) in self._dir_set

    def create_view(self) -> Path:
        """A temporary directory of symlinks to the visible files (nothing is copied); delete it with remove_view."""
        view = tempdirs.make("project")
        tracebacks.register_view(view, self.root)
        for directory in self.dirs:
            (view / directory).mkdir()
        for file in self.files:
            os.symlink(self.root / file, view / file)
        return view

    def environment(self, api_envs: dict[str, dict[str, str]], environ: Mapping[str, str]) -> dict[str, str]:
        """The variables a process serving these APIs runs with: each API's predictor.env (a later API's value wins),
        then the project's .env as `set -a; source .env` sets them (overriding, as Cortex's `source` did), its
        $VARIABLES expanded against `environ` and what precedes them."""
        values = {name: value for env in api_envs.values() for name, value in env.items()}
        for binding in self._env_file:
            values[binding.name] = binding.value if binding.literal else _expand(binding.value, {**environ, **values})
        return values

    def _read_env_file(self) -> list[_Binding]:
        """The .env file's assignments, read with python-dotenv's parser; a warning for each line that is not one."""
        env_file = self.root / ENV_FILE
        if not env_file.is_file():
            return []
        bindings = []
        with open(env_file, encoding="utf-8") as stream:
            for binding in dotenv.parser.parse_stream(stream):
                if binding.error:
                    line = binding.original
                    self.warnings.append(ProjectWarning(f"{env_file} line {line.line} is not VARIABLE=value and is "
                                                        f"ignored: {line.string.strip()}"))
                elif binding.key is not None and binding.value is not None:
                    bindings.append(_Binding(binding.key, binding.value, _single_quoted(binding.original.string)))
        return bindings


def conflicting_env(api_envs: dict[str, dict[str, str]]) -> list[str]:
    """One line per predictor.env variable that APIs sharing one process set to different values."""
    applied: dict[str, tuple[str, str]] = {}
    lines = []
    for api_name, env in api_envs.items():
        for name, value in env.items():
            if name in applied and applied[name][1] != value:
                lines.append(f"predictor.env {name} differs between api '{applied[name][0]}' and api '{api_name}'; "
                             f"they share one process, so api '{api_name}''s value is used")
            applied[name] = (api_name, value)
    return lines


def _single_quoted(line: str) -> bool:
    """True when the value of a `KEY=value` line is in single quotes, where bash expands nothing."""
    return line.partition("=")[2].lstrip().startswith("'")


def _expand(value: str, environ: Mapping[str, str]) -> str:
    """Expand $NAME, ${NAME} and ${NAME:-default}; an unset variable is empty, as in bash."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "\\$":
            return "$"
        name = match.group("braced") or match.group("plain")
        found = environ.get(name, "")
        return found if found or match.group("default") is None else match.group("default")
    return _VARIABLE.sub(replace, value)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False


def _normalise(relative: str) -> str:
    return posixpath.normpath(relative.replace("\\", "/")).removeprefix("./")


def remove_view(view: Path) -> None:
    """Delete a view made by Project.create_view (the project itself is untouched: symlinks are not followed)."""
    tempdirs.remove(view)


def enter_view(view: Path, python_paths: list[str]) -> None:
    """Run from the view: it becomes the working directory, and it (or each python_path in it) joins sys.path."""
    os.chdir(view)
    for relative in reversed(python_paths or [""]):
        entry = str(view / relative) if relative else str(view)
        if entry not in sys.path:
            sys.path.insert(0, entry)
