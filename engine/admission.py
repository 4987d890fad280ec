"""The front door of every API, in the front process: readiness, the concurrency limit, request ids, metrics and the
access log, for in-process and worker-backed APIs alike. What passes is handed to the API's Backend.
"""
from __future__ import annotations

import logging
import random
import time

from starlette.responses import Response

from engine.backend import ApiRequest, Backend
from engine.metrics import Metrics
from engine.pipeline import error_response

log = logging.getLogger("engine")
access_log = logging.getLogger("engine.access")

REQUEST_ID_HEADER = b"x-request-id"
API_METHODS = ("GET", "HEAD", "POST")
_ALLOW = ", ".join(API_METHODS)


class Admission:
    """One API's requests: checked, counted and logged here, answered by its backend. An ASGI app of its routes."""

    def __init__(self, backend: Backend, metrics: Metrics) -> None:
        self.backend = backend
        self.api = backend.api
        self.metrics = metrics
        self.max_in_flight = backend.api.autoscaling.max_replica_concurrency
        self.in_flight = 0
        self._gauge = metrics.child(metrics.in_flight, self.api.name)
        self._rejected = metrics.child(metrics.rejected, self.api.name)

    async def __call__(self, scope: dict, receive, send) -> None:
        started = time.perf_counter()
        method = scope["method"]
        request_id = ensure_request_id(scope)
        if method not in API_METHODS:
            response = error_response(405, "Method Not Allowed", headers={"Allow": _ALLOW})
        else:
            response = await self._answer(method, scope, receive)
        response.headers["x-request-id"] = request_id
        self._observe(method, scope["path"], response.status_code, started, request_id)
        await response(scope, receive, send)

    async def _answer(self, method: str, scope: dict, receive) -> Response:
        backend = self.backend
        if not backend.ready:
            reason = f"failed to start: {backend.failure}" if backend.failure else "its predictor is still initialising"
            return error_response(503, f"api '{self.api.name}' is not ready: {reason}")
        try:
            if method != "POST":
                return await backend.summary(ApiRequest(scope, b""))
            if self.in_flight >= self.max_in_flight:
                self._rejected.inc()
                return error_response(503, f"api '{self.api.name}' already has {self.in_flight} requests in flight, "
                                           "its max_replica_concurrency; retry later")
            self.in_flight += 1
            self._gauge.inc()
            try:
                return await backend.predict(ApiRequest(scope, await read_body(receive)))
            finally:
                self.in_flight -= 1
                self._gauge.dec()
        except Exception as error:  # the backends answer every predictor error; this is a bug in engine itself
            log.exception("unexpected error while serving %s %s", method, scope["path"])
            return error_response(500, f"internal error in engine: {type(error).__name__}: {error}")

    def _observe(self, method: str, path: str, status: int, started: float, request_id: str) -> None:
        seconds = time.perf_counter() - started
        metrics, api = self.metrics, self.api.name
        metrics.child(metrics.requests, api, method, str(status)).inc()
        metrics.child(metrics.latency, api).observe(seconds)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info("%s %s %s %s %.1fms request_id=%s", api, method, path, status, seconds * 1e3, request_id)


async def read_body(receive) -> bytes:
    """The whole request body."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def ensure_request_id(scope: dict) -> str:
    """The request's X-Request-ID, or a new one added to its headers (so the predictor and workers see it too)."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and value:
            return value.decode("latin-1")
    request_id = "%032x" % random.getrandbits(128)  # unique enough, and far cheaper than uuid4's os.urandom
    scope["headers"] = [*scope["headers"], (REQUEST_ID_HEADER, request_id.encode())]
    return request_id
