"""TrafficSplitter routes: each request handed whole, in process, to one of the splitter's APIs, chosen by weight (so
that the chosen API's admission layer applies its keys, limits and deadline once); a share of them copied to its
shadow API in the background, bounded; new weights for new requests while serving.

Where a request goes is a SplitterTarget: an API's admission layer when the API is served here (LocalTarget), a remote
deployment for a distributed engine (engine-ray's). Everything else is the same wherever the splitter runs.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from engine.errors import EngineError
from engine.project.splitters import TOTAL_WEIGHT, TrafficSplitter, reread
from engine.serving.admission import ROUTED_KEY, Admission, Routed
from engine.serving.metrics import Metrics
from engine.serving.websocket import serve_websocket

log = logging.getLogger("engine")

API_HEADER = b"x-engine-api"  # on each answer a splitter hands over: the API that answered
SHADOW_HOST_SUFFIX = b"-shadow"  # added to a shadow copy's Host, as Istio's mirror did


class SplitterTarget(Protocol):
    """Where a splitter hands a request: an ASGI app for HTTP and WebSocket requests."""

    capacity: int  # requests it takes at once (max_replica_concurrency): the bound on shadow copies in flight
    endpoint: str  # the API's own route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request (or WebSocket) as the API's own route would."""

    def saturated(self) -> bool:
        """True when a request now would find no free slot (a shadow copy is dropped rather than sent)."""


class LocalTarget:
    """An API served in this process: its admission layer."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.capacity = admission.max_in_flight
        self.endpoint = admission.api.endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await serve_websocket(self.admission, scope, receive, send)
        else:
            await self.admission(scope, receive, send)

    def saturated(self) -> bool:
        return self.admission.in_flight >= self.admission.max_in_flight


class Split:
    """One splitter's weights as tables: the API for each of 100 equal slices of [0, 1), and the mirrored share."""

    def __init__(self, config: TrafficSplitter) -> None:
        self.config = config
        self.table = tuple(target.name for target in config.primaries for _ in range(target.weight))
        shadow = config.shadow
        self.shadow = shadow.name if shadow and shadow.weight else None
        self.mirrored = shadow.weight if shadow else 0

    def choose(self, draw: float) -> str:
        """The API for a uniform draw from [0, 1): each with probability weight/100 (weight 0 never, 100 always)."""
        return self.table[int(draw * TOTAL_WEIGHT)]

    def mirror(self, draw: float) -> bool:
        """Whether a request with this uniform draw from [0, 1) is copied to the shadow API."""
        return draw * TOTAL_WEIGHT < self.mirrored


