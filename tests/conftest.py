"""Shared fixtures, from engine.testing (the one place for end-to-end helpers): real `engine serve` processes on
loopback (`serve`, once with one process and once with workers through `processes`) and fresh plugin managers (`pm`).
Helpers only the core's test modules share are in support.py."""
from __future__ import annotations

from engine.testing import pm, processes, serve  # noqa: F401
