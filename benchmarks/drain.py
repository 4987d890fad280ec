"""SIGTERM under load: what each request of 32 keep-alive connections sending back to back became.

    .venv/bin/python benchmarks/drain.py [--connections 32] [--runs 3] [--processes 1 2] [--servers hypercorn uvicorn]

Each run serves the echo project (benchmarks/echo) with processes_per_replica P, opens the connections (one thread
and one raw socket each, HTTP/1.1 keep-alive; a response saying `Connection: close` makes the client reconnect), sends
SIGTERM once --after requests have been answered, and classifies every request each connection sent:

- answered: a whole response came back (any status);
- refused: the connection was refused, or reset or closed before the request was completely written;
- unanswered: the request was completely written, then the connection was reset or closed without a response.

The server must leave no request unanswered (tests/test_e2e_drain.py asserts it).
"""
from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ECHO = Path(__file__).parent / "echo"
BODY = b'{"x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0]}'


def request(path: str = "/echo") -> bytes:
    """One keep-alive POST of the echo body."""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY


class Response:
    """A response's status and whether it closes its connection."""

    def __init__(self, status: int, closes: bool) -> None:
        self.status = status
        self.closes = closes


def read_response(sock: socket.socket, buffer: bytearray) -> Response | None:
    """The next response on `sock` (bytes past it stay in `buffer`); None if the connection ends before a whole one."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            return None
        buffer += data
    head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    end = len(head) + 4 + int(headers.get("content-length", "0"))
    while len(buffer) < end:
        data = sock.recv(65536)
        if not data:
            return None
        buffer += data
    del buffer[:end]
    return Response(int(lines[0].split()[1]), headers.get("connection", "").lower() == "close")


class Connection(threading.Thread):
    """One client: a keep-alive connection sending requests back to back until the server refuses a new one."""

    def __init__(self, port: int, answered: threading.Semaphore) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.outcomes: Counter[str] = Counter()
        self.answered = answered  # released once per answer, for whoever waits on a number of them

    def run(self) -> None:
        sock: socket.socket | None = None
        buffer = bytearray()
        payload = request()
        while True:
            if sock is None:
                try:
                    sock = socket.create_connection(("127.0.0.1", self.port))
                except OSError:
                    self.outcomes["refused"] += 1  # the server no longer accepts: this client is done
                    return
                buffer.clear()
            try:
                sock.sendall(payload)
            except OSError:
                self.outcomes["refused"] += 1  # closed before the request was written
                sock.close()
                sock = None
                continue
            try:
                response = read_response(sock, buffer)
            except OSError:
                response = None
            if response is None:
                self.outcomes["unanswered"] += 1
                sock.close()
                sock = None
                continue
            self.outcomes["answered"] += 1
            self.answered.release()
            if response.closes:
                sock.close()
                sock = None


def run_once(processes: int, server: str, connections: int, after: int) -> Counter[str]:
    """One SIGTERM under load; the outcomes of every request."""
    with tempfile.TemporaryDirectory(prefix="drain-") as folder:
        project = Path(folder) / "echo"
        project.mkdir()
        (project / "predictor.py").write_text((ECHO / "predictor.py").read_text())
        config = (ECHO / "cortex.yaml").read_text().rstrip("\n")
        (project / "cortex.yaml").write_text(f"{config}\n    processes_per_replica: {processes}\n")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        log = open(Path(folder) / "server.log", "wb")
        process = subprocess.Popen([sys.executable, "-m", "engine", "serve", str(project), "--port", str(port),
                                    "--server", server, "--log-level", "warning"], stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            wait_ready(port, process, Path(folder) / "server.log")
            answered = threading.Semaphore(0)
            clients = [Connection(port, answered) for _ in range(connections)]
            for client in clients:
                client.start()
            for _ in range(after):
                answered.acquire()
            sent = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = process.wait(60)
            stopped = time.monotonic() - sent
            for client in clients:
                client.join(60)
        finally:
            if process.poll() is None:
                process.kill()
            log.close()
        total: Counter[str] = Counter()
        for client in clients:
            total.update(client.outcomes)
        total["exit code"] = code
        total["stop ms"] = round(stopped * 1000)
        return total


def wait_ready(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until /readyz answers 200."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                response = read_response(sock, bytearray())
                if response is not None and response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"the server never became ready:\n{log.read_text()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--after", type=int, default=2000, help="answers before SIGTERM")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--servers", nargs="+", default=["hypercorn", "uvicorn"])
    options = parser.parse_args()
    print(f"{'server':<10} {'P':>2} {'run':>3} {'answered':>9} {'refused':>8} {'unanswered':>11} {'exit':>5} "
          f"{'SIGTERM to exit':>16}")
    for server in options.servers:
        for processes in options.processes:
            for number in range(1, options.runs + 1):
                outcome = run_once(processes, server, options.connections, options.after)
                print(f"{server:<10} {processes:>2} {number:>3} {outcome['answered']:>9} {outcome['refused']:>8} "
                      f"{outcome['unanswered']:>11} {outcome['exit code']:>5} {outcome['stop ms']:>13} ms", flush=True)


if __name__ == "__main__":
    main()
