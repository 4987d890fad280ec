"""cortex.yaml as pydantic models: both schema generations, Cortex's defaults and rules, one internal form."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, ValidationError, field_validator, \
    model_validator

from engine.config_errors import format_validation_error
from engine.errors import ConfigError
from engine.units import parse_duration, parse_quantity

DEFAULT_MODEL_NAME = "_cortex_default"
SERVER_ROUTES = ("/healthz", "/readyz", "/metrics")

_API_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # DNS-1035 label
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_ENDPOINT = re.compile(r"^[A-Za-z0-9_\-./]*$")
_PERCENT = re.compile(r"^(\d+)%$")


def _seconds(value: Any) -> float:
    if not isinstance(value, str):
        raise ValueError("must be a duration string such as 100ms, 0.5s or 5m")
    return parse_duration(value)


def _quantity(value: Any) -> float:
    return parse_quantity(value)


Duration = Annotated[float, BeforeValidator(_seconds)]
Quantity = Annotated[float, BeforeValidator(_quantity)]


class Section(BaseModel):
    """A cortex.yaml mapping: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class ModelPath(Section):
    """One named model of `models.paths` (`model_path` in v0.22–v0.24, `path` from v0.25)."""

    name: str
    path: str | None = None
    model_path: str | None = None
    signature_key: str | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if name == DEFAULT_MODEL_NAME:
            raise ValueError(f"'{DEFAULT_MODEL_NAME}' is reserved for the single model of model_path")
        if not _MODEL_NAME.match(name):
            raise ValueError("may only contain letters, digits, '-' and '_'")
        return name

    @model_validator(mode="after")
    def _one_path(self) -> ModelPath:
        if self.path and self.model_path:
            raise ValueError("give path (v0.25+) or model_path (v0.22–v0.24), not both")
        if not (self.path or self.model_path):
            raise ValueError("path is required (the model's directory, local or s3://)")
        self.path, self.model_path = self.path or self.model_path, None
        return self


