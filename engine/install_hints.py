"""What to install for a capability no installed plugin provides, read from engine's own packaging metadata (its
extras), since a missing plugin cannot describe itself: no code names a plugin."""
from __future__ import annotations

import functools
import importlib.metadata
import re


def install_requirement(name: str) -> str | None:
    """What to pip install for a predictor type, hardware target, HTTP server or --on engine that no installed plugin
    provides: engine's extra of that name (`engine[onnx]`), or the one installing a plugin named after it (`cuda`:
    engine-hw-cuda, `engine[gpu]`), or engine's dependency named after it (`engine-python-predictor`); None when
    engine knows of none."""
    plugins_ = _plugin_requirements()
    if any(extra == name for extra, _ in plugins_):
        return f"engine[{name}]"
    named = [(extra, distribution) for extra, distribution in plugins_ if name in distribution.split("-")[1:]]
    if len(named) != 1:  # none, or a word such as "predictor" that names no one plugin
        return None
    extra, distribution = named[0]
    return f"engine[{extra}]" if extra else distribution


@functools.cache
def _plugin_requirements() -> tuple[tuple[str | None, str], ...]:
    """(extra, distribution) for each engine-* plugin engine installs, by an extra that installs it alone, or always
    (extra None)."""
    try:
        requires = importlib.metadata.requires("engine") or []
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return ()
    by_extra: dict[str | None, list[str]] = {}
    for requirement in requires:
        match = re.match(r'^([A-Za-z0-9._-]+)[^;]*(?:;\s*extra\s*==\s*"([^"]+)")?\s*$', requirement)
        if match:
            by_extra.setdefault(match.group(2), []).append(match.group(1).lower())
    return tuple((extra, distribution) for extra, distributions in by_extra.items() for distribution in distributions
                 if distribution.startswith("engine-") and (extra is None or len(distributions) == 1))


def install_hint(name: str) -> str:
    """A sentence saying what to install for `name` (see install_requirement)."""
    requirement = install_requirement(name)
    if requirement:
        return f"Install {requirement}."
    return "Install the package that provides it (one with an entry point in the 'engine' group)."
