"""What ships from the driver to the nodes besides the project's APIs: its folder, and the API keys."""
from __future__ import annotations

import os
from pathlib import Path

from engine import ServeSettings, load_keys

IGNORE_FILE = ".cortexignore"
# engine serves the files .gitignore lists (models, often); Ray would leave them out of an uploaded working_dir.
IGNORE_GITIGNORE_ENV = "RAY_RUNTIME_ENV_IGNORE_GITIGNORE"
STATE_DIR = "/.engine"  # where engine serve keeps BatchAPI jobs unless --state-dir says otherwise


def excludes(root: Path) -> list[str]:
    """.cortexignore's patterns (gitignore syntax, as Ray's excludes are)."""
    path = root / IGNORE_FILE
    lines = path.read_text().splitlines() if path.is_file() else []
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def job_runtime_env(root: Path) -> dict:
    """For a cluster: the project folder, uploaded when the driver joins (Ray uploads folders only then), its ignored
    files and BatchAPI jobs' default state folder (kept on the head node, never read by a predictor) left out."""
    os.environ[IGNORE_GITIGNORE_ENV] = "1"
    return {"working_dir": str(root), "excludes": [*excludes(root), STATE_DIR]}


def read_keys(settings: ServeSettings) -> tuple[str, ...]:
    """The API keys of --api-key and --api-key-file, read and checked as engine serve reads them, for every replica
    (which may run where the key file is not)."""
    return tuple(key.decode() for key in load_keys(settings))