class Models(Section):
    """Where an API's models are: one `path`, named `paths`, or a `dir` of models; optional LRU cache sizes."""

    path: str | None = None
    paths: list[ModelPath] | None = None
    dir: str | None = None
    signature_key: str | None = None
    cache_size: int | None = Field(None, gt=0)
    disk_cache_size: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Models:
        given = [name for name in ("path", "paths", "dir") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of path (one model), paths (a list of named models) or dir (a "
                             f"directory whose sub-directories are models); given: {', '.join(given) or 'none'}")
        if self.paths is not None:
            if not self.paths:
                raise ValueError("paths must list at least one model")
            names = [model.name for model in self.paths]
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise ValueError(f"cannot have several models with the same name: {', '.join(duplicates)}")
        if (self.cache_size is None) != (self.disk_cache_size is None):
            raise ValueError('specify both "cache_size" and "disk_cache_size" or neither of them')
        if self.cache_size is not None and self.cache_size > self.disk_cache_size:
            raise ValueError(f"cache_size ({self.cache_size}) must be less than or equal to disk_cache_size "
                             f"({self.disk_cache_size})")
        return self

    @property
    def caching(self) -> bool:
        """True when models are loaded on demand and evicted least-recently-used."""
        return self.cache_size is not None


class ServerSideBatching(Section):
    """Gather concurrent requests into one predict call."""

    max_batch_size: int = Field(ge=2, le=1024)
    batch_interval: Duration = Field(gt=0)


class Predictor(Section):
    """The `predictor` section; after validation `models` holds every model source, whatever its spelling."""

    type: str
    path: str
    model_path: str | None = None
    signature_key: str | None = None
    models: Models | None = None
    multi_model_reloading: Models | None = None
    server_side_batching: ServerSideBatching | None = None
    processes_per_replica: int = Field(1, ge=1, le=100)
    threads_per_process: int = Field(1, ge=1)
    config: dict[StrictStr, Any] = Field(default_factory=dict)
    python_path: str | None = None
    image: str | None = None
    tensorflow_serving_image: str | None = None
    env: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("config", "env", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("path")
    @classmethod
    def _check_path(cls, path: str) -> str:
        return _relative_path(path, "predictor.path")

    @field_validator("python_path")
    @classmethod
    def _check_python_path(cls, path: str | None) -> str | None:
        if path is None:
            return None
        if path.strip() in (".", "./", "./."):
            raise ValueError("the project root is already on sys.path; remove python_path or name a sub-directory")
        return _relative_path(path, "python_path")

    @field_validator("env")
    @classmethod
    def _check_env(cls, env: dict[str, str]) -> dict[str, str]:
        reserved = sorted(key for key in env if key.startswith("CORTEX_"))
        if reserved:
            raise ValueError(f"environment variables starting with CORTEX_ are reserved: {', '.join(reserved)}")
        return env

    @model_validator(mode="after")
    def _normalise_models(self) -> Predictor:
        sources = [name for name in ("model_path", "models", "multi_model_reloading") if getattr(self, name)]
        if len(sources) > 1:
            raise ValueError(f"give one of model_path, models and multi_model_reloading, not {' and '.join(sources)}")
        models = self.models or self.multi_model_reloading
        if self.model_path:
            models = Models(path=self.model_path)
        if self.signature_key and models is not None:
            if models.signature_key and models.signature_key != self.signature_key:
                raise ValueError("signature_key is given both in predictor and in its models section")
            models.signature_key = self.signature_key
        self.models, self.model_path = models, None
        return self

    def type_fields_set(self) -> list[str]:
        """The fields given that only some predictor types accept."""
        fields = [name for name in ("tensorflow_serving_image", "multi_model_reloading") if getattr(self, name)]
        models = self.models
        if self.signature_key or (models and (models.signature_key or any(p.signature_key for p in models.paths or ()))):
            fields.append("signature_key")
        return fields


class Compute(Section):
    """Resources an API asks for; locally only `gpu` and `inf` choose the hardware target."""

    cpu: Quantity | None = None
    mem: Quantity | None = None
    gpu: int = Field(0, ge=0)
    inf: int = Field(0, ge=0)

    @field_validator("cpu")
    @classmethod
    def _check_cpu(cls, cpu: float | None) -> float | None:
        if cpu is not None and cpu < 0.02:
            raise ValueError("must be at least 20m (0.02 CPU)")
        return cpu

    @field_validator("mem")
    @classmethod
    def _check_mem(cls, mem: float | None) -> float | None:
        if mem is not None and mem < 20 * 2**20:
            raise ValueError("must be at least 20Mi")
        return mem

    @model_validator(mode="after")
    def _one_accelerator(self) -> Compute:
        if self.gpu and self.inf:
            raise ValueError("gpu and inf resources cannot be used together")
        return self


class Autoscaling(Section):
    """Cortex's autoscaler settings; locally only `max_replica_concurrency` applies."""

    min_replicas: int = Field(1, gt=0)
    max_replicas: int = Field(100, gt=0)
    init_replicas: int | None = Field(None, gt=0)
    target_replica_concurrency: float | None = Field(None, gt=0)
    max_replica_concurrency: int = Field(1024, gt=0, le=30000)
    window: Duration = 60.0
    downscale_stabilization_period: Duration = Field(300.0, ge=0)
    upscale_stabilization_period: Duration = Field(60.0, ge=0)
    max_downscale_factor: float = Field(0.75, ge=0, lt=1)
    max_upscale_factor: float = Field(1.5, gt=1)
    downscale_tolerance: float = Field(0.05, ge=0, lt=1)
    upscale_tolerance: float = Field(0.05, ge=0)

    @field_validator("window")
    @classmethod
    def _check_window(cls, window: float) -> float:
        if window < 10 or abs(window / 10 - round(window / 10)) > 1e-9:
            raise ValueError("must be at least 10s and a multiple of 10s")
        return window

    @model_validator(mode="after")
    def _check_replicas(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})")
        init_replicas = self.min_replicas if self.init_replicas is None else self.init_replicas
        if not self.min_replicas <= init_replicas <= self.max_replicas:
            raise ValueError(f"init_replicas ({init_replicas}) must be between min_replicas "
                             f"({self.min_replicas}) and max_replicas ({self.max_replicas})")
        return self


class Networking(Section):
    """Where the API is served; `endpoint` defaults to /<name>."""

    endpoint: str | None = None
    api_gateway: Literal["public", "none"] = "public"
    local_port: int | None = Field(None, gt=0, le=65535)

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, endpoint: str | None) -> str | None:
        if endpoint is None:
            return None
        if not _ENDPOINT.match(endpoint) or "//" in endpoint or len(endpoint) > 1000:
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
        percent = _PERCENT.match(value) if isinstance(value, str) else None
        if percent and 0 <= int(percent.group(1)) <= 100:
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise ValueError("must be a percentage from 0% to 100% or an integer >= 0")

    @model_validator(mode="after")
    def _not_both_zero(self) -> UpdateStrategy:
        if str(self.max_surge).rstrip("%") == "0" and str(self.max_unavailable).rstrip("%") == "0":
            raise ValueError("max_surge and max_unavailable cannot both be zero")
        return self


class Monitoring(Section):
    """Prediction monitoring of a cluster deployment."""

    model_type: Literal["classification", "regression"]
    key: str | None = None


