"""cortex.yaml as pydantic models: both schema generations, Cortex's defaults and rules, one internal form."""
from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from engine.errors import ConfigError
from engine.project.config_errors import Rules, format_validation_error
from engine.project.sections import (
    Autoscaling,
    Compute,
    Integer,
    Monitoring,
    Networking,
    PositiveDuration,
    Section,
    UpdateStrategy,
)
from engine.routes import reserved, reserved_shown
from engine.settings import byte_size

if TYPE_CHECKING:
    from engine.project.batch import BatchApi
    from engine.project.splitters import TrafficSplitter

DEFAULT_MODEL_NAME = "_cortex_default"
MAX_NAME_LENGTH = 42

_API_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # DNS-1035 label
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_MODEL_SOURCES = ("model_path", "models", "multi_model_reloading")


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
            raise ValueError(f"'{DEFAULT_MODEL_NAME}' is reserved for the single model of predictor.model_path")
        if not _MODEL_NAME.fullmatch(name):
            raise ValueError("must be a model name: letters, digits, '-' and '_' only")
        return name

    @model_validator(mode="after")
    def _one_path(self) -> ModelPath:
        rules = Rules("ModelPath")
        given = self.path if self.path is not None else self.model_path
        if self.path is not None and self.model_path is not None:
            rules.add("model_path", "give path (Cortex v0.25+) or model_path (v0.22–v0.24), not both")
        elif given is None:
            rules.add("path", "is required: the model's directory, local or s3:// (model_path in Cortex v0.22–v0.24)")
        elif not given.strip():
            rules.add("path" if self.path is not None else "model_path", "cannot be empty")
        rules.check()
        self.path, self.model_path = given, None
        return self


def _bytes(value: Any) -> Any:
    """A size in bytes: a whole number, or a string with a unit (512MiB, 2GB); anything else is left to the check."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, str):
        return value
    try:
        return byte_size(value)
    except ValueError:
        raise ValueError("must be a size: a number of bytes, or one with a unit such as 512MiB or 2GB") from None


ByteSize = Annotated[int, BeforeValidator(_bytes)]


class Models(Section):
    """Where an API's models are: one `path`, named `paths`, or a `dir` of models; optional LRU cache sizes, and
    engine's byte budgets (per process, on top of --model-memory and --model-disk)."""

    path: str | None = None
    paths: list[ModelPath] | None = None
    dir: str | None = None
    signature_key: str | None = None
    cache_size: Integer | None = Field(default=None, gt=0)
    disk_cache_size: Integer | None = Field(default=None, gt=0)
    memory_budget: ByteSize | None = Field(default=None, gt=0)  # engine only: bytes of loaded models
    disk_budget: ByteSize | None = Field(default=None, gt=0)  # engine only: bytes of downloaded (S3) copies

    @model_validator(mode="after")
    def _check(self) -> Models:
        rules = Rules("Models")
        self._check_source(rules)
        self._check_names(rules)
        self._check_cache(rules)
        rules.check()
        return self

    def _check_source(self, rules: Rules) -> None:
        """Exactly one of path, paths and dir, none of them empty."""
        given = [name for name in ("path", "paths", "dir") if getattr(self, name) is not None]
        if len(given) != 1:
            rules.add((), "give exactly one of path (one model), paths (a list of named models) or dir (a directory "
                          f"whose sub-directories are models); given: {' and '.join(given) or 'none'}")
        for name in ("path", "dir"):
            if getattr(self, name) is not None and not getattr(self, name).strip():
                rules.add(name, "cannot be empty")
        if self.paths == []:
            rules.add("paths", "must list at least one model")

    def _check_names(self, rules: Rules) -> None:
        """Model names are unique."""
        first: dict[str, int] = {}
        for index, model in enumerate(self.paths or ()):
            if model.name in first:
                earlier = f"paths[{first[model.name]}]"
                rules.add(("paths", index, "name"), f"'{model.name}' is already the name of {earlier}; model names "
                                                    "must be unique")
            first.setdefault(model.name, index)

    def _check_cache(self, rules: Rules) -> None:
        """cache_size and disk_cache_size come together, and the memory cache is not larger than the disk cache."""
        if (self.cache_size is None) != (self.disk_cache_size is None):
            missing, given = ("disk_cache_size", "cache_size") if self.disk_cache_size is None \
                else ("cache_size", "disk_cache_size")
            rules.add(missing, f"is required when {given} is given: specify both cache_size and disk_cache_size "
                               "or neither of them")
        elif self.cache_size is not None and self.disk_cache_size is not None \
                and self.cache_size > self.disk_cache_size:
            rules.add("cache_size", f"must be less than or equal to disk_cache_size ({self.disk_cache_size}) "
                                    f"(given: {self.cache_size})")

    @property
    def caching(self) -> bool:
        """True when models are loaded on demand and evicted least-recently-used."""
        return self.cache_size is not None


