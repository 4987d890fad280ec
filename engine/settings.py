"""Every `engine serve` setting, defined once: its default, its flag (`--name`) and its variable (`ENGINE_NAME`).

A flag given on the command line wins over the environment variable, which wins over the default. `create_app`,
hosted by another ASGI server, reads the same variables. Plugins own settings of their own (engine.Setting, from
engine_settings): the same flags and variables, their values in `ServeSettings.plugin_settings`, read as
`settings.NAME`.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.plugin_api import Setting

ENV_PREFIX = "ENGINE_"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # where worker processes write their metrics (prometheus_client's)
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


def port_number(text: str) -> int:
    """A TCP port: an integer from 0 to 65535."""
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{text} is not a TCP port (0 to 65535)")
    return port


def seconds(text: str) -> float:
    """A duration in seconds, 0 or more."""
    value = float(text)
    if value < 0:
        raise ValueError(f"{text} is negative")
    return value


def boolean(text: str) -> bool:
    """1/true/yes/on or 0/false/no/off (the environment's spelling of a switch)."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not a boolean (use 1 or 0)")


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(?:([KMGT])(i?)B?|B)?$", re.IGNORECASE)


def byte_size(text: str) -> int:
    """A size in bytes: a count, or a number with a unit (32MiB, 32Mi, 32MB, 1G; KiB-style units are powers of 1024)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size; give bytes or a number with a unit, such as 32MiB or 500KB")
    number, unit, binary = match.groups()
    power = "KMGT".index(unit.upper()) + 1 if unit else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


def optional_seconds(text: str) -> float | None:
    """A duration in seconds; 0 or "off" turns it off (None)."""
    if text.strip().lower() in ("off", "none", ""):
        return None
    value = seconds(text)
    return value or None


def optional_count(text: str) -> int | None:
    """A count, 1 or more; 0 or "off" turns it off (None)."""
    if text.strip().lower() in ("off", "none", ""):
        return None
    value = int(text)
    if value < 0:
        raise ValueError(f"{text} is negative")
    return value or None


def optional_size(text: str) -> int | None:
    """A size in bytes (see byte_size); 0 or "off" turns it off (None)."""
    if text.strip().lower() in ("off", "none", ""):
        return None
    return byte_size(text) or None


def words(text: str) -> tuple[str, ...]:
    """Comma-separated values (a flag given several times adds them all up)."""
    return tuple(word.strip() for word in text.split(",") if word.strip())


def optional_path(text: str) -> str | None:
    """A file's path; empty means none."""
    return text.strip() or None


def yes_no_auto(text: str) -> str:
    """auto, yes or no."""
    if text.strip().lower() not in ("auto", "yes", "no"):
        raise ValueError(f"{text!r} is not one of auto, yes, no")
    return text.strip().lower()


def log_level(text: str) -> str:
    """One of debug, info, warning, error."""
    if text.lower() not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text.lower()


def log_format(text: str) -> str:
    """text or json."""
    if text.strip().lower() not in LOG_FORMATS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_FORMATS)}")
    return text.strip().lower()


def _setting(default: Any, parse: Callable[[str], Any], help: str, metavar: str | None = None) -> Any:
    return dataclasses.field(default=default, metadata={"parse": parse, "help": help, "metavar": metavar})


