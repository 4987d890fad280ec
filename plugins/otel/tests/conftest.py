"""Fixtures of engine-otel's suite: a real OTLP receiver for the module, and engine.testing's `processes` (each
end-to-end module runs once with one process and once with worker processes)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # otlp_receiver, shared by this folder's test modules

from otlp_receiver import HttpReceiver  # noqa: E402

from engine.testing import processes  # noqa: E402, F401  (fixture)


@pytest.fixture(scope="module")
def receiver():
    """An OTLP/HTTP receiver on loopback for one test module (its servers tell traces apart by trace id)."""
    made = HttpReceiver()
    yield made
    made.close()
