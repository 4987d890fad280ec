"""The smaller sections of cortex.yaml (compute, autoscaling, networking, update_strategy, monitoring), the base of
every section, and the value types they share (durations, quantities, YAML integers)."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from engine.project.config_errors import Rules
from engine.units import parse_duration, parse_quantity

_ENDPOINT = re.compile(r"^[A-Za-z0-9_\-./]*$")
_PERCENT = re.compile(r"^([0-9]+)%$")
_COUNT = re.compile(r"^[0-9]+$")


def _seconds(value: Any) -> float:
    """A Go duration string in seconds; the error says what a duration looks like."""
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError("must be a duration string with a unit, such as 100ms, 0.5s or 5m") from None


def _positive_seconds(value: Any) -> float:
    """A duration greater than zero."""
    seconds = _seconds(value)
    if seconds <= 0:
        raise ValueError("must be a duration greater than 0, such as 100ms or 0.5s")
    return seconds


def _non_negative_seconds(value: Any) -> float:
    """A duration of zero or more."""
    seconds = _seconds(value)
    if seconds < 0:
        raise ValueError("must be a duration of 0s or more, such as 0s, 30s or 5m")
    return seconds


def _window_seconds(value: Any) -> float:
    """An autoscaling window: at least 10s and a multiple of 10s (the autoscaler's tick)."""
    seconds = _seconds(value)
    if seconds < 10 or abs(seconds / 10 - round(seconds / 10)) > 1e-9:
        raise ValueError("must be a duration of at least 10s and a multiple of 10s, such as 60s or 2m")
    return seconds


def _quantity(value: Any, minimum: float, text: str) -> float:
    """A Kubernetes quantity of at least `minimum` (`text` is how the minimum is written)."""
    try:
        number = parse_quantity(value)
    except ValueError:
        raise ValueError("must be a Kubernetes quantity such as 500m, 2, 512Mi or 1Gi") from None
    if number < minimum:
        raise ValueError(f"must be at least {text}")
    return number


def _cpu(value: Any) -> float:
    """CPUs, at least 20m."""
    return _quantity(value, 0.02, "20m (0.02 CPU)")


def _mem(value: Any) -> float:
    """Bytes of memory, at least 20Mi."""
    return _quantity(value, 20 * 2**20, "20Mi")


def _whole_number(value: Any) -> Any:
    """2.0 as 2, as Cortex read YAML integers; anything else is left to the integer check."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_whole_number)]
PositiveDuration = Annotated[float, BeforeValidator(_positive_seconds)]
NonNegativeDuration = Annotated[float, BeforeValidator(_non_negative_seconds)]
WindowDuration = Annotated[float, BeforeValidator(_window_seconds)]
Cpu = Annotated[float, BeforeValidator(_cpu)]
Memory = Annotated[float, BeforeValidator(_mem)]


class Section(BaseModel):
    """A cortex.yaml mapping: unknown keys are errors, and YAML types are taken as written (no "2" for 2)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Compute(Section):
    """Resources an API asks for; locally only `gpu` and `inf` choose the hardware target."""

    cpu: Cpu | None = None
    mem: Memory | None = None
    gpu: Integer = Field(default=0, ge=0)
    inf: Integer = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_accelerator(self) -> Compute:
        rules = Rules("Compute")
        if self.gpu and self.inf:
            rules.add((), f"gpu and inf resources cannot be used together (given: gpu {self.gpu}, inf {self.inf})")
        rules.check()
        return self


class Autoscaling(Section):
    """Cortex's autoscaler settings; locally only `max_replica_concurrency` applies."""

    min_replicas: Integer = Field(default=1, gt=0)
    max_replicas: Integer = Field(default=100, gt=0)
    init_replicas: Integer | None = Field(default=None, gt=0)
    target_replica_concurrency: float | None = Field(default=None, gt=0)
    max_replica_concurrency: Integer = Field(default=1024, gt=0, le=30000)
    window: WindowDuration = 60.0
    downscale_stabilization_period: NonNegativeDuration = 300.0
    upscale_stabilization_period: NonNegativeDuration = 60.0
    max_downscale_factor: float = Field(default=0.75, ge=0, lt=1)
    max_upscale_factor: float = Field(default=1.5, gt=1)
    downscale_tolerance: float = Field(default=0.05, ge=0, lt=1)
    upscale_tolerance: float = Field(default=0.05, ge=0)

    @model_validator(mode="after")
    def _check_replicas(self) -> Autoscaling:
        rules = Rules("Autoscaling")
        if self.min_replicas > self.max_replicas:
            rules.add("min_replicas", f"must be less than or equal to max_replicas ({self.max_replicas}) "
                                      f"(given: {self.min_replicas})")
        if self.init_replicas is not None and not self.min_replicas <= self.init_replicas <= self.max_replicas:
            rules.add("init_replicas", f"must be between min_replicas ({self.min_replicas}) and max_replicas "
                                       f"({self.max_replicas}) (given: {self.init_replicas})")
        rules.check()
        return self


class Networking(Section):
    """Where the API is served; `endpoint` defaults to /<name>."""

    endpoint: str | None = None
    api_gateway: Literal["public", "none"] = "public"
    local_port: Integer | None = Field(default=None, gt=0, le=65535)

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, endpoint: str | None) -> str | None:
        if endpoint is None:
            return None
        if not _ENDPOINT.fullmatch(endpoint) or "//" in endpoint or len(endpoint) > 1000:
            raise ValueError("may only contain letters, digits and _ - . /, without '//', at most 1000 characters")
        normalised = "/" + endpoint.strip("/")
        if normalised == "/":
            raise ValueError("cannot be '/' (with one API, engine serves it at / too)")
        return normalised


class UpdateStrategy(Section):
    """Rolling-update settings of a cluster deployment."""

    max_surge: Any = "25%"
    max_unavailable: Any = "25%"

    @field_validator("max_surge", "max_unavailable")
    @classmethod
    def _check_amount(cls, value: Any) -> int | str:
        if isinstance(value, str):
            if _COUNT.fullmatch(value.strip()):
                return int(value)
            percent = _PERCENT.fullmatch(value.strip())
            if percent and int(percent.group(1)) <= 100:
                return value.strip()
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise ValueError("must be a percentage from 0% to 100% or an integer of 0 or more")

    @model_validator(mode="after")
    def _not_both_zero(self) -> UpdateStrategy:
        rules = Rules("UpdateStrategy")
        if _is_zero(self.max_surge) and _is_zero(self.max_unavailable):
            rules.add((), "max_surge and max_unavailable cannot both be zero")
        rules.check()
        return self


class Monitoring(Section):
    """Prediction monitoring of a cluster deployment."""

    model_type: Literal["classification", "regression"]
    key: str | None = None


def _is_zero(amount: int | str) -> bool:
    """True for 0 and 0%."""
    return str(amount).rstrip("%").lstrip("0") == ""
