"""The event loop every engine process runs on."""
from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run_event_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed (a faster event loop), else on asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
