"""The floor of any server hosting an ASGI app: one ASGI function that parses the JSON body, does the work on one
thread and answers JSON with the standard library's json (with BARE_ASGI_JSON=orjson, with orjson as engine does: the
floor then does engine's JSON work, whatever the body's size). Run on each HTTP server the benchmarks compare:

    hypercorn --worker-class uvloop benchmarks.bare_asgi:app
    uvicorn --loop uvloop --http httptools benchmarks.bare_asgi:app
    granian --interface asgi --workers 1 --runtime-threads 1 benchmarks.bare_asgi:app

The work is the echo sum, or with BARE_ASGI_MODEL=path/to/mlp.onnx the ONNX MLP at batch 1 (as benchmarks/mlp); with
BARE_ASGI_BATCH=N too, the MLP on batches of up to N requests, one batch at a time, each formed from what waits when
the previous ends (the floor of server-side batching on that server).
"""
import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor

import orjson

pool = ThreadPoolExecutor(1)
if os.environ.get("BARE_ASGI_JSON") == "orjson":
    loads, dumps = orjson.loads, orjson.dumps
else:
    loads, dumps = json.loads, lambda value: json.dumps(value).encode()


def total(payload: dict) -> dict:
    return {"y": sum(payload["x"])}


def mlp(path: str):
    """The MLP's best class for one row, onnxruntime on one thread."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def best_class(payload: dict) -> dict:
        x = np.asarray(payload["x"], dtype=np.float32).reshape(1, -1)
        return {"class": int(session.run(None, {"x": x})[0][0].argmax())}

    return best_class


def mlp_batches(path: str, size: int):
    """The MLP's best class for each of up to `size` waiting requests, one session.run per batch."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    waiting: list[tuple[dict, asyncio.Future]] = []
    busy = False  # a batch runs, or the next is about to form (at the end of this loop pass)

    def best_classes(payloads: list[dict]) -> list[dict]:
        x = np.stack([np.asarray(payload["x"], dtype=np.float32) for payload in payloads])
        return [{"class": int(row.argmax())} for row in session.run(None, {"x": x})[0]]

    async def run_batches() -> None:
        nonlocal busy, waiting
        while waiting:
            batch, waiting = waiting[:size], waiting[size:]
            results = await asyncio.get_running_loop().run_in_executor(pool, best_classes, [p for p, _ in batch])
            for (_, future), result in zip(batch, results, strict=True):
                future.set_result(result)
        busy = False

    async def submit(payload: dict) -> dict:
        nonlocal busy
        future = asyncio.get_running_loop().create_future()
        waiting.append((payload, future))
        if not busy:
            busy = True
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(run_batches()))
        return await future

    return submit


if os.environ.get("BARE_ASGI_BATCH"):
    batched = mlp_batches(os.environ["BARE_ASGI_MODEL"], int(os.environ["BARE_ASGI_BATCH"]))
else:
    batched = None
    work = mlp(os.environ["BARE_ASGI_MODEL"]) if os.environ.get("BARE_ASGI_MODEL") else total


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
    if batched is not None:
        result = await batched(loads(body))
    else:
        result = await asyncio.get_running_loop().run_in_executor(pool, work, loads(body))
    content = dumps(result)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]})
    await send({"type": "http.response.body", "body": content})
