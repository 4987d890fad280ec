"""engine's temporary directories (project view, worker sockets, metrics, model downloads).

Each is named after the process that made it (`engine-<kind>-<pid>-<random>`) and removed when that process exits;
one left behind by a process that was killed is removed by the next start.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("engine")

_made: list[Path] = []


def make(kind: str) -> Path:
    """A new temporary directory owned by this process (`kind` is one word, such as "project")."""
    path = Path(tempfile.mkdtemp(prefix=f"engine-{kind}-{os.getpid()}-"))
    _made.append(path)
    return path


@atexit.register
def remove_all() -> None:
    """Delete every directory this process made (at exit; and before a forced exit, which skips atexit)."""
    while _made:
        remove(_made.pop())


def remove(path: Path) -> None:
    """Delete a directory made by `make` (nothing happens when it is already gone)."""
    shutil.rmtree(path, ignore_errors=True)


def remove_stale() -> None:
    """Delete the temporary directories of engine processes that no longer run."""
    for path in Path(tempfile.gettempdir()).glob("engine-*-*-*"):
        parts = path.name.split("-")
        if len(parts) == 4 and parts[2].isdigit() and not _running(int(parts[2])) and path.is_dir():
            log.debug("removing %s, left by process %s", path, parts[2])
            remove(path)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