class ServerSideBatching(Section):
    """Gather concurrent requests into one predict call."""

    max_batch_size: Integer = Field(ge=2, le=1024)
    batch_interval: PositiveDuration
    # when_free: a batch starts as soon as none runs (max_concurrent_batches), with what waits; interval: Cortex's
    # (full, or batch_interval after its first request)
    dispatch: Literal["when_free", "interval"] = "when_free"
    max_concurrent_batches: Integer = Field(default=1, ge=1, le=1024)  # engine only: batches at once per process


class Predictor(Section):
    """The `predictor` section; after validation `models` holds every model source, whatever its spelling."""

    type: str
    path: str
    model_path: str | None = None
    signature_key: str | None = None
    models: Models | None = None
    multi_model_reloading: Models | None = None
    server_side_batching: ServerSideBatching | None = None
    processes_per_replica: Integer = Field(default=1, ge=1, le=100)
    threads_per_process: Integer = Field(default=1, ge=1)
    config: dict[str, Any] = Field(default_factory=dict)
    python_path: str | None = None
    image: str | None = None
    tensorflow_serving_image: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # engine only: JSON lines of requests replayed through the API before it is ready (engine.serving.warmup)
    warmup_file: str | None = None

    @field_validator("config", "env", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("path")
    @classmethod
    def _check_path(cls, path: str) -> str:
        relative = _relative_path(path)
        if relative in ("", "."):
            raise ValueError("must name the predictor file, e.g. predictor.py")
        return relative

    @field_validator("warmup_file")
    @classmethod
    def _check_warmup_file(cls, path: str | None) -> str | None:
        relative = None if path is None else _relative_path(path)
        if relative in ("", "."):
            raise ValueError("must name a file of warm-up requests, e.g. warmup.jsonl")
        return relative

    @field_validator("python_path")
    @classmethod
    def _check_python_path(cls, path: str | None) -> str | None:
        relative = None if path is None else _relative_path(path)
        if relative in ("", "."):
            raise ValueError("the project root is already on sys.path; remove python_path or name a sub-directory")
        return relative

    @field_validator("env")
    @classmethod
    def _check_env(cls, env: dict[str, str]) -> dict[str, str]:
        reserved = sorted(key for key in env if key.startswith("CORTEX_"))
        if reserved:
            raise ValueError(f"environment variables starting with CORTEX_ are reserved: {', '.join(reserved)}")
        return env

    @model_validator(mode="after")
    def _normalise_models(self) -> Predictor:
        rules = Rules("Predictor")
        sources = [name for name in _MODEL_SOURCES if getattr(self, name) is not None]
        if len(sources) > 1:
            rules.add(sources[1], f"cannot be given together with {sources[0]}; give one of model_path (Cortex "
                                  "v0.22–v0.24), models, or multi_model_reloading (python, v0.25)")
        if self.model_path is not None and not self.model_path.strip():
            rules.add("model_path", "cannot be empty")
        models = self.models or self.multi_model_reloading
        if self.signature_key and models and models.signature_key not in (None, self.signature_key):
            rules.add("signature_key", f"differs from {sources[-1]}.signature_key; give it in one place")
        rules.check()
        if self.model_path is not None:
            models = Models(path=self.model_path)
        if self.signature_key is not None and models is not None:
            models.signature_key = self.signature_key
        self.models, self.model_path = models, None
        return self

    def type_fields_set(self) -> list[str]:
        """The fields given that only some predictor types accept."""
        fields = [name for name in ("tensorflow_serving_image", "multi_model_reloading") if getattr(self, name)]
        if any(self._signature_keys()):
            fields.append("signature_key")
        return fields

    def _signature_keys(self) -> list[str | None]:
        """Every signature_key given: the predictor's, the models section's and each named model's."""
        if self.models is None:
            return [self.signature_key]
        return [self.signature_key, self.models.signature_key, *(p.signature_key for p in self.models.paths or ())]


class Api(Section):
    """One RealtimeAPI of cortex.yaml."""

    name: str = Field(max_length=MAX_NAME_LENGTH)
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
        if not _API_NAME.fullmatch(name):
            raise ValueError("must be a DNS-1035 label: lower-case letters, digits and '-', starting with a letter "
                             "and not ending with '-'")
        return name

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, kind: str) -> str:
        if kind in ("TaskAPI", "AsyncAPI"):
            raise ValueError(f"{kind} is not supported by engine serve; only RealtimeAPI, BatchAPI and "
                             "TrafficSplitter are")
        if kind == "BatchAPI":  # read_config validates it as engine.project.batch.BatchApi
            raise ValueError("a BatchAPI is validated as BatchApi, not as a RealtimeAPI")
        if kind != "RealtimeAPI":
            raise ValueError("must be RealtimeAPI, BatchAPI or TrafficSplitter")
        return kind

    @model_validator(mode="after")
    def _cross_checks(self) -> Api:
        rules = Rules("Api")
        self._check_concurrency(rules)
        self._check_processes(rules)
        rules.check()
        return self

    def _check_concurrency(self, rules: Rules) -> None:
        """target_replica_concurrency (given or defaulted) is not above max_replica_concurrency."""
        scaling, predictor = self.autoscaling, self.predictor
        limit, target = scaling.max_replica_concurrency, scaling.target_replica_concurrency
        default = predictor.processes_per_replica * predictor.threads_per_process
        if target is not None and target > limit:
            rules.add(("autoscaling", "target_replica_concurrency"), f"must be less than or equal to "
                      f"autoscaling.max_replica_concurrency ({limit}) (given: {target:g})")
        elif target is None and default > limit:
            rules.add(("autoscaling", "target_replica_concurrency"), f"defaults to processes_per_replica * "
                      f"threads_per_process ({default}), which must be less than or equal to "
                      f"autoscaling.max_replica_concurrency ({limit}); set one of them")

    def _check_processes(self, rules: Rules) -> None:
        """processes_per_replica fits model caching (how it fits the hardware is the hardware plugin's check)."""
        processes = self.predictor.processes_per_replica
        if self.predictor.models and self.predictor.models.caching and processes > 1:
            rules.add(("predictor", "processes_per_replica"), "must be 1 when model caching is on (cache_size and "
                      f"disk_cache_size are set) (given: {processes})")

    @property
    def endpoint(self) -> str:
        """The URL path the API is served at."""
        return self.networking.endpoint or f"/{self.name}"