def _list(help: str, metavar: str) -> Any:
    """A setting of several values: a repeatable flag (each may hold several, comma-separated), or the variable's
    comma-separated values."""
    return dataclasses.field(default=(), metadata={"parse": words, "help": help, "metavar": metavar,
                                                   "multiple": True})


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """How `engine serve` runs a project (not what it serves: that is cortex.yaml)."""

    server: str = _setting("hypercorn", str, "the HTTP server: hypercorn (built in), or one an installed plugin "
                           "provides", "NAME")
    host: str = _setting("127.0.0.1", str, "address to listen on", "ADDRESS")
    port: int = _setting(8888, port_number, "port to listen on", "PORT")
    log_level: str = _setting("info", log_level, "debug, info, warning (no access log) or error", "LEVEL")
    log_format: str = _setting("text", log_format, "text, or json: every line one JSON object (the predictor's "
                               "prints too)", "text|json")
    graceful_timeout: float = _setting(30.0, seconds, "on SIGTERM, how long to wait for in-flight requests",
                                       "SECONDS")
    model_poll_interval: float = _setting(10.0, seconds, "how often model directories are checked for new "
                                          "versions", "SECONDS")
    model_memory: int | None = _setting(None, optional_size, "bound the memory loaded models hold in each process, "
                                        "across all its APIs; least recently used models not in use are evicted "
                                        "(a size such as 2GiB; off unless given)", "SIZE")
    model_disk: int | None = _setting(None, optional_size, "bound the disk the downloaded copies of S3 models take "
                                      "in each process, the same way (off unless given)", "SIZE")
    worker_init_timeout: float = _setting(600.0, seconds, "with processes_per_replica > 1, how long a worker may "
                                          "take to finish __init__", "SECONDS")
    cpu: bool = _setting(False, boolean, "serve APIs that ask for compute.gpu or compute.inf on the CPU instead, "
                         "with a warning for each")
    on: str | None = _setting(None, optional_path, "serve on a distributed engine instead of this process, through "
                              "the installed plugin that provides it", "ENGINE")
    # --- limits: docs/operations.md says why each default is what it is
    request_timeout: float | None = _setting(60.0, optional_seconds, "a request still unanswered after this long "
                                             "gets 504 (0 turns it off)", "SECONDS")
    max_body_size: int | None = _setting(32 * 2**20, optional_size, "larger request bodies get 413, before they are "
                                         "read (a byte count or a size such as 32MiB; 0 turns it off)", "SIZE")
    body_timeout: float | None = _setting(30.0, optional_seconds, "a request body that takes longer to arrive gets "
                                          "408 and its connection is closed (0 turns it off)", "SECONDS")
    keep_alive_timeout: float = _setting(5.0, seconds, "idle keep-alive connections are closed after this long",
                                         "SECONDS")
    max_connections: int | None = _setting(None, optional_count, "open connections (and requests) at most; the "
                                           "server answers 503 beyond it (a server that cannot bound them refuses "
                                           "to start with it)", "COUNT")
    worker_kill_after: float | None = _setting(None, optional_seconds, "with worker processes: a worker whose "
                                               "predict runs this long past its request's deadline is killed and "
                                               "replaced (off unless given)", "SECONDS")
    max_requests_per_worker: int | None = _setting(None, optional_count, "with worker processes: replace a worker, "
                                                   "gracefully, after it has answered this many requests (off unless "
                                                   "given)", "COUNT")
    worker_memory_limit: int | None = _setting(None, optional_size, "with worker processes: replace a worker, "
                                               "gracefully, once its memory (RSS) exceeds this size (off unless "
                                               "given)", "SIZE")
    isolate: bool = _setting(False, boolean, "run the predictors of APIs with processes_per_replica: 1 in a "
                             "supervised worker process too, so that a crash there cannot end the server")
    reload: bool = _setting(False, boolean, "development: watch the project and rebuild the APIs whose files or "
                            "configuration change, without dropping a request")
    state_dir: str | None = _setting(None, optional_path, "where BatchAPI jobs are kept (a SQLite file, job logs, "
                                     "dead letters), so that they survive a restart (default: PROJECT_DIR/.engine)",
                                     "PATH")
    # --- security: docs/security.md
    api_key: tuple[str, ...] = _list("a key clients must send (Authorization: Bearer KEY, or X-Api-Key: KEY) to "
                                     "reach the APIs and /metrics; repeatable", "KEY")
    api_key_file: str | None = _setting(None, optional_path, "a file of keys, one per line (# starts a comment)",
                                        "PATH")
    metrics_public: bool = _setting(False, boolean, "serve /metrics without a key when keys are required")
    certfile: str | None = _setting(None, optional_path, "serve HTTPS with this certificate (PEM; with --keyfile)",
                                    "PATH")
    keyfile: str | None = _setting(None, optional_path, "the private key of --certfile (PEM)", "PATH")
    ca_certs: str | None = _setting(None, optional_path, "require client certificates signed by these CAs (PEM)",
                                    "PATH")
    allowed_hosts: tuple[str, ...] = _list("Host header values to answer, others get 400; when not given: "
                                           "localhost names and loopback addresses if listening on loopback, any "
                                           "otherwise", "HOST")
    cors_origins: tuple[str, ...] = _list("origins whose browser pages may call the APIs (CORS); other "
                                          "cross-origin requests get 403", "ORIGIN")
    no_docs: bool = _setting(False, boolean, "do not serve /openapi.json and the /docs page (otherwise open to all, "
                             "like the probes)")
    expose_errors: str = _setting("auto", yes_no_auto, "show a predictor exception's message in the 500 body: yes, "
                                  "no, or auto (yes when listening on loopback only)", "auto|yes|no")
    # --- the values of the settings plugins own (engine.Setting), by name
    plugin_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False,
                                                           metadata={"plugins": True})

    def __getattr__(self, name: str) -> Any:
        """A plugin's setting, by its name: `settings.grpc_port`."""
        values = self.__dict__.get("plugin_settings", {})
        if name.startswith("__") or name not in values:
            raise AttributeError(f"'ServeSettings' object has no attribute {name!r}: neither engine nor an installed "
                                 "plugin has a setting of that name")
        return values[name]

    @property
    def shows_errors(self) -> bool:
        """Whether a predictor exception's message goes into its 500 body (--expose-errors)."""
        return self.expose_errors == "yes" or (self.expose_errors == "auto" and is_loopback(self.host))

    @classmethod
    def load(cls, given: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
             declared: Sequence[Setting] = ()) -> ServeSettings:
        """Settings from `given` values (None: not given), else the environment, else the defaults; engine's own and
        those of `declared`, the plugins' settings."""
        given = given or {}
        environ = os.environ if environ is None else environ
        values = {}
        for field in _fields():
            if given.get(field.name) is not None:
                value = given[field.name]
                if field.metadata.get("multiple") and isinstance(value, list):  # a repeated flag's values
                    value = tuple(word for part in value for word in part)
                values[field.name] = value
            elif env_name(field.name) in environ:
                values[field.name] = _from_environment(field.name, field.metadata["parse"], environ)
        return cls(**values).with_plugins(declared, given, environ)

    def replace(self, **changes: Any) -> ServeSettings:
        """A copy with `changes`, to engine's settings and to the plugins' alike."""
        plugins = {name: changes.pop(name) for name in list(changes) if name in self.plugin_settings}
        if plugins:
            changes["plugin_settings"] = {**self.plugin_settings, **plugins}
        return dataclasses.replace(self, **changes)

    def with_plugins(self, declared: Sequence[Setting], given: Mapping[str, Any] | None = None,
                     environ: Mapping[str, str] | None = None) -> ServeSettings:
        """These settings with a value for each plugin setting of `declared` they lack: given, else the
        environment's, else its default."""
        missing = [setting for setting in declared if setting.name not in self.plugin_settings]
        if not missing:
            return self
        given = given or {}
        environ = os.environ if environ is None else environ
        values = dict(self.plugin_settings)
        for setting in missing:
            if given.get(setting.name) is not None:
                values[setting.name] = given[setting.name]
            elif env_name(setting.name) in environ:
                values[setting.name] = _from_environment(setting.name, _plugin_parse(setting), environ)
            else:
                values[setting.name] = setting.default
        return dataclasses.replace(self, plugin_settings=values)


