"""SIGTERM under load: every request a client wrote on a connection the server had not told to close is answered, at
P=1 and P=2, on the server ENGINE_SERVER names; a client that reconnects finds no listener (refused), never a
connection that resets its request."""
from __future__ import annotations

import socket
import threading
from collections import Counter

import pytest

from engine.testing import api_yaml

pytestmark = pytest.mark.e2e

CONNECTIONS = 16
ANSWERS_BEFORE_SIGTERM = 200
WAIT = 30  # seconds a socket waits for the server: only ever reached by a failure
BODY = b'{"x": [1, 2, 3]}'
REQUEST = (b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
PREDICTOR = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return {"y": sum(payload["x"])}
"""


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, bool] | None:
    """The next response's status and whether it closes the connection; None if the connection ends first."""
    while b"\r\n\r\n" not in buffer:
        if not (data := sock.recv(65536)):
            return None
        buffer += data
    head = bytes(buffer).partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip().lower() for name, _, value in (line.partition(":")
                                                                                 for line in head[1:])}
    end = len("\r\n".join(head)) + 4 + int(headers.get("content-length", "0"))
    while len(buffer) < end:
        if not (data := sock.recv(65536)):
            return None
        buffer += data
    del buffer[:end]
    return int(head[0].split()[1]), headers.get("connection") == "close"


class Client(threading.Thread):
    """A keep-alive connection sending requests back to back; it reconnects when told to close, until refused.

    Each request ends as "answered" (a whole response), "refused" (no connection, or one that failed before the
    request was completely written) or "unanswered" (written completely, then the connection ended without a
    response). It never writes after a response saying Connection: close, so every request written counts.
    """

    def __init__(self, port: int, answered: threading.Semaphore) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.answered = answered
        self.outcomes: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.closing_answers = 0

    def run(self) -> None:
        sock: socket.socket | None = None
        buffer = bytearray()
        while True:
            if sock is None:
                try:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
                except ConnectionRefusedError:
                    self.outcomes["refused"] += 1
                    return
                buffer.clear()
            try:
                sock.sendall(REQUEST)
            except OSError:
                self.outcomes["refused"] += 1
                sock.close()
                sock = None
                continue
            try:
                response = read_response(sock, buffer)
            except ConnectionResetError:
                response = None
            if response is None:
                self.outcomes["unanswered"] += 1
                sock.close()
                sock = None
                continue
            self.outcomes["answered"] += 1
            self.statuses[response[0]] += 1
            self.answered.release()
            if response[1]:
                self.closing_answers += 1
                sock.close()
                sock = None


def test_sigterm_under_load_answers_every_request_written_before_the_server_said_close(serve):
    server = serve({"cortex.yaml": api_yaml("echo"), "predictor.py": PREDICTOR})
    answered = threading.Semaphore(0)
    clients = [Client(server.port, answered) for _ in range(CONNECTIONS)]
    for client in clients:
        client.start()
    for _ in range(ANSWERS_BEFORE_SIGTERM):
        assert answered.acquire(timeout=WAIT), "the clients' requests were not answered"
    server.process.terminate()
    assert server.wait_exit() == 0, server.output
    for client in clients:
        client.join(WAIT)
        assert not client.is_alive(), "a client still sends after the server has gone"
    total = sum((client.outcomes for client in clients), Counter())
    assert total["unanswered"] == 0, f"{total}:\n{server.output}"
    assert total["answered"] >= ANSWERS_BEFORE_SIGTERM
    assert set(sum((client.statuses for client in clients), Counter())) == {200}
    # each client ends on a refused connection, after the answer that closed its last one
    assert [client.outcomes["refused"] for client in clients] == [1] * CONNECTIONS, total
    assert all(client.closing_answers == 1 for client in clients)