def _relative_path(path: str) -> str:
    """`path` without a leading `./` or a trailing `/`; ValueError when it is empty or leaves the project."""
    path = path.strip()
    if not path:
        raise ValueError("cannot be empty")
    if path.startswith(("/", "~", "\\")) or re.match(r"^[A-Za-z]:[\\/]", path):
        raise ValueError("must be a path relative to the project directory")
    if ".." in re.split(r"[\\/]", path):
        raise ValueError("must stay inside the project directory (no '..')")
    while path.startswith("./"):
        path = path[2:]
    return path.rstrip("/")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice in one mapping",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(config_file: str | Path, hints: dict[str, str] | None = None) -> list[Api]:
    """Read and validate cortex.yaml (its BatchAPIs and TrafficSplitters too); raise one ConfigError listing every
    problem, one per line; the RealtimeAPIs.

    `hints` adds a sentence to the problems of a field (by its dotted path, e.g. "predictor.type")."""
    return read_config(config_file, hints).apis


@dataclass
class ConfigFile:
    """What a configuration file defines, checked: its RealtimeAPIs, TrafficSplitters and BatchAPIs."""

    apis: list[Api]
    splitters: list[TrafficSplitter]
    batch_apis: list[BatchApi] = field(default_factory=list)


def read_config(config_file: str | Path, hints: dict[str, str] | None = None) -> ConfigFile:
    """Read and validate cortex.yaml as load_config does; its RealtimeAPIs, TrafficSplitters and BatchAPIs."""
    from engine.project.batch import KIND as BATCH_KIND  # batch.py and splitters.py build on this module
    from engine.project.batch import BatchApi
    from engine.project.splitters import KIND, TrafficSplitter

    config_file = Path(config_file)
    items = _api_items(_read_yaml(config_file), config_file)
    apis: dict[int, Api] = {}
    batch_apis: dict[int, BatchApi] = {}
    splitters: dict[int, TrafficSplitter] = {}
    problems: list[str] = []
    kinds: dict[Any, type[Api | TrafficSplitter]] = {KIND: TrafficSplitter, BATCH_KIND: BatchApi}
    for index, item in enumerate(items):
        label = _label(item, index)
        if not isinstance(item, dict):
            problems.append(f"{config_file}: {label}: must be a mapping with name, kind and predictor "
                            f"(given: {_kind_of(item)})")
            continue
        model = kinds.get(item.get("kind"), Api)
        try:
            if model is TrafficSplitter:
                splitters[index] = TrafficSplitter.model_validate(item)
            elif model is BatchApi:
                batch_apis[index] = BatchApi.model_validate(item)
            else:
                apis[index] = Api.model_validate(item)
        except ValidationError as error:
            label += f" ({item['kind']})" if model is not Api else ""
            problems += [f"{config_file}: {label}: {_with_hint(line, hints or {})}"
                         for line in format_validation_error(error, model)]
    realtime = [item.get("name") for item in items if isinstance(item, dict) and item.get("kind") == "RealtimeAPI"]
    for splitter in splitters.values():
        problems += [f"{config_file}: api '{splitter.name}' ({KIND}): {problem}"
                     for problem in splitter.problems(realtime)]
    entries: dict[int, Api | TrafficSplitter] = {**apis, **batch_apis, **splitters}
    problems += _check_across_apis(dict(sorted(entries.items())), config_file)
    if problems:
        raise ConfigError("\n".join(problems))
    return ConfigFile(list(apis.values()), list(splitters.values()), list(batch_apis.values()))