class Splitter:
    """One TrafficSplitter: an ASGI app at its endpoint. GET and HEAD describe the split; any other request, and
    each WebSocket, goes whole to the target chosen for it, whose answer comes back with API_HEADER naming it."""

    def __init__(self, config: TrafficSplitter, targets: Mapping[str, SplitterTarget], metrics: Metrics) -> None:
        self.name = config.name
        self.endpoint = config.endpoint
        self.targets = targets
        self.metrics = metrics
        self.random = random.Random()  # seed it for a reproducible sequence of choices
        self.copies: dict[str, int] = {}  # shadow copies in flight, by API
        self.tasks: set[asyncio.Task[None]] = set()
        self.split = Split(config)

    @property
    def config(self) -> TrafficSplitter:
        """The configuration now in force."""
        return self.split.config

    def update(self, config: TrafficSplitter) -> None:
        """New weights for the requests that arrive from now on; those in flight keep the target they have."""
        self.split = Split(config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        split = self.split
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            await JSONResponse(self.description())(scope, receive, send)
            return
        name = split.choose(self.random.random())
        routed = {**scope, ROUTED_KEY: Routed(self.name)}
        if split.shadow and scope["type"] == "http" and scope["method"] == "POST" \
                and split.mirror(self.random.random()):
            receive = _Tee(receive, lambda body: self._mirror(split.shadow or "", routed, body))
        await self.targets[name](routed, receive, _naming(send, name.encode()))

    def description(self) -> dict[str, object]:
        """What GET at the splitter's endpoint answers: the split now in force."""
        config = self.config
        apis = [{"name": target.name, "weight": target.weight, "endpoint": self.targets[target.name].endpoint,
                 **({"shadow": True} if target.shadow else {})} for target in config.apis]
        return {"message": f"TrafficSplitter '{self.name}': each request goes to one of its APIs, chosen by weight; "
                           f"the {API_HEADER.decode()} response header names it",
                "traffic_splitter": {"name": self.name, "endpoint": self.endpoint, "apis": apis}}

    def _mirror(self, api: str, scope: Scope, body: bytes) -> None:
        """Copy a request whose body is whole to the shadow API, unless the copy would have to wait for a slot."""
        target = self.targets[api]
        in_flight = self.copies.get(api, 0)
        if in_flight >= target.capacity or target.saturated():
            self.metrics.child(self.metrics.shadow_copies, self.name, api, "dropped").inc()
            return
        self.metrics.child(self.metrics.shadow_copies, self.name, api, "sent").inc()
        self.copies[api] = in_flight + 1
        headers = [(name, value + SHADOW_HOST_SUFFIX if name == b"host" else value) for name, value in scope["headers"]]
        copy = {**scope, "headers": headers, ROUTED_KEY: Routed(self.name, shadow=True)}
        task = asyncio.get_running_loop().create_task(self._copy(api, target, copy, body))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _copy(self, api: str, target: SplitterTarget, scope: Scope, body: bytes) -> None:
        """Send one shadow copy; its answer is dropped and its failure only logged."""
        try:
            await target(scope, _Replay(body), _discard)
        except Exception as error:  # the caller has its answer already: a shadow's failure is only worth a line
            log.warning("TrafficSplitter '%s': the shadow copy to api '%s' failed: %s: %s", self.name, api,
                        type(error).__name__, error)
        finally:
            self.copies[api] -= 1

    def stop(self) -> None:
        """Give up the shadow copies in flight (the server is stopping)."""
        for task in list(self.tasks):
            task.cancel()


class _Tee:
    """A request's `receive` that keeps the body it passes on, and hands it to `on_body` once it is whole (so that
    the shadow copy starts alongside the primary, after the primary's own body checks)."""

    def __init__(self, receive: Receive, on_body: _OnBody) -> None:
        self.receive = receive
        self.on_body: _OnBody | None = on_body
        self.chunks: list[bytes] = []

    async def __call__(self) -> Message:
        message = await self.receive()
        if self.on_body is not None and message["type"] == "http.request":
            self.chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                on_body, self.on_body = self.on_body, None
                on_body(b"".join(self.chunks))
        return message


class _OnBody(Protocol):
    def __call__(self, body: bytes) -> None: ...


class _Replay:
    """The `receive` of a shadow copy: its body at once, then no disconnect ever (the copy runs to its end)."""

    def __init__(self, body: bytes) -> None:
        self.body: bytes | None = body

    async def __call__(self) -> Message:
        if self.body is None:
            await asyncio.Future()  # cancelled when the copy is done
        body, self.body = self.body, None
        return {"type": "http.request", "body": body, "more_body": False}


async def _discard(message: Message) -> None:
    """The `send` of a shadow copy: its answer goes nowhere."""


def _naming(send: Send, api: bytes) -> Send:
    """`send`, adding API_HEADER to the response's start (or the WebSocket's acceptance)."""
    async def sending(message: Message) -> None:
        if message["type"] in ("http.response.start", "websocket.accept"):
            message = {**message, "headers": [*message.get("headers", ()), (API_HEADER, api)]}
        await send(message)
    return sending


def serve_here(configs: list[TrafficSplitter], admissions: list[Admission], metrics: Metrics,
               remote: Mapping[str, SplitterTarget] | None = None) -> list[Splitter]:
    """The splitters this process serves: those whose every API is served here (an admission layer) or is one of
    the `remote` targets (a distributed engine's)."""
    targets: dict[str, SplitterTarget] = {**(remote or {})}
    targets.update((admission.api.name, LocalTarget(admission)) for admission in admissions)
    return [Splitter(config, targets, metrics) for config in configs
            if all(target.name in targets for target in config.apis)]


def forwarded_scope(scope: Scope, path: str) -> Scope:
    """A request's scope as a process elsewhere answers it (picklable): its HTTP parts and the TrafficSplitter that
    routed it, at `path` (the chosen API's own route)."""
    kept = {key: scope[key] for key in _FORWARDED if key in scope}
    return {**kept, "path": path, "raw_path": path.encode(), "root_path": "",
            "headers": [tuple(pair) for pair in scope["headers"]]}


_FORWARDED = ("type", "asgi", "http_version", "method", "scheme", "query_string", "client", "server", ROUTED_KEY)


def reload(splitters: list[Splitter], config_file: Path, apis: list[str]) -> bool:
    """SIGHUP: read the configuration file's TrafficSplitters again and apply their weights to new requests; a file
    that cannot be applied is refused with a log line saying why, and the weights in force stay. True if applied."""
    try:
        configs = reread(config_file, [splitter.config for splitter in splitters], apis)
    except EngineError as error:
        log.error("SIGHUP: the TrafficSplitters were not reloaded, the weights in force stay:\n%s", error)
        return False
    by_name = {config.name: config for config in configs}
    for splitter in splitters:
        splitter.update(by_name[splitter.name])
        log.info("SIGHUP: TrafficSplitter '%s' at %s: %s", splitter.name, splitter.endpoint,
                 splitter.config.describe())
    return True
