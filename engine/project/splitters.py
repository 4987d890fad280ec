"""Cortex's TrafficSplitter (`kind: TrafficSplitter`): its schema, Cortex's checks in Cortex's words, and the
re-reading of a configuration file's splitters while serving (SIGHUP)."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from engine.errors import ConfigError
from engine.project.config import MAX_NAME_LENGTH, Api, read_config
from engine.project.sections import Integer, Networking, Section

KIND = "TrafficSplitter"
TOTAL_WEIGHT = 100


class SplitNetworking(Section):
    """A TrafficSplitter's `networking`: its endpoint (default /<name>); api_gateway is accepted and not applied."""

    endpoint: str | None = None
    api_gateway: Literal["public", "none"] = "public"

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, endpoint: str | None) -> str | None:
        return Networking._check_endpoint(endpoint)  # an API's endpoint rule, written once


class SplitTarget(Section):
    """One entry of `apis`: a RealtimeAPI of the same file and its weight (a shadow's weight: the share mirrored)."""

    name: str
    weight: Integer
    shadow: bool = False  # Cortex v0.31+

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not name:
            raise ValueError("cannot be empty")
        return name

    @field_validator("weight")
    @classmethod
    def _check_weight(cls, weight: int) -> int:
        if weight > TOTAL_WEIGHT:
            raise ValueError(f"must be less than or equal to {TOTAL_WEIGHT}")
        if weight < 0:
            raise ValueError("must be greater than or equal to 0")
        return weight


class TrafficSplitter(Section):
    """One TrafficSplitter of cortex.yaml: a route whose requests each go to one of its APIs, chosen by weight."""

    name: str = Field(max_length=MAX_NAME_LENGTH)
    kind: Literal["TrafficSplitter"]
    networking: SplitNetworking = Field(default_factory=SplitNetworking)
    apis: list[SplitTarget]

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        return Api._check_name(name)  # the same rule as an API's: names share one namespace

    @field_validator("networking", "apis", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any, info: Any) -> Any:
        if value is None:
            return [] if info.field_name == "apis" else {}
        return value

    @property
    def endpoint(self) -> str:
        """The URL path the splitter is served at."""
        return self.networking.endpoint or f"/{self.name}"

    @property
    def primaries(self) -> list[SplitTarget]:
        """The entries requests are split among (every entry but the shadow)."""
        return [target for target in self.apis if not target.shadow]

    @property
    def shadow(self) -> SplitTarget | None:
        """The shadow entry, whose API gets a copy of `weight` percent of the requests; None without one."""
        return next((target for target in self.apis if target.shadow), None)

    def problems(self, realtime_apis: Iterable[object]) -> list[str]:
        """Cortex's checks of a splitter, in Cortex's words: weights, duplicates, shadows, and that each target is one
        of `realtime_apis`."""
        problems = []
        shadows = [target.name for target in self.apis if target.shadow]
        if len(shadows) > 1:
            problems.append("apis: multiple shadow apis detected; only one api is allowed to be marked as a shadow")
        total = sum(target.weight for target in self.primaries)
        if total != TOTAL_WEIGHT:
            which = "weights of all non-shadow apis" if shadows else "weights"
            problems.append(f"apis: expected {which} to sum to {TOTAL_WEIGHT} but found {total}")
        names = [target.name for target in self.apis]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            problems.append(f"apis: {'apis' if len(repeated) > 1 else 'api'} not unique: {', '.join(repeated)}")
        known = set(realtime_apis)
        missing = list(dict.fromkeys(name for name in names if name not in known))
        if len(missing) == 1:
            problems.append(f"apis: api {missing[0]} was either not found or is not a RealtimeAPI")
        elif missing:
            problems.append(f"apis: apis {_and(missing)} were either not found or are not RealtimeAPIs")
        return problems

    def describe(self) -> str:
        """The split in a few words, e.g. `a 30%, b 70%, shadow c 10%`."""
        return ", ".join(f"{'shadow ' if target.shadow else ''}{target.name} {target.weight}%" for target in self.apis)


def _and(names: list[str]) -> str:
    """`a and b`, `a, b, and c`: a list as Cortex's errors wrote one."""
    return " and ".join(names) if len(names) == 2 else ", ".join(names[:-1]) + f", and {names[-1]}"


def reread(config_file: Path, served: list[TrafficSplitter], apis: Iterable[str]) -> list[TrafficSplitter]:
    """The file's TrafficSplitters again (SIGHUP), checked as at start-up and against what is served: the same
    splitters at the same endpoints, each target one of the `apis` served. ConfigError saying why otherwise."""
    splitters = read_config(config_file).splitters
    problems = []
    now = {splitter.name: splitter.endpoint for splitter in splitters}
    before = {splitter.name: splitter.endpoint for splitter in served}
    if now != before:
        problems.append(f"{config_file}: the TrafficSplitters or their endpoints changed (was: {_routes(before)}; "
                        f"now: {_routes(now)}); new weights apply while serving, new splitters and endpoints "
                        "after a restart")
    known = set(apis)
    for splitter in splitters:
        outside = sorted({target.name for target in splitter.apis} - known)
        if outside:
            problems.append(f"{config_file}: api '{splitter.name}' ({KIND}): apis: {', '.join(outside)} "
                            f"{'is' if len(outside) == 1 else 'are'} not served by this engine (RealtimeAPIs added "
                            "to the file are served after a restart)")
    if problems:
        raise ConfigError("\n".join(problems))
    return splitters


def _routes(routes: dict[str, str]) -> str:
    return ", ".join(f"{name} at {endpoint}" for name, endpoint in sorted(routes.items())) or "none"
