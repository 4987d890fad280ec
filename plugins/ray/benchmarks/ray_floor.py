"""Ray Serve's own floor for the echo workload: one plain deployment that parses the JSON, sums and answers, behind
Ray's HTTP proxy on a local instance. `python ray_floor.py PORT` serves /echo until SIGTERM, then shuts Ray down."""
from __future__ import annotations

import signal
import sys
import threading

import ray
from ray import serve


@serve.deployment(max_ongoing_requests=1024)
class Echo:
    """{"x": [floats]} → {"y": sum}, on the replica's event loop: no engine, no thread pool."""

    async def __call__(self, request) -> dict:
        payload = await request.json()
        return {"y": sum(payload["x"])}


def main(port: int) -> None:
    stop = threading.Event()
    ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    serve.run(Echo.bind(), name="echo", route_prefix="/echo")
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]))
