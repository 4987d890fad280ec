"""Idle connections close after --keep-alive-timeout on every protocol Hypercorn speaks — HTTP/2 ones (cleartext with
prior knowledge, and over TLS) with a GOAWAY, as HTTP/1.1 ones do — while one waiting for its answer stays open."""
from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h11
import pytest
from support import certificate, wait_tls

from engine.testing import Server, api_yaml, http_server_features, wait_file, write_project

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif("http2" not in http_server_features(), reason="the server speaks no HTTP/2")]

WAIT = 30  # seconds a socket waits for the server: far above the 1 s keep-alive timeout, only ever hit by a failure

PREDICTOR = """
import os
import time


class PythonPredictor:
    def __init__(self, config):
        self.dir = config["dir"]

    def predict(self, payload):
        open(os.path.join(self.dir, payload + ".started"), "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(self.dir, payload + ".release")) and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"ok": payload}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("http2-idle")
    files = {"cortex.yaml": api_yaml("x", predictor_extra=f"config:\n  dir: {root}"), "predictor.py": PREDICTOR}
    return write_project(root / "project", files)


@pytest.fixture(scope="module")
def server(project: Path) -> Iterator[Server]:
    running = Server(project, "--keep-alive-timeout", "1")
    running.wait_ready()
    yield running
    running.close()


@pytest.fixture(scope="module")
def tls(project: Path) -> Iterator[tuple[Server, ssl.SSLContext]]:
    cert, key, _, _ = certificate(project.parent, "server")
    running = Server(project, "--keep-alive-timeout", "1", "--certfile", str(cert), "--keyfile", str(key))
    wait_tls(running, ssl.create_default_context(cafile=str(cert)))  # httpx sets its own ALPN on the context
    context = ssl.create_default_context(cafile=str(cert))
    context.set_alpn_protocols(["h2"])
    yield running, context
    running.close()


class H2Client:
    """An HTTP/2 connection (prior knowledge, or ALPN over `context`) driven by the h2 library over a socket."""

    def __init__(self, port: int, context: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        if context is not None:
            self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
            assert self.sock.selected_alpn_protocol() == "h2"
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.sock.sendall(self.h2.data_to_send())
        self.events: list[h2.events.Event] = []
        while not any(isinstance(event, h2.events.RemoteSettingsChanged) for event in self.events):
            assert self._receive(), "the server closed the connection before it spoke HTTP/2"

    def _receive(self) -> bool:
        """Read what the server sent next into `events` and acknowledge it; False once the server has closed."""
        data = self.sock.recv(65536)  # a socket timeout fails the test
        self.events += self.h2.receive_data(data)
        if outgoing := self.h2.data_to_send():  # acknowledgements; the server may be closing already
            try:
                self.sock.sendall(outgoing)
            except OSError:
                pass
        return bool(data)

    def post(self, payload: str) -> int:
        """Send POST /x with a JSON string; returns the stream id."""
        body = json.dumps(payload).encode()
        stream = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream, [(":method", "POST"), (":path", "/x"), (":scheme", "http"),
                                      (":authority", "localhost"), ("content-type", "application/json")])
        self.h2.send_data(stream, body, end_stream=True)
        self.sock.sendall(self.h2.data_to_send())
        return stream

    def events_until_closed(self) -> list[h2.events.Event]:
        """Everything the server sent on this connection, once it has closed it."""
        while self._receive():
            pass
        self.sock.close()
        return self.events


class H11Client:
    """An HTTP/1.1 keep-alive connection driven by the h11 library over a socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.h11 = h11.Connection(our_role=h11.CLIENT)

    def post(self, payload: str) -> None:
        """Send POST /x with a JSON string."""
        body = json.dumps(payload).encode()
        headers = [("host", "localhost"), ("content-type", "application/json"), ("content-length", str(len(body)))]
        self.sock.sendall(self.h11.send(h11.Request(method="POST", target="/x", headers=headers)))
        self.sock.sendall(self.h11.send(h11.Data(data=body)) + self.h11.send(h11.EndOfMessage()))

    def events_until_closed(self) -> list[object]:
        """Everything the server sends until it closes the connection (a socket timeout fails the test)."""
        events: list[object] = []
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(self.sock.recv(65536))
                continue
            events.append(event)
            if isinstance(event, h11.ConnectionClosed):
                self.sock.close()
                return events
            if isinstance(event, h11.EndOfMessage):
                self.h11.start_next_cycle()


def goaway(events: list[h2.events.Event]) -> h2.events.ConnectionTerminated:
    """The GOAWAY the server closed the connection with: the last event, and a graceful one."""
    assert isinstance(events[-1], h2.events.ConnectionTerminated), events
    assert events[-1].error_code == h2.errors.ErrorCodes.NO_ERROR, events
    return events[-1]


@pytest.mark.parametrize("protocol", ["h2c", "h2 over TLS", "http/1.1"])
def test_a_connection_that_sends_no_request_is_closed_after_the_keep_alive_timeout(protocol, server, request):
    if protocol == "http/1.1":
        assert H11Client(server.port).events_until_closed() == [h11.ConnectionClosed()]
        return
    if protocol == "h2c":
        client = H2Client(server.port)
    else:
        tls_server, context = request.getfixturevalue("tls")
        client = H2Client(tls_server.port, context)
    assert goaway(client.events_until_closed()).last_stream_id == 0  # no request was taken


@pytest.mark.parametrize("protocol", ["h2c", "http/1.1"])
def test_a_connection_waiting_for_its_answer_stays_open_then_is_closed_once_idle(protocol, server, project):
    name = protocol.replace("/", "")
    client = H2Client(server.port) if protocol == "h2c" else H11Client(server.port)
    client.post(name)
    wait_file(project.parent / f"{name}.started")
    # A clock without a sleep: this connection opened after the request's did, so once the server has closed it for
    # idling, the request's connection has gone longer than the keep-alive timeout without being idle.
    assert goaway(H2Client(server.port).events_until_closed()).last_stream_id == 0
    (project.parent / f"{name}.release").touch()
    events = client.events_until_closed()
    if isinstance(client, H2Client):
        response = [event for event in events if isinstance(event, h2.events.ResponseReceived)]
        body = b"".join(event.data for event in events if isinstance(event, h2.events.DataReceived))
        assert dict(response[0].headers)[":status"] == "200" and json.loads(body) == {"ok": name}
        assert isinstance(events[-2], h2.events.StreamEnded) and goaway(events).last_stream_id == 1
    else:
        assert [type(event) for event in events] == [h11.Response, h11.Data, h11.EndOfMessage, h11.ConnectionClosed]
        response, data = events[0], events[1]
        assert isinstance(response, h11.Response) and isinstance(data, h11.Data)
        assert response.status_code == 200 and json.loads(data.data) == {"ok": name}


def test_sigterm_closes_an_idle_http2_connection_at_once_with_a_goaway(project):
    server = Server(project, "--graceful-timeout", "600")  # were the idle connection waited for, the test would fail
    try:
        server.wait_ready()
        client = H2Client(server.port)
        server.process.terminate()
        assert goaway(client.events_until_closed()).last_stream_id == 0
        assert server.wait_exit() == 0
    finally:
        server.close()
