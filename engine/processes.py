"""Helper processes bound to the process that started them (engine's worker processes, a plugin's own)."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with(parent: int) -> None:
    """Ask Linux to kill this process if `parent` (the process that started it) dies without stopping it (SIGKILL,
    an OOM kill); exit at once if it has died already. Elsewhere the caller's connection to its parent ending must
    end it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux
        pass
    if os.getppid() != parent:  # it died before we asked
        os._exit(1)
