"""The floor of any server hosted by Hypercorn: one ASGI function, JSON parsed, the sum on one thread, JSON answered.

    hypercorn --worker-class uvloop benchmarks.bare_asgi:app
"""
import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

pool = ThreadPoolExecutor(1)


def total(payload: dict) -> dict:
    return {"y": sum(payload["x"])}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    result = await asyncio.get_running_loop().run_in_executor(pool, total, json.loads(body))
    content = json.dumps(result).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]})
    await send({"type": "http.response.body", "body": content})
