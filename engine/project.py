"""The project directory: the files a predictor may see, its .env, and the view it runs in."""
from __future__ import annotations

import logging
import os
import posixpath
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import dotenv.parser
import pathspec

from engine import tempdirs, tracebacks

log = logging.getLogger("engine")

IGNORE_FILE = ".cortexignore"
ENV_FILE = ".env"
_BYTECODE_SUFFIXES = (".pyc", ".pyo", ".pyd")
_DEBUG_PREFIX = "cortex-debug-"
# $NAME, ${NAME} and ${NAME:-default}, as bash expands them; \$ is a literal dollar sign.
_VARIABLE = re.compile(r"\\\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
                       r"|\$(?P<plain>[A-Za-z_][A-Za-z0-9_]*)")


class Project:
    """The directory holding cortex.yaml and the set of files the seed makes visible to the predictor."""

    def __init__(self, root: Path, config_file: Path) -> None:
        self.root = root.resolve()
        # Only the directory is resolved: a config file that is a symlink hides itself, not its target.
        self.config_file = config_file.absolute().parent.resolve() / config_file.name
        self.ignore = self._read_ignore_file()
        self.files: list[str] = []
        self.dirs: list[str] = []
        self._walk(self.root, "", frozenset({str(self.root)}))
        self._file_set, self._dir_set = set(self.files), set(self.dirs)

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
            log.warning("project directory %s cannot be read, so its files are not visible: %s",
                        prefix or ".", error.strerror)
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

    def apply_environment(self, api_envs: dict[str, dict[str, str]]) -> None:
        """Set each API's predictor.env, then the project's .env (bash-like, overriding as Cortex's `source` did)."""
        applied: dict[str, tuple[str, str]] = {}
        for api_name, env in api_envs.items():
            for key, value in env.items():
                if key in applied and applied[key][1] != value:
                    log.warning("predictor.env %s differs between api '%s' and api '%s'; they share one process, "
                                "so api '%s''s value is used", key, applied[key][0], api_name, api_name)
                applied[key] = (api_name, value)
                os.environ[key] = value
        env_file = self.root / ENV_FILE
        if env_file.is_file():
            os.environ.update(read_env_file(env_file, os.environ))


def read_env_file(env_file: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables `set -a; source .env` sets: python-dotenv's parser, with bash's $VAR expansion and quoting."""
    values: dict[str, str] = {}
    with open(env_file, encoding="utf-8") as stream:
        for binding in dotenv.parser.parse_stream(stream):
            if binding.error:
                log.warning("%s line %d is not VARIABLE=value and is ignored: %s", env_file,
                            binding.original.line, binding.original.string.strip())
            elif binding.key is not None and binding.value is not None:
                literal = _single_quoted(binding.original.string)
                values[binding.key] = binding.value if literal else _expand(binding.value, {**environ, **values})
    return values


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


def _is_dir(entry: os.DirEntry) -> bool:
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
