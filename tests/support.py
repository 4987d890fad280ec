"""Helpers shared by several of the core's test modules (and by no plugin's: those live in engine.testing).

Test modules never import each other; what two of them share lives here.
"""
from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from engine.testing import Server, free_port, wait_file, wait_for

# --- model repositories -------------------------------------------------------------------------------------------


class Model:
    """What JsonFormat loads: the JSON content of model.json (weak-referenceable, unlike a dict)."""

    def __init__(self, data: dict, path: Path) -> None:
        self.data = data
        self.value = data.get("value")
        self.path = path


class JsonFormat:
    """A version is a model.json (or a single .json file); counts loads, unloads and the models alive at once."""

    expected_tree = "model.json"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.loads: Counter[str] = Counter()  # path → loads started
        self.unloaded: list = []
        self.alive = 0  # models in memory, counted from the start of their load to their unload
        self.max_alive = 0

    def validate(self, files):
        return None if files else "the directory is empty"

    def load(self, path):
        path = Path(path)
        with self.lock:
            self.loads[str(path)] += 1
            self.alive += 1
            self.max_alive = max(self.max_alive, self.alive)
        try:
            data = json.loads((path if path.is_file() else path / "model.json").read_text())
            if self.delay:
                time.sleep(self.delay)
            if data.get("raise"):
                raise RuntimeError(data["raise"])
            return Model(data, path)
        except BaseException:
            with self.lock:
                self.alive -= 1
            raise

    def unload(self, model):
        with self.lock:
            self.alive -= 1
            self.unloaded.append(model.value)

    def describe(self, model):
        return {"value": model.value}

    @property
    def total_loads(self) -> int:
        return sum(self.loads.values())


# --- servers ------------------------------------------------------------------------------------------------------


def send_together(server: Server, payloads: list, **kwargs) -> list[httpx.Response]:
    """POST every payload to /batch at once, one thread each; the responses in payload order."""
    with concurrent.futures.ThreadPoolExecutor(len(payloads)) as pool:
        return list(pool.map(lambda p: httpx.post(server.url + "/batch", json=p, timeout=30, **kwargs), payloads))


def samples(server: Server) -> dict[tuple, float]:
    """Every sample of GET /metrics by (name, sorted labels)."""
    text = server.client.get("/metrics").text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    """One sample of what `samples` found; 0.0 when /metrics did not show it."""
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


# --- fresh environments -------------------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the test virtualenv's or engine's settings leaking into the fresh one."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not key.startswith(("ENGINE_", "CUDA_"))}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


# --- the BatchAPI probe (tests/projects/batch/probe.py): the marker files it writes --------------------------------


def markers(folder: Path, kind: str) -> list[dict]:
    """The probe's markers of one kind (attempt, done, init, complete, ...), each with its file name's stem."""
    found = []
    for path in sorted(folder.glob(f"{kind}-*.json")):
        record = json.loads(path.read_text())
        record["name"] = path.stem
        found.append(record)
    return found


def attempts_by_batch(folder: Path) -> dict[str, list]:
    """batch_id → the payload of each attempt the probe saw at it."""
    batches: dict[str, list] = {}
    for record in markers(folder, "attempt"):
        batch_id = record["name"].removeprefix("attempt-").rpartition("-")[0]
        batches.setdefault(batch_id, []).append(record["payload"])
    return batches


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, before the open or during the read
        return False


def blocked_pid(folder: Path, item_id: str) -> int:
    """Wait for the probe to block on item `item_id`; the pid of the worker that holds it."""
    wait_file(folder / f"blocked-{item_id}.json", timeout=60)
    return json.loads((folder / f"blocked-{item_id}.json").read_text())["pid"]


def certificate(directory: Path, name: str, issuer: tuple | None = None, client: bool = False) -> tuple:
    """(certificate file, key file, certificate, key), self-signed or signed by `issuer` = (certificate, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer[0].subject if issuer else subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=1)))
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    if not client:
        import ipaddress

        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    signed = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(signed.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path, signed, key


def wait_tls(server: Server, context: ssl.SSLContext) -> None:
    """Wait until the TLS server answers /healthz."""
    def answers() -> bool:
        try:
            return httpx.get(f"https://127.0.0.1:{server.port}/healthz", verify=context, timeout=5).status_code == 200
        except httpx.TransportError:
            assert server.process.poll() is None, server.output
            return False
    wait_for(answers, "the TLS server answering")


def moto_s3() -> Iterator[str]:
    """A moto S3 server on a free loopback port, for a module-scoped fixture to yield from: its endpoint."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def fresh_bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch, prefix: str) -> tuple[Any, str]:
    """A new bucket on `endpoint`, with the environment pointing boto3 (and so the engine) at it: (client, name)."""
    import boto3

    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=name)
    return client, name