def is_loopback(host: str) -> bool:
    """True when `host` is reachable only from this machine (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def env_name(name: str) -> str:
    """The environment variable of a setting: ENGINE_ and its name in capitals."""
    return ENV_PREFIX + name.upper()


def setting_names() -> tuple[str, ...]:
    """The name of every setting of engine's own."""
    return tuple(field.name for field in _fields())


def taken(name: str) -> bool:
    """True when a plugin's setting may not have this name: one of engine's, or another name ServeSettings has."""
    return name in setting_names() or hasattr(ServeSettings, name) or name == "plugin_settings"


def _fields() -> tuple[dataclasses.Field[Any], ...]:
    return tuple(field for field in dataclasses.fields(ServeSettings) if not field.metadata.get("plugins"))


def _from_environment(name: str, parse: Callable[[str], Any], environ: Mapping[str, str]) -> Any:
    text = environ[env_name(name)]
    try:
        return parse(text)
    except ValueError as error:
        from engine.errors import ConfigError

        raise ConfigError(f"environment variable {env_name(name)}={text!r}: {error}") from None


def _plugin_parse(setting: Setting) -> Callable[[str], Any]:
    """A plugin setting's parse, giving its default for an empty text."""
    def parse(text: str) -> Any:
        return setting.parse(text) if text.strip() else setting.default
    parse.__name__ = getattr(setting.parse, "__name__", "value")
    return parse


def add_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...], default: Any = None,
                  declared: Sequence[Setting] = ()) -> None:
    """Add the flags of the settings named, then those of `declared` (the plugins'); an unset flag is `default`
    (None: the environment answers)."""
    for field in _fields():
        if field.name not in names:
            continue
        flag = "--" + field.name.replace("_", "-")
        help_text = f"{field.metadata['help']} (default: ${env_name(field.name)} or {_shown(field.default)})"
        if field.type == "bool":
            parser.add_argument(flag, action="store_const", const=True, default=default, help=help_text)
        elif field.metadata.get("multiple"):
            parser.add_argument(flag, action="append", type=_argparse_type(field.metadata["parse"]),
                                default=default, metavar=field.metadata["metavar"], help=help_text)
        else:
            parser.add_argument(flag, type=_argparse_type(field.metadata["parse"]), default=default,
                                metavar=field.metadata["metavar"], help=help_text)
    for setting in declared:
        parser.add_argument("--" + setting.name.replace("_", "-"), type=_argparse_type(_plugin_parse(setting)),
                            default=default, metavar=setting.metavar,
                            help=f"{setting.help} (default: ${env_name(setting.name)} or {_shown(setting.default)})")


def _shown(default: Any) -> str:
    if default is None or default is False or default == ():
        return "none" if default == () else "off"
    if isinstance(default, int) and default >= 2**20 and default % 2**20 == 0:
        return f"{default // 2**20}MiB"
    return f"{default:g}" if isinstance(default, float) else str(default)


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse reports ArgumentTypeError's message as it is."""
    def checked(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    checked.__name__ = parse.__name__
    return checked
