"""TrafficSplitters on Ray: each splitter is a Ray Serve application at its endpoint, whose replica runs engine's own
splitter (the same weights, shadows and x-engine-api header as `engine serve`) over targets that hand each request,
through a deployment handle, to the chosen API's application (no HTTP hop); that API's replica answers it with its
own app, admission layer included (EngineReplica.forward)."""
from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from engine import Api, TrafficSplitter, forwarded_scope

UNSUPPORTED_DATA = 1003  # the WebSocket close code for what a server cannot take (RFC 6455)
CORS_PREFIX = b"access-control-"  # answered by the splitter's own app: the target's would repeat them


class RayTarget:
    """One API's Ray Serve application, as a splitter's target (engine.SplitterTarget)."""

    def __init__(self, app_name: str, api: Api) -> None:
        self.app_name = app_name
        self.endpoint = api.endpoint
        # shadow copies in flight at most: what the API's replicas take at once when it runs its fewest
        self.capacity = api.autoscaling.max_replica_concurrency * api.autoscaling.min_replicas
        self.in_flight = 0
        self._handle: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()  # its connect
            await send({"type": "websocket.close", "code": UNSUPPORTED_DATA,
                        "reason": "on Ray, open the WebSocket at the API's own route, not at a TrafficSplitter's"})
            return
        body = await _body(receive)
        if body is None:
            return  # the client left
        if self._handle is None:  # the application may deploy after this one: looked up once it is needed
            self._handle = (await asyncio.to_thread(serve.get_app_handle, self.app_name)).options(stream=True)
        self.in_flight += 1
        try:
            async for message in self._handle.forward.remote(forwarded_scope(scope, self.endpoint), body):
                if message["type"] == "http.response.start":
                    message["headers"] = [(name, value) for name, value in message["headers"]
                                          if not name.lower().startswith(CORS_PREFIX)]
                await send(message)
        finally:
            self.in_flight -= 1

    def saturated(self) -> bool:
        return self.in_flight >= self.capacity


async def _body(receive: Any) -> bytes | None:
    """The whole request body, or None when the client disconnects first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def targets(splitter: TrafficSplitter, apis: list[Api], apps: dict[str, str]) -> dict[str, RayTarget]:
    """The splitter's APIs as targets: each API's application (`apps`: API name → Ray application)."""
    by_name = {api.name: api for api in apis}
    return {target.name: RayTarget(apps[target.name], by_name[target.name]) for target in splitter.apis}


def max_ongoing(splitter: TrafficSplitter, apis: list[Api]) -> int:
    """Requests the splitter's replica takes at once: what its APIs take at once, at their most replicas."""
    scaling = {api.name: api.autoscaling for api in apis}
    return sum(scaling[target.name].max_replica_concurrency * scaling[target.name].max_replicas
               for target in splitter.apis)
