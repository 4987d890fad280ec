"""The project directory: the files a predictor may see, its .env, and the view it runs in."""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import dotenv
import pathspec

log = logging.getLogger("engine")

IGNORE_FILE = ".cortexignore"
ENV_FILE = ".env"
_BYTECODE_SUFFIXES = (".pyc", ".pyo", ".pyd")


class Project:
    """The directory holding cortex.yaml and the set of files the seed makes visible to the predictor."""

    def __init__(self, root: Path, config_file: Path) -> None:
        self.root = root.resolve()
        self.config_file = config_file.resolve()
        self.ignore = self._read_ignore_file()
        self.files, self.dirs = self._list()

    def _read_ignore_file(self) -> pathspec.PathSpec:
        ignore_file = self.root / IGNORE_FILE
        lines = ignore_file.read_text().splitlines() if ignore_file.is_file() else []
        return pathspec.GitIgnoreSpec.from_lines(lines)

    def _hidden(self, relative: str, name: str, is_dir: bool) -> bool:
        if is_dir:
            return name.startswith(".") or name == "__pycache__" or self.ignore.match_file(relative + "/")
        if relative == ENV_FILE:
            return False  # hidden, but the seed makes it visible
        return (name.startswith(".") or name.endswith(_BYTECODE_SUFFIXES) or name.startswith("cortex-debug-")
                or self.ignore.match_file(relative))

    def _list(self) -> tuple[list[str], list[str]]:
        files, dirs = [], []
        for current, subdirs, names in os.walk(self.root):
            base = Path(current).relative_to(self.root).as_posix()
            prefix = "" if base == "." else base + "/"
            subdirs[:] = sorted(d for d in subdirs if not self._hidden(prefix + d, d, is_dir=True))
            dirs += [prefix + d for d in subdirs]
            for name in sorted(names):
                path = Path(current, name)
                if path == self.config_file or self._hidden(prefix + name, name, is_dir=False):
                    continue
                files.append(prefix + name)
        return files, dirs

    def has_file(self, relative: str) -> bool:
        """True when `relative` is a visible project file."""
        return relative in self.files

    def has_dir(self, relative: str) -> bool:
        """True when `relative` is a visible project directory."""
        return relative in self.dirs

    def create_view(self) -> Path:
        """A temporary directory mirroring the visible files as symlinks (nothing is copied); delete with remove_view."""
        view = Path(tempfile.mkdtemp(prefix="engine-project-"))
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
            dotenv.load_dotenv(env_file, override=True, interpolate=True)


def remove_view(view: Path) -> None:
    """Delete a view made by Project.create_view (the project itself is untouched)."""
    shutil.rmtree(view, ignore_errors=True)


def enter_view(view: Path, python_paths: list[str]) -> None:
    """Run from the view: it becomes the working directory, and it (or each python_path in it) joins sys.path."""
    os.chdir(view)
    for relative in reversed(python_paths or [""]):
        entry = str(view / relative) if relative else str(view)
        if entry not in sys.path:
            sys.path.insert(0, entry)
