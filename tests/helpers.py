"""Test helpers: real `engine serve` processes on loopback, and throwaway projects."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import yaml

# processes_per_replica written into every API of a project that does not set it (the `processes` fixture sets it,
# so that the end-to-end suite runs once with one process and once with worker processes).
PROCESSES = 1


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_project(root: Path, files: dict[str, str]) -> Path:
    """Write `files` (relative path → text, dedented) under root and return root."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        text = textwrap.dedent(text).lstrip("\n")
        path.write_text(with_processes(text) if relative.endswith(".yaml") and PROCESSES > 1 else text)
    return root


def with_processes(config: str) -> str:
    """The config with processes_per_replica = PROCESSES in every API that does not choose (and can use it)."""
    apis = yaml.safe_load(config)
    if not isinstance(apis, list):
        return config
    for api in apis:
        predictor = api.get("predictor") if isinstance(api, dict) else None
        if isinstance(predictor, dict):
            caching = any(isinstance(predictor.get(key), dict) and "cache_size" in predictor[key]
                          for key in ("models", "multi_model_reloading"))
            if not caching:
                predictor.setdefault("processes_per_replica", PROCESSES)
    return yaml.safe_dump(apis, sort_keys=False)


class Server:
    """`engine serve` in a child process, with its output captured in a file."""

    def __init__(self, project: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = project.parent / f"{project.name}-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", str(project), "--port", str(self.port), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )
        self.client = httpx.Client(base_url=self.url, timeout=30)

    @property
    def output(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text()

    def wait_alive(self, timeout: float = 30) -> None:
        """Wait until /healthz answers; fail with the server's output if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.output}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server did not come up:\n{self.output}")

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until /readyz is 200."""
        self.wait_alive(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:  # it died after /healthz answered: say why below
                pass
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.output}")
            time.sleep(0.05)
        raise AssertionError(f"server did not become ready:\n{self.output}")

    def wait_output(self, text: str, timeout: float = 30) -> None:
        """Wait until the server has printed `text`."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert time.monotonic() < deadline, f"the server never printed {text!r}:\n{self.output}"
            time.sleep(0.02)

    def wait_metric(self, sample: str, timeout: float = 30) -> None:
        """Wait until GET /metrics shows `sample` (a whole line, e.g. `engine_requests_in_flight{api="x"} 3.0`)."""
        deadline = time.monotonic() + timeout
        while sample not in self.client.get("/metrics").text.splitlines():
            assert time.monotonic() < deadline, f"/metrics never showed {sample!r}"
            time.sleep(0.02)

    def wait_exit(self, timeout: float = 30) -> int:
        """Wait for the process to exit on its own; return its exit code."""
        try:
            return self.process.wait(timeout)
        finally:
            self.close()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def close(self) -> None:
        """Kill the process if it still runs and release the log file and client."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.client.close()
        self._log.close()


def api_yaml(name: str = "api", predictor: str = "predictor.py", predictor_extra: str = "", api_extra: str = "",
             type_: str = "python") -> str:
    """One RealtimeAPI entry of cortex.yaml; *_extra are YAML lines added under `predictor:` and under the API."""
    lines = [f"- name: {name}", "  kind: RealtimeAPI", "  predictor:", f"    type: {type_}", f"    path: {predictor}"]
    lines += ["    " + line for line in textwrap.dedent(predictor_extra).strip("\n").splitlines()]
    lines += ["  " + line for line in textwrap.dedent(api_extra).strip("\n").splitlines()]
    return "\n".join(lines) + "\n"