def _with_hint(problem: str, hints: dict[str, str]) -> str:
    field = problem.partition(": ")[0]
    return f"{problem}; {hints[field]}" if field in hints else problem


def _read_yaml(config_file: Path) -> Any:
    """The parsed YAML of the file; ConfigError when it cannot be read or parsed."""
    try:
        return yaml.load(config_file.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except OSError as error:
        raise ConfigError(f"{config_file}: cannot read the configuration file: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{config_file}: not a text file (it is not valid UTF-8)") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{config_file}: not valid YAML: {_yaml_problem(error)}") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where."""
    if not isinstance(error, yaml.MarkedYAMLError):
        return " ".join(str(error).split())
    mark = error.problem_mark or error.context_mark
    context = f" {error.context}" if error.context else ""
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{error.problem or 'syntax error'}{context}{where}"


def _api_items(raw: Any, config_file: Path) -> list[Any]:
    """The list of APIs of the file; ConfigError when the file is empty or is not a list."""
    if raw is None or raw == []:
        raise ConfigError(f"{config_file}: no APIs are defined; the file must be a YAML list of APIs "
                          "(each item starting with '- name: ...')")
    if isinstance(raw, dict):
        raise ConfigError(f"{config_file}: must be a YAML list of APIs, but it is a single mapping; start each API "
                          "with '- ' (e.g. '- name: my-api', with the other keys indented under it)")
    if not isinstance(raw, list):
        raise ConfigError(f"{config_file}: must be a YAML list of APIs (each item starting with '- name: ...'), "
                          f"not {_kind_of(raw)}")
    return raw


def _label(item: Any, index: int) -> str:
    """How errors name an API: by its name when that is valid, else by its position (`api #2`)."""
    name = item.get("name") if isinstance(item, dict) else None
    if isinstance(name, str) and len(name) <= MAX_NAME_LENGTH and _API_NAME.fullmatch(name):
        return f"api '{name}'"
    return f"api #{index + 1}"


def _kind_of(value: Any) -> str:
    """A YAML value's kind in words, such as `a string ('abc')`."""
    kinds = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list"}
    text = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return "nothing (null)" if value is None else f"{kinds.get(type(value), type(value).__name__)} ({text})"


def _check_across_apis(apis: dict[int, Api | TrafficSplitter], config_file: Path) -> list[str]:
    """Names and endpoints are unique and do not collide with engine's own routes (`apis` by position in the file)."""
    problems: list[str] = []
    names: dict[str, int] = {}
    endpoints: dict[str, str] = {}
    for index, api in apis.items():
        prefix = f"{config_file}: api '{api.name}'"
        if api.name in names:
            problems.append(f"{prefix}: name: '{api.name}' is already the name of api #{names[api.name] + 1}; "
                            "names must be unique across APIs")
        names.setdefault(api.name, index)
        field = "networking.endpoint" if api.networking.endpoint else "name"
        if reserved(api.endpoint):
            problems.append(f"{prefix}: {field}: the endpoint {api.endpoint} collides with a route engine serves "
                            f"itself ({reserved_shown()}); rename the API or set networking.endpoint")
        elif api.endpoint in endpoints and endpoints[api.endpoint] != api.name:
            problems.append(f"{prefix}: {field}: the endpoint {api.endpoint} is already used by api "
                            f"'{endpoints[api.endpoint]}'; endpoints must be unique across APIs")
        endpoints.setdefault(api.endpoint, api.name)
    return problems


def not_applied_locally(api: Api) -> list[str]:
    """Fields the user set that only a Cortex cluster would apply; engine accepts and ignores them."""
    fields = [f"predictor.{name}" for name in ("image", "tensorflow_serving_image") if getattr(api.predictor, name)]
    fields += [f"compute.{name}" for name in ("cpu", "mem") if getattr(api.compute, name) is not None]
    fields += [f"autoscaling.{name}" for name in Autoscaling.model_fields
               if name in api.autoscaling.model_fields_set and name != "max_replica_concurrency"]
    fields += [f"networking.{name}" for name in ("api_gateway", "local_port")
               if name in api.networking.model_fields_set]
    fields += [name for name in ("update_strategy", "monitoring") if getattr(api, name) is not None]
    return fields
