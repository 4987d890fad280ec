"""Requests to an ASGI app that never touch the network."""
from __future__ import annotations

from typing import Any

from engine import http_scope, play


async def get(app: Any, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, bytes]:
    """GET `path` from the app in-process: (status, body)."""
    async with play(app, http_scope(path, headers=headers)) as played:
        return played.status, await played.read()


async def answer(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """Send a whole response."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