class Api(Section):
    """One RealtimeAPI of cortex.yaml."""

    name: str = Field(max_length=42)
    kind: str
    predictor: Predictor
    compute: Compute = Field(default_factory=Compute)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    networking: Networking = Field(default_factory=Networking)
    update_strategy: UpdateStrategy | None = None
    monitoring: Monitoring | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_sections(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items()
                    if not (value is None and key in ("compute", "autoscaling", "networking"))}
        return data

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not _API_NAME.match(name):
            raise ValueError("must be a DNS-1035 label: lower-case letters, digits and '-', starting with a letter "
                             "and not ending with '-'")
        return name

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, kind: str) -> str:
        if kind in ("BatchAPI", "TrafficSplitter", "TaskAPI", "AsyncAPI"):
            raise ValueError(f"{kind} is not supported by engine serve; only RealtimeAPI is")
        if kind != "RealtimeAPI":
            raise ValueError("must be RealtimeAPI")
        return kind

    @model_validator(mode="after")
    def _cross_checks(self) -> Api:
        predictor, scaling = self.predictor, self.autoscaling
        target = scaling.target_replica_concurrency or predictor.processes_per_replica * predictor.threads_per_process
        if target > scaling.max_replica_concurrency:
            raise ValueError(f"autoscaling.target_replica_concurrency ({target:g}) must be "
                             f"<= autoscaling.max_replica_concurrency ({scaling.max_replica_concurrency})")
        if self.compute.inf and (self.compute.inf * 4) % predictor.processes_per_replica:
            allowed = [n for n in range(1, self.compute.inf * 4 + 1) if (self.compute.inf * 4) % n == 0]
            raise ValueError(f"cannot evenly distribute {self.compute.inf} Inferentia chip(s) "
                             f"({self.compute.inf * 4} NeuronCores) over {predictor.processes_per_replica} processes; "
                             f"predictor.processes_per_replica may be one of {allowed}")
        if predictor.models and predictor.models.caching and predictor.processes_per_replica > 1:
            raise ValueError("with model caching (cache_size) predictor.processes_per_replica must be 1, "
                             f"not {predictor.processes_per_replica}")
        return self

    @property
    def endpoint(self) -> str:
        """The URL path the API is served at."""
        return self.networking.endpoint or f"/{self.name}"


def _relative_path(path: str, field: str) -> str:
    if not path.strip():
        raise ValueError("cannot be empty")
    if path.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", path):
        raise ValueError("must be a path relative to the project directory")
    return path.strip().removeprefix("./").rstrip("/")


def load_config(config_file: Path) -> list[Api]:
    """Read and validate cortex.yaml; raise one ConfigError listing every problem."""
    try:
        raw = yaml.safe_load(config_file.read_text())
    except OSError as error:
        raise ConfigError(f"{config_file}: cannot read the configuration file: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{config_file}: not valid YAML: {error}") from None
    if raw is None or raw == []:
        raise ConfigError(f"{config_file}: no APIs are defined; the file must be a YAML list of APIs "
                          "(each item starting with '- name: ...')")
    if isinstance(raw, dict):
        raw = [raw] if "name" in raw and "predictor" in raw else raw
    if not isinstance(raw, list):
        raise ConfigError(f"{config_file}: must be a YAML list of APIs (each item starting with '- name: ...'), "
                          f"not a {type(raw).__name__}")
    apis, problems = [], []
    for index, item in enumerate(raw):
        label = f"api '{item['name']}'" if isinstance(item, dict) and isinstance(item.get("name"), str) \
            else f"api #{index + 1}"
        if not isinstance(item, dict):
            problems.append(f"{config_file}: {label}: must be a mapping with name, kind and predictor")
            continue
        try:
            apis.append(Api.model_validate(item))
        except ValidationError as error:
            problems += [f"{config_file}: {label}: {line}" for line in format_validation_error(error, Api)]
    problems += _check_across_apis(apis, config_file)
    if problems:
        raise ConfigError("\n".join(problems))
    return apis


def _check_across_apis(apis: list[Api], config_file: Path) -> list[str]:
    problems, names, endpoints = [], set(), {}
    for api in apis:
        if api.name in names:
            problems.append(f"{config_file}: api '{api.name}': name: must be unique across APIs")
        names.add(api.name)
        if api.endpoint in SERVER_ROUTES:
            problems.append(f"{config_file}: api '{api.name}': endpoint {api.endpoint} collides with engine's own "
                            f"route; rename the API or set networking.endpoint (reserved: {', '.join(SERVER_ROUTES)})")
        elif api.endpoint in endpoints:
            problems.append(f"{config_file}: api '{api.name}': networking.endpoint {api.endpoint} is already used "
                            f"by api '{endpoints[api.endpoint]}'")
        endpoints.setdefault(api.endpoint, api.name)
    return problems


def not_applied_locally(api: Api) -> list[str]:
    """Fields the user set that only a Cortex cluster would apply; engine accepts and ignores them."""
    fields = [f"predictor.{name}" for name in ("image", "tensorflow_serving_image") if getattr(api.predictor, name)]
    fields += [f"compute.{name}" for name in ("cpu", "mem") if name in api.compute.model_fields_set]
    fields += [f"autoscaling.{name}" for name in sorted(api.autoscaling.model_fields_set)
               if name != "max_replica_concurrency"]
    fields += [f"networking.{name}" for name in ("api_gateway", "local_port") if name in api.networking.model_fields_set]
    fields += [name for name in ("update_strategy", "monitoring") if getattr(api, name) is not None]
    return fields
