"""Who may talk to the server: the Host and Origin checks (DNS rebinding, cross-site requests, CORS) and API keys,
in front of every route — the APIs, /metrics and any route a plugin adds. Only the probes are open to all.

docs/security.md has the threat model.
"""
from __future__ import annotations

import hmac
import logging
import stat
from pathlib import Path
from urllib.parse import parse_qsl

from starlette.responses import Response
from starlette.types import Scope

from engine.errors import ConfigError
from engine.routes import DOCS_PATH, METRICS_PATH, OPENAPI_PATH, PROBES
from engine.serving.pipeline import error_response
from engine.settings import ServeSettings, env_name, is_loopback

log = logging.getLogger("engine")

DOCUMENTATION = (OPENAPI_PATH, DOCS_PATH)  # open to all, so that the page can ask for a key (--no-docs: gone)
_CORS_HEADERS = "authorization, x-api-key, content-type, x-request-id"
_CORS_MAX_AGE = "600"
_HOSTS_REMEMBERED = 256  # distinct Host values whose verdict is kept


def load_keys(settings: ServeSettings) -> list[bytes]:
    """Every API key: the flags' and the variable's, and the key file's lines (blank lines and # comments left out)."""
    keys = list(settings.api_key)
    if settings.api_key_file:
        path = Path(settings.api_key_file)
        try:
            text = path.read_text()
        except OSError as error:
            raise ConfigError(f"--api-key-file {path}: cannot read it: {error.strerror}") from None
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("--api-key-file %s can be read by other users of this machine (mode %s); make it private: "
                        "chmod 600 %s", path, oct(stat.S_IMODE(mode)), path)
        found = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        if not any(found):
            raise ConfigError(f"--api-key-file {path}: holds no key (one key per line; # starts a comment)")
        keys += [key for key in found if key]
    return [key.encode() for key in keys]


class Guard:
    """Checks every HTTP request before it reaches a route; answers the CORS preflights itself."""

    def __init__(self, settings: ServeSettings) -> None:
        self.keys = load_keys(settings)
        self.open_paths = set(PROBES) | ({METRICS_PATH} if settings.metrics_public or not self.keys else set()) | \
            (set() if settings.no_docs else set(DOCUMENTATION))
        self.open_prefixes = () if settings.no_docs else (DOCS_PATH + "/",)  # the page's assets
        self.allowed_hosts = set(settings.allowed_hosts) or (None if not is_loopback(settings.host) else {"*loopback"})
        self.cors_origins = set(settings.cors_origins)
        self._host_verdicts: dict[bytes, str | None] = {}

    def check(self, scope: Scope) -> tuple[Response | None, str | None]:
        """(the answer to a request that may not pass — 400, 403, 401, or 204 to an allowed preflight —, the Origin
        whose CORS headers the response needs); (None, None) for a plain request that passes. The probes are open to
        all: a supervisor calls them by whatever Host it knows the server by, and they tell nothing."""
        if scope["path"] in PROBES:
            return None, None
        host = origin = authorization = api_key = preflight = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
            elif name == b"authorization":
                authorization = value
            elif name == b"x-api-key":
                api_key = value
            elif name == b"access-control-request-method":
                preflight = value
        if host and self.allowed_hosts is not None and (refused := self._refused_host(host)) is not None:
            return error_response(400, f"Host {refused!r} is not one this server answers (see --allowed-hosts)"), None
        foreign = None
        if origin is not None and not self._same_origin(scope, origin, host):
            foreign = origin.decode("latin-1")
            if foreign not in self.cors_origins and "*" not in self.cors_origins:
                return error_response(403, f"cross-origin request from {foreign} refused (see --cors-origins)"), None
            if scope.get("method") == "OPTIONS" and preflight is not None:
                return Response(status_code=204, headers=self.cors_headers(foreign) | {
                    "access-control-allow-methods": "GET, HEAD, POST", "access-control-allow-headers": _CORS_HEADERS,
                    "access-control-max-age": _CORS_MAX_AGE}), None
        if api_key is None and scope["type"] == "websocket":  # a browser cannot set a WebSocket's headers
            api_key = _query_key(scope.get("query_string", b""))
        path = scope["path"]
        keyed = path not in self.open_paths and not path.startswith(self.open_prefixes)
        if self.keys and keyed and not self._key_valid(authorization, api_key):
            refusal = error_response(401, "a valid API key is required: send Authorization: Bearer KEY or "
                                          "X-Api-Key: KEY", headers={"WWW-Authenticate": "Bearer"})
            return refusal, None
        return None, foreign

    def key_allowed(self, headers: dict[bytes, bytes]) -> bool:
        """True when no key is required, or lower-cased `headers` carry a valid one (for services beside HTTP)."""
        return not self.keys or self._key_valid(headers.get(b"authorization"), headers.get(b"x-api-key"))

    def cors_headers(self, origin: str) -> dict[str, str]:
        """What a response to an allowed cross-origin request adds."""
        return {"access-control-allow-origin": origin, "vary": "Origin",
                "access-control-expose-headers": "x-request-id"}

    def _refused_host(self, host: bytes) -> str | None:
        """The host name in a refused Host header, None for an allowed one (remembered: parsing costs per request)."""
        if host in self._host_verdicts:
            return self._host_verdicts[host]
        hostname = _hostname(host.decode("latin-1"))
        verdict = None if self._host_allowed(hostname) else hostname
        if len(self._host_verdicts) >= _HOSTS_REMEMBERED:  # random Host values cannot grow it without bound
            self._host_verdicts.clear()
        self._host_verdicts[host] = verdict
        return verdict

    def _host_allowed(self, hostname: str) -> bool:
        for allowed in self.allowed_hosts or ():  # asked only when there is a list
            if allowed == "*" or allowed == hostname or (allowed == "*loopback" and is_loopback(hostname)):
                return True
            if allowed.startswith(".") and hostname.endswith(allowed):
                return True
        return False

    @staticmethod
    def _same_origin(scope: Scope, origin: bytes, host: bytes | None) -> bool:
        return host is not None and origin == scope.get("scheme", "http").encode() + b"://" + host

    def _key_valid(self, authorization: bytes | None, api_key: bytes | None) -> bool:
        given = api_key
        if authorization is not None and authorization[:7].lower() == b"bearer ":
            given = authorization[7:].strip()
        if not given:
            return False
        valid = False
        for key in self.keys:  # every key compared, each in constant time
            valid |= hmac.compare_digest(given, key)
        return valid


def describe(guard: Guard, settings: ServeSettings) -> list[str]:
    """Warnings about how exposed the server is, for the start-up log."""
    if is_loopback(settings.host) or guard.keys:
        return []
    return [f"listening on {settings.host}: the APIs are reachable from the network without authentication; give "
            f"--api-key (or {env_name('api_key')}) to require a key"]


def _query_key(query: bytes) -> bytes | None:
    """The api_key query parameter (accepted for WebSockets only)."""
    for name, value in parse_qsl(query.decode("latin-1")):
        if name == "api_key":
            return value.encode()
    return None


def _hostname(host: str) -> str:
    """The Host header without its port: `[::1]:8888` → `::1`, `example.com:80` → `example.com`."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

