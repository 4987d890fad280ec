"""Fixtures of the Ray tests. Ray probes cloud-metadata addresses when it starts, so everything of Ray's runs inside a
loopback-only network namespace (`unshare -n`, then `lo` up; `unshare -rn`, in a user namespace, where that fails), with
usage stats and the dashboard off and HOME a temporary folder holding an empty ray_bootstrap_config.yaml; the tests
reach its servers over HTTP on the namespace's loopback, through Unix sockets that netns_holder.py forwards there."""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from engine.testing import wait_for

HOLDER = Path(__file__).with_name("netns_holder.py")
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
RAY = str(Path(sys.executable).with_name("ray"))
GCS_PORT = 6379  # each namespace has a loopback of its own, so fixed ports never collide
PROXY_PORT = 8000
START_TIMEOUT = 240  # seconds: Ray and every replica, on a loaded 2-core machine
# A network namespace as root; else one inside a user namespace (anyone, or root in a container that withholds
# CAP_SYS_ADMIN but allows user namespaces).
UNSHARE = (["unshare", "-n"], ["unshare", "-rn"])


@functools.cache
def unshare() -> list[str] | str:
    """The command that makes a network namespace here, or why none can be made."""
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        return "needs unshare and nsenter (util-linux)"
    errors = []
    for command in UNSHARE[0 if os.geteuid() == 0 else 1:]:
        probe = subprocess.run([*command, "true"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return command
        errors.append(f"{' '.join(command)}: {probe.stderr.strip()}")
    return "cannot make a network namespace: " + "; ".join(errors)


class Sandbox:
    """A loopback-only network namespace, the commands run in it, and HTTP clients into it."""

    def __init__(self, ports: list[int]) -> None:
        command = unshare()
        if isinstance(command, str):
            pytest.skip(f"the Ray tests run in a network namespace: {command}")
        self.user_namespace = command == UNSHARE[1]
        self.folder = Path(tempfile.mkdtemp(prefix="er-"))  # short: Ray's Unix sockets live below it
        home = self.folder / "home"
        home.mkdir()
        (home / "ray_bootstrap_config.yaml").touch()
        self.env = {**os.environ, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_TMPDIR": str(self.folder / "tmp"), "PYTHONUNBUFFERED": "1"}
        self.env.pop("RAY_ADDRESS", None)
        self.holder = subprocess.Popen([*command, sys.executable, str(HOLDER), str(self.folder),
                                        *map(str, ports)])
        wait_for(lambda: (self.folder / "ready").exists() or self.holder.poll() is not None, "the namespace")
        assert self.holder.poll() is None, "the network namespace's holder exited"
        self.clients: list[httpx.Client] = []

    def popen(self, args: list[str], log: Path) -> subprocess.Popen:
        """Start a command inside the namespace, its output into `log`."""
        with open(log, "ab") as output:
            return subprocess.Popen(self._enter(args), stdout=output, stderr=subprocess.STDOUT, env=self.env)

    def run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a command inside the namespace to its end."""
        return subprocess.run(self._enter(args), capture_output=True, text=True, env=self.env, timeout=timeout,
                              check=False)

    def client(self, port: int) -> httpx.Client:
        """An HTTP client of 127.0.0.1:port inside the namespace."""
        transport = httpx.HTTPTransport(uds=str(self.folder / f"{port}.sock"))
        client = httpx.Client(transport=transport, base_url=f"http://127.0.0.1:{port}", timeout=60)
        self.clients.append(client)
        return client

    def processes(self) -> list[str]:
        """The command lines of the processes in the namespace, its holder's left out."""
        return list(self._members().values())

    def close(self) -> None:
        """Close the clients, kill (by pid) whatever a failed test left in the namespace, and end the namespace."""
        for client in self.clients:
            client.close()
        for pid, line in self._members().items():
            print(f"left running in the namespace, killed: {line}")
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self.holder.send_signal(signal.SIGTERM)
        self.holder.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _members(self) -> dict[int, str]:
        namespace = os.readlink(f"/proc/{self.holder.pid}/ns/net")
        found = {}
        for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
            try:
                if pid != self.holder.pid and os.readlink(f"/proc/{pid}/ns/net") == namespace:
                    found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:  # it ended meanwhile
                continue
        return {pid: line for pid, line in found.items() if line}

    def _enter(self, args: list[str]) -> list[str]:
        user = ["-U", "--preserve-credentials"] if self.user_namespace else []
        return ["nsenter", "-t", str(self.holder.pid), "-n", *user, "--", *args]


class RayServer:
    """`engine serve --on ray` inside a sandbox (or, with on_ray=False, plain `engine serve` to compare with), its
    output in a file."""

    def __init__(self, sandbox: Sandbox, project: Path, *args: str, port: int = PROXY_PORT,
                 on_ray: bool = True) -> None:
        self.log_path = sandbox.folder / f"engine-{project.name}-{len(sandbox.clients)}.log"
        target = ["--on", "ray"] if on_ray else []
        self.process = sandbox.popen([sys.executable, "-m", "engine", "serve", *target, str(project),
                                      "--port", str(port), *args], self.log_path)
        self.client = sandbox.client(port)

    @property
    def output(self) -> str:
        """Everything it printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until /readyz answers 200; fail with the output if the process ends first."""
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"engine exited with {self.process.returncode}:\n{self.output}")
            try:
                return self.client.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False
        wait_for(ready, "the APIs being ready", timeout)

    def wait_exit(self, timeout: float = START_TIMEOUT) -> int:
        """Until the process ends by itself: its exit code."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"engine did not exit:\n{self.output}") from None

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM, then its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)


@pytest.fixture(scope="module")
def sandbox():
    """A loopback-only network namespace for one test module."""
    made = Sandbox([PROXY_PORT])
    yield made
    made.close()


@pytest.fixture(scope="module")
def ray_cluster(sandbox):
    """A one-node Ray cluster inside the sandbox with bounded resources (2 CPUs, 3 GiB), as `ray start` makes one;
    its address. `ray stop` at the end."""
    started = sandbox.run([RAY, "start", "--head", f"--port={GCS_PORT}", "--num-cpus=2", f"--memory={3 * 2**30}",
                           f"--object-store-memory={200 * 2**20}", "--include-dashboard=false",
                           "--disable-usage-stats"], timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    yield f"127.0.0.1:{GCS_PORT}"
    stopped = sandbox.run([RAY, "stop", "--force"], timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@pytest.fixture(scope="module")
def ray_server(sandbox):
    """Start `engine serve --on ray PROJECT ARGS...` (on_ray=False: plain `engine serve`) in the sandbox; whatever is
    still running is stopped at the end."""
    started: list[RayServer] = []

    def start(project: Path, *args: str, on_ray: bool = True) -> RayServer:
        server = RayServer(sandbox, project, *args, on_ray=on_ray)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.stop()


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """Copy one of the repository's examples into a fresh folder."""
    def copy(name: str) -> Path:
        folder = tmp_path_factory.mktemp(name)
        return Path(shutil.copytree(EXAMPLES / name, folder / name, ignore=shutil.ignore_patterns("__pycache__")))
    return copy
