"""Warm-up of a tensorflow API over HTTP with a real `engine serve`: its SavedModel's tf_serving_warmup_requests and
then its predictor.warmup_file run before /readyz is 200, and a version dropped in while serving is warmed up before
it takes traffic. The model counts its own calls, so each answer says how many ran before it in that process."""
from __future__ import annotations

import json

import pytest

import engine.testing
from engine.testing import Server, api_yaml, free_port, wait_for, write_project

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

START_TIMEOUT = 120  # importing TensorFlow alone takes seconds

RECORDING = """
import json, urllib.error, urllib.request

class TensorFlowPredictor:
    def __init__(self, tensorflow_client, config):
        self.client, self.config = tensorflow_client, config

    def predict(self, payload, headers):
        outputs = self.client.predict(payload)
        event = {"call": "predict", "outputs": outputs, "mode": headers.get("x-mode")}
        if headers.get("x-mode") == "warm-up":
            try:
                event["readyz"] = urllib.request.urlopen(self.config["readyz"], timeout=10).status
            except urllib.error.HTTPError as error:
                event["readyz"] = error.code
        self.record(event)
        return outputs

    def post_predict(self, response):
        self.record({"call": "post_predict", "response": response})

    def record(self, event):
        with open(self.config["record"], "a") as file:
            file.write(json.dumps(event) + "\\n")
"""


def test_savedmodel_and_file_warmups_run_before_ready_and_a_new_version_before_traffic(tmp_path, warmed,
                                                                                       monkeypatch):
    port, record = free_port(), tmp_path / "record.jsonl"
    extra = f"""
        models: {{path: models/counted}}
        warmup_file: warmup.jsonl
        config: {{record: {record}, readyz: 'http://127.0.0.1:{port}/readyz'}}
    """
    project = write_project(tmp_path / "project", {
        "cortex.yaml": api_yaml("counted", type_="tensorflow", predictor_extra=extra),
        "predictor.py": RECORDING,
        "warmup.jsonl": json.dumps({"payload": {"x": [5.0]}, "headers": {"x-mode": "warm-up"}})})
    warmed(project / "models" / "counted" / "1", 1.0, {"x": [1.0]})  # one SavedModel warm-up record
    warmed(tmp_path / "incoming", 2.0, {"x": [1.0]}, {"x": [2.0]}, {"x": [3.0]})  # three
    monkeypatch.setattr(engine.testing, "free_port", lambda: port)  # the port its config names
    server = Server(project, env={"ENGINE_MODEL_POLL_INTERVAL": "0.1"})
    try:
        server.wait_ready(START_TIMEOUT)
        answer = {"y": [5.0], "calls": [2]}  # the SavedModel's record ran first
        assert [json.loads(line) for line in record.read_text().splitlines()] == [
            {"call": "predict", "outputs": answer, "mode": "warm-up", "readyz": 503},
            {"call": "post_predict", "response": answer}]
        (tmp_path / "incoming").rename(project / "models" / "counted" / "2")
        def newer() -> dict | None:
            answer = server.client.post("/counted", json={"x": [1.0]}).json()
            return None if answer["y"] == [1.0] else answer

        # the first answer of version 2 to a client comes after its three warm-up calls
        assert wait_for(newer, "version 2 serving", 60) == {"y": [2.0], "calls": [4]}
        assert "models/counted/2: 3 warm-up records of assets.extra/tf_serving_warmup_requests replayed" \
            in server.output
    finally:
        server.close()
