"""BatchAPI jobs on a live `engine serve` (one server for the module, real worker processes): Cortex v0.25's three
batch test projects (python writing to S3 through moto, onnx, tensorflow) with the right results, the three
submission kinds and dry runs, retries and dead letters, stop and timeout, bad submissions in Cortex's words,
on_job_complete, /metrics, worker_counts and a failing __init__. Crashes and restarts: test_e2e_jobs_recovery.py."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from support import alive, attempts_by_batch, blocked_pid, markers, samples, value

from engine.testing import Server, free_port, wait_for

# found, not imported: importing tensorflow at collection would slow every run that deselects this module
MISSING = [name for name in ("moto", "onnx", "onnxruntime", "tensorflow", "engine_onnx_predictor",
                             "engine_tensorflow_predictor") if importlib.util.find_spec(name) is None]
pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.skipif(bool(MISSING), reason=f"the batch test projects need {', '.join(MISSING)}")]

PROJECT = Path(__file__).resolve().parent / "projects" / "batch"
IN_PROGRESS = ("status_enqueuing", "status_running")
SUFFIX = "\n\njob submission schema can be found at https://docs.cortex.dev/v/0.25/"
DEAD_LETTER_QUEUE = {"arn": "arn:aws:sqs:us-west-2:123456789012:dead-letters", "max_receive_count": 2}
rng = np.random.default_rng(26)
KERNEL = rng.normal(size=(4, 3)).astype(np.float32)
BIAS = rng.normal(size=3).astype(np.float32)

# A SavedModel of the linear classifier KERNEL, BIAS (signature serving_default: x [None, 4] → scores, class_ids).
BUILD_SAVED_MODEL = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf

class Classifier(tf.Module):
    def __init__(self, kernel, bias):
        super().__init__()
        self.kernel = tf.Variable(kernel, dtype=tf.float32)
        self.bias = tf.Variable(bias, dtype=tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def predict(self, x):
        scores = tf.matmul(x, self.kernel) + self.bias
        return {"scores": scores, "class_ids": tf.argmax(scores, axis=1)}

module = Classifier(json.loads(sys.argv[2]), json.loads(sys.argv[3]))
tf.saved_model.save(module, sys.argv[1], signatures={"serving_default": module.predict.get_concrete_function()})
"""


def onnx_model() -> bytes:
    """The linear classifier KERNEL, BIAS as ONNX: input [batch, 4] → scores [batch, 3] (a named dimension takes any
    size: Cortex reshaped None to 1)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "kernel"], ["product"]),
         helper.make_node("Add", ["product", "bias"], ["scores"])],
        "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(KERNEL, "kernel"), numpy_helper.from_array(BIAS, "bias")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


def classes(rows: list[list[float]]) -> list[int]:
    """What the model computes, computed here."""
    return np.argmax(np.array(rows, dtype=np.float32) @ KERNEL + BIAS, axis=1).tolist()


# --- the server -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on loopback, and the environment that points boto3 (the server's and the workers') at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    yield boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="test",
                       aws_secret_access_key="test", region_name="us-east-1"), env
    moto.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """tests/projects/batch with its models made: model/model.onnx and the SavedModel savedmodel/."""
    root = tmp_path_factory.mktemp("jobs") / "project"
    shutil.copytree(PROJECT, root)
    (root / "model").mkdir()
    (root / "model" / "model.onnx").write_bytes(onnx_model())
    subprocess.run([sys.executable, "-c", BUILD_SAVED_MODEL, str(root / "savedmodel"), json.dumps(KERNEL.tolist()),
                    json.dumps(BIAS.tolist())], check=True, capture_output=True)
    return root


@pytest.fixture(scope="module")
def server(project, s3):
    """One `engine serve` for the module; its state directory is state/ beside the project."""
    server = Server(project, "--state-dir", str(project.parent / "state"), env=s3[1])
    server.wait_ready(60)
    yield server
    server.close()


@pytest.fixture
def probe_dir(tmp_path) -> Path:
    """Where the probe API records what happens (the job's config "dir")."""
    folder = tmp_path / "probe"
    folder.mkdir()
    return folder


# --- helpers --------------------------------------------------------------------------------------------------------


def submit(server: Server, api: str, body: dict) -> dict:
    """POST a job; its JobSpec."""
    response = server.client.post(f"/{api}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def job_status(server: Server, api: str, job_id: str) -> dict:
    response = server.client.get(f"/{api}", params={"jobID": job_id})
    assert response.status_code == 200, response.text
    return response.json()["job_status"]


def wait_final(server: Server, api: str, job_id: str, timeout: float = 120) -> dict:
    """Poll the job's status until it is final (a generous deadline: this waits for an event, it measures nothing)."""
    deadline = time.monotonic() + timeout
    while (status := job_status(server, api, job_id))["status"] in IN_PROGRESS:
        assert time.monotonic() < deadline, f"job {job_id} still {status['status']} after {timeout} s:\n" \
                                            f"{job_log(server, api, job_id)}"
        time.sleep(0.05)
    return status


def job_log(server: Server, api: str, job_id: str) -> str:
    path = state_dir(server) / "jobs" / api / f"{job_id}.log"
    return path.read_text() if path.exists() else ""


def state_dir(server: Server) -> Path:
    return Path(server.process.args[server.process.args.index("--state-dir") + 1])


def done_items(folder: Path) -> list:
    return [item for record in markers(folder, "done") for item in record["payload"]]


def job_ids(server: Server, api: str) -> list[str]:
    response = server.client.get(f"/{api}")
    assert response.status_code == 200, response.text
    return [job["job_id"] for job in response.json()["job_statuses"]]


# --- Cortex's three batch test projects ------------------------------------------------------------------------------


def test_image_classifier_python_predictor_reads_and_writes_s3(server, s3):
    client, _ = s3
    inputs, results = f"inputs-{uuid.uuid4().hex[:8]}", f"results-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=inputs)
    client.create_bucket(Bucket=results)
    expected = {}
    for index in range(7):
        pixels = rng.integers(0, 100, size=(4, 4, 3), dtype=np.uint8)
        pixels[..., index % 3] += 120  # the dominant channel is the class
        client.put_object(Bucket=inputs, Key=f"images/img_{index}.rgb", Body=pixels.tobytes())
        expected[f"s3://{inputs}/images/img_{index}.rgb"] = ["red", "green", "blue"][index % 3] + "-job"
    client.put_object(Bucket=inputs, Key="images/img_notes.txt", Body=b"not an image")  # excluded
    client.put_object(Bucket=inputs, Key="images/other.rgb", Body=b"\0\0\0")  # not under the prefix
    source = {"s3_paths": [f"s3://{inputs}/images/img"], "excludes": ["**.txt"], "batch_size": 3}

    dry = server.client.post("/image-classifier", params={"dryRun": "true"},
                             json={"workers": 2, "file_path_lister": source})
    assert dry.status_code == 200 and dry.headers["content-type"].startswith("text/plain")
    assert dry.text == "".join(f"{url}\n" for url in sorted(expected)) + "validations passed"

    spec = submit(server, "image-classifier", {
        "workers": 2, "file_path_lister": source,
        "config": {"dest_s3_dir": f"s3://{results}/out", "labels": {"suffix": "-job"}}})
    assert spec["total_batch_count"] == 0 and spec["config"] == {"dest_s3_dir": f"s3://{results}/out",
                                                                 "labels": {"suffix": "-job"}}
    status = wait_final(server, "image-classifier", spec["job_id"])
    assert status["status"] == "status_succeeded", job_log(server, "image-classifier", spec["job_id"])
    assert status["total_batch_count"] == 3 and status["batch_metrics"]["succeeded"] == 3

    prefix = f"out/{spec['job_id']}/"
    keys = [obj["Key"] for obj in client.list_objects_v2(Bucket=results, Prefix=prefix)["Contents"]]
    batch_files = [key for key in keys if not key.endswith("aggregated_results.json")]
    assert len(batch_files) == 3 and prefix + "aggregated_results.json" in keys
    per_batch = [result for key in batch_files
                 for result in json.loads(client.get_object(Bucket=results, Key=key)["Body"].read())]
    assert {result["url"]: result["class"] for result in per_batch} == expected
    aggregated = json.loads(client.get_object(Bucket=results, Key=prefix + "aggregated_results.json")["Body"].read())
    assert sorted(aggregated, key=lambda r: r["url"]) == sorted(per_batch, key=lambda r: r["url"])


def model_results(folder: Path) -> tuple[list, list]:
    """The rows and classes of every batch file an onnx or tensorflow job wrote."""
    rows, found = [], []
    for path in folder.glob("*.json"):
        result = json.loads(path.read_text())
        rows += result["rows"]
        found += result["classes"]
    return rows, found


@pytest.mark.parametrize("api, workers", [("onnx", 2), ("tensorflow", 1)])
def test_model_predictor_writes_the_models_results(server, tmp_path, api, workers):
    rows = rng.normal(size=(20, 4)).round(3).tolist()
    spec = submit(server, api, {"workers": workers, "item_list": {"items": rows, "batch_size": 6},
                                "config": {"dest_dir": str(tmp_path)}})
    status = wait_final(server, api, spec["job_id"], timeout=300)
    assert status["status"] == "status_succeeded", job_log(server, api, spec["job_id"])
    assert status["total_batch_count"] == 4 and status["batch_metrics"]["succeeded"] == 4
    assert len(list((tmp_path / spec["job_id"]).glob("*.json"))) == 4
    found_rows, found = model_results(tmp_path / spec["job_id"])
    assert sorted(zip(map(tuple, found_rows), found, strict=True)) == \
        sorted(zip(map(tuple, rows), classes(rows), strict=True))


# --- the submission kinds --------------------------------------------------------------------------------------------


def test_item_list_in_batches_with_the_job_config_merged(server, probe_dir):
    config = {"dir": str(probe_dir), "nested": {"overridden": "job"}, "top": "job"}
    spec = submit(server, "probe", {"workers": 1, "item_list": {"items": list(range(7)), "batch_size": 3},
                                    "config": config})
    status = wait_final(server, "probe", spec["job_id"])
    assert status["status"] == "status_succeeded"
    assert sorted(record["payload"] for record in markers(probe_dir, "done")) == [[0, 1, 2], [3, 4, 5], [6]]
    (init,) = markers(probe_dir, "init")
    assert init["config"] == {"nested": {"from_api": 1, "overridden": "job"}, "top": "job", "dir": str(probe_dir)}
    assert init["job_spec"]["config"] == config  # the job's own config, as Cortex's JobSpec holds it
    assert f"probe ready in process {init['pid']}" in job_log(server, "probe", spec["job_id"])


def test_items_reach_predict_exactly_as_submitted(server, probe_dir):
    """As Cortex's worker (json.loads of the batch): integers of any size, lone surrogates, non-ASCII text."""
    items = r'[123456789012345678901234567890, "\ud800 lone", {"\u00fc": [1.5, null, true]}, 1e300, "\ud83d\ude00"]'
    body = f'{{"workers": 1, "item_list": {{"items": {items}, "batch_size": 2}}, "config": {{"dir": "{probe_dir}"}}}}'
    response = server.client.post("/probe", content=body.encode())
    assert response.status_code == 200, response.text
    status = wait_final(server, "probe", response.json()["job_id"])
    assert status["status"] == "status_succeeded", job_log(server, "probe", status["job_id"])
    payloads = sorted((record["payload"] for record in markers(probe_dir, "done")), key=json.dumps)
    assert payloads == sorted([[123456789012345678901234567890, "\ud800 lone"], [{"\u00fc": [1.5, None, True]}, 1e300],
                               ["\U0001f600"]], key=json.dumps)


def test_file_path_lister_of_local_files_with_globs_and_dry_run(server, probe_dir, tmp_path):
    data = tmp_path / "data"
    for name in ["img_1.jpg", "img_2.jpg", "img_3.png", "sub/img_4.jpg", "skip_me.jpg", "notes.txt"]:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text(name)
    source = {"s3_paths": [f"{data}/"], "includes": ["**.jpg", "**.png"], "excludes": ["**/skip_*"], "batch_size": 2}
    wanted = [f"{data}/{name}" for name in ["img_1.jpg", "img_2.jpg", "img_3.png", "sub/img_4.jpg"]]

    dry = server.client.post("/probe?dryRun=true", json={"workers": 1, "file_path_lister": source})
    assert dry.status_code == 200 and dry.text == "".join(f"{name}\n" for name in wanted) + "validations passed"
    assert not markers(probe_dir, "init")  # a dry run runs nothing

    spec = submit(server, "probe", {"workers": 2, "file_path_lister": source, "config": {"dir": str(probe_dir)}})
    status = wait_final(server, "probe", spec["job_id"])
    assert status["status"] == "status_succeeded" and status["total_batch_count"] == 2
    assert sorted(done_items(probe_dir)) == wanted


def test_delimited_files_of_local_ndjson(server, probe_dir, tmp_path):
    data = tmp_path / "ndjson"
    data.mkdir()
    (data / "part-1.json").write_text("".join(json.dumps({"id": index}) + "\n" for index in range(5)))
    (data / "part-2.json").write_text('{"id": 5}\n\n{"id": 6} {"id": 7}\n')  # a stream of values, as Cortex's
    (data / "ignored.txt").write_text("not json")
    dry = server.client.post("/probe?dryRun=1", json={"workers": 1, "delimited_files": {
        "s3_paths": [str(data / "part-")], "batch_size": 3}})
    assert dry.text == f"{data}/part-1.json\n{data}/part-2.json\nvalidations passed"
    spec = submit(server, "probe", {"workers": 1, "delimited_files": {"s3_paths": [str(data / "part-")],
                                                                      "batch_size": 3},
                                    "config": {"dir": str(probe_dir)}})
    status = wait_final(server, "probe", spec["job_id"])
    assert status["status"] == "status_succeeded" and status["total_batch_count"] == 3
    assert sorted(item["id"] for item in done_items(probe_dir)) == list(range(8))


def test_item_list_dry_run_validates_only(server):
    dry = server.client.post("/probe?dryRun=true", json={"workers": 1, "item_list": {"items": [1], "batch_size": 1}})
    assert (dry.status_code, dry.text) == (200, "validations passed")


# --- retries, dead letters, metrics -----------------------------------------------------------------------------------

ITEMS = [{"id": 0}, {"id": 1, "do": "fail_once"}, {"id": 2, "do": "fail_always"}, {"id": 3}]


def attempts_by_item(folder: Path) -> dict[int, int]:
    """item id → attempts at its batch (batch_size 1); each batch's attempts all carry its items."""
    counts = {}
    for payloads in attempts_by_batch(folder).values():
        assert all(payload == payloads[0] for payload in payloads)  # a retry keeps its batch_id
        (item,) = payloads[0]
        assert item["id"] not in counts  # one batch_id per batch
        counts[item["id"]] = len(payloads)
    return counts


def test_dead_letter_queue_retries_then_keeps_failed_batches(server, probe_dir):
    spec = submit(server, "probe", {"workers": 2, "item_list": {"items": ITEMS, "batch_size": 1},
                                    "sqs_dead_letter_queue": DEAD_LETTER_QUEUE, "config": {"dir": str(probe_dir)}})
    status = wait_final(server, "probe", spec["job_id"])
    assert status["status"] == "status_completed_with_failures"
    assert attempts_by_item(probe_dir) == {0: 1, 1: 2, 2: 2, 3: 1}
    assert sorted(item["id"] for item in done_items(probe_dir)) == [0, 1, 3]
    metrics = status["batch_metrics"]
    assert (metrics["succeeded"], metrics["failed"]) == (3, 3)  # failed counts failed attempts, as Cortex's

    (failed_batch,) = [batch_id for batch_id, payloads in attempts_by_batch(probe_dir).items()
                       if payloads[0][0]["id"] == 2]
    answer = server.client.get(f"/probe/{spec['job_id']}/failed_batches").json()
    assert answer["job_id"] == spec["job_id"]
    (dead,) = answer["failed_batches"]
    assert (dead["batch_id"], dead["attempts"], dead["items"]) == (failed_batch, 2, [ITEMS[2]])
    assert "ValueError: item 2 fails on attempt 2" in dead["error"]
    lines = (state_dir(server) / "jobs" / "probe" / f"{spec['job_id']}.dead_letter.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [dead]

    (complete,) = markers(probe_dir, "complete")  # on_job_complete runs after the retries, with their outcome
    assert complete["batch_metrics"] == metrics


def test_without_dead_letter_queue_a_failed_batch_is_not_retried_and_metrics_count_it(server, probe_dir):
    spec = submit(server, "probe", {"workers": 1, "item_list": {"items": ITEMS, "batch_size": 1},
                                    "config": {"dir": str(probe_dir)}})
    job_id = spec["job_id"]
    status = wait_final(server, "probe", job_id)
    assert status["status"] == "status_completed_with_failures"
    assert attempts_by_item(probe_dir) == {0: 1, 1: 1, 2: 1, 3: 1}
    assert (status["batch_metrics"]["succeeded"], status["batch_metrics"]["failed"]) == (2, 2)
    assert not (state_dir(server) / "jobs" / "probe" / f"{job_id}.dead_letter.jsonl").exists()
    log = job_log(server, "probe", job_id)
    assert "failed processing batch" in log and "ValueError: item 1 fails on attempt 1" in log

    found = samples(server)
    assert value(found, "cortex_batch_succeeded_total", api_name="probe", job_id=job_id) == 2
    assert value(found, "cortex_batch_failed_total", api_name="probe", job_id=job_id) == 2
    assert value(found, "cortex_time_per_batch_count", api_name="probe", job_id=job_id) == 2


# --- on_job_complete, worker_counts, a failing __init__ ---------------------------------------------------------------


def test_on_job_complete_runs_once_after_every_batch_with_the_outcome(server, probe_dir):
    config = {"dir": str(probe_dir)}
    spec = submit(server, "probe", {"workers": 2, "item_list": {"items": list(range(10)), "batch_size": 2},
                                    "config": config})
    status = wait_final(server, "probe", spec["job_id"])
    assert status["status"] == "status_succeeded"
    (complete,) = markers(probe_dir, "complete")
    assert complete["pid"] in {init["pid"] for init in markers(probe_dir, "init")}  # on one of the job's workers
    assert len(complete["done"]) == 5  # every batch had finished
    assert complete["batch_metrics"] == status["batch_metrics"]
    assert complete["batch_metrics"]["succeeded"] == 5 and complete["batch_metrics"]["failed"] == 0
    assert complete["batch_metrics"]["average_time_per_batch"] > 0
    job_spec = complete["job_spec"]
    assert job_spec["batch_metrics"] == complete["batch_metrics"]
    assert {key: job_spec[key] for key in ("job_id", "api_name", "config", "workers", "total_batch_count",
                                           "start_time")} == {
        "job_id": spec["job_id"], "api_name": "probe", "config": config, "workers": 2, "total_batch_count": 5,
        "start_time": spec["start_time"]}
    pids = [init["pid"] for init in markers(probe_dir, "init")]
    wait_for(lambda: not any(alive(pid) for pid in pids), "the finished job's workers exiting", timeout=60)


def test_on_job_complete_raising_is_a_worker_error(server, probe_dir):
    spec = submit(server, "probe", {"workers": 1, "item_list": {"items": [1, 2], "batch_size": 1},
                                    "config": {"dir": str(probe_dir), "complete_raise": "cannot aggregate"}})
    status = wait_final(server, "probe", spec["job_id"])
    assert status["status"] == "status_worker_error"  # as Cortex's, although every batch succeeded
    assert status["batch_metrics"]["succeeded"] == 2
    log = job_log(server, "probe", spec["job_id"])
    assert "failed to handle on_job_complete" in log and "RuntimeError: cannot aggregate" in log


def test_worker_counts_while_running_and_null_when_finished(server, probe_dir):
    items = [{"id": "a", "do": "block"}, {"id": "b", "do": "block"}, {"id": "c"}]
    spec = submit(server, "probe", {"workers": 2, "item_list": {"items": items, "batch_size": 1},
                                    "config": {"dir": str(probe_dir)}})
    pids = {blocked_pid(probe_dir, "a"), blocked_pid(probe_dir, "b")}
    status = job_status(server, "probe", spec["job_id"])
    assert status["status"] == "status_running" and status["batches_in_queue"] == 3
    assert status["worker_counts"] == {"pending": 0, "initializing": 0, "running": 2, "succeeded": 0, "failed": 0,
                                       "stalled": 0, "unknown": 0}
    inits = markers(probe_dir, "init")
    assert {init["pid"] for init in inits} == pids and len(inits) == 2  # __init__ once per worker
    assert all(init["job_spec"]["total_batch_count"] == 3 for init in inits)  # the final count, as in Cortex
    (probe_dir / "gate-a").touch()
    (probe_dir / "gate-b").touch()
    status = wait_final(server, "probe", spec["job_id"])
    assert status["status"] == "status_succeeded"
    assert status["worker_counts"] is None and status["batches_in_queue"] == 0


def test_jobs_of_one_api_run_side_by_side_and_are_listed_newest_first(server, tmp_path):
    held, free = tmp_path / "held", tmp_path / "free"
    held.mkdir()
    free.mkdir()
    first = submit(server, "probe", {"workers": 1, "config": {"dir": str(held)},
                                     "item_list": {"items": [{"id": "h", "do": "block"}, {"id": 1}], "batch_size": 1}})
    blocked_pid(held, "h")
    second = submit(server, "probe", {"workers": 1, "config": {"dir": str(free)},
                                      "item_list": {"items": [{"id": 2}], "batch_size": 1}})
    assert wait_final(server, "probe", second["job_id"])["status"] == "status_succeeded"  # not queued behind
    assert job_status(server, "probe", first["job_id"])["status"] == "status_running"
    listed = server.client.get("/probe").json()["job_statuses"]
    assert [job["job_id"] for job in listed][:2] == [second["job_id"], first["job_id"]]
    assert server.client.get(f"/probe/{first['job_id']}").json()["job_status"]["status"] == "status_running"
    (held / "gate-h").touch()
    assert wait_final(server, "probe", first["job_id"])["status"] == "status_succeeded"
    assert sorted(str(item["id"]) for item in done_items(held)) == ["1", "h"]


def test_many_small_batches_each_run_exactly_once(server, probe_dir):
    spec = submit(server, "probe", {"workers": 3, "item_list": {"items": list(range(300)), "batch_size": 1},
                                    "config": {"dir": str(probe_dir)}})
    status = wait_final(server, "probe", spec["job_id"])
    assert status["status"] == "status_succeeded"
    assert status["batch_metrics"]["succeeded"] == 300 == status["total_batch_count"]
    assert sorted(done_items(probe_dir)) == list(range(300))  # no batch twice, none lost
    assert all(len(payloads) == 1 for payloads in attempts_by_batch(probe_dir).values())


def test_a_failing_init_is_a_worker_error_with_its_traceback_in_the_job_log(server, probe_dir):
    spec = submit(server, "probe", {"workers": 1, "item_list": {"items": [1, 2], "batch_size": 1},
                                    "config": {"dir": str(probe_dir), "init_raise": "no model for you"}})
    status = wait_final(server, "probe", spec["job_id"])
    assert status["status"] == "status_worker_error" and status["worker_counts"] is None
    log = job_log(server, "probe", spec["job_id"])
    assert "Traceback" in log and "RuntimeError: no model for you" in log and "probe.py" in log
    assert not markers(probe_dir, "attempt")


# --- stop and timeout -------------------------------------------------------------------------------------------------


def test_stop_kills_the_workers_and_skips_on_job_complete(server, probe_dir):
    items = [{"id": "s", "do": "block"}, {"id": "t"}]
    spec = submit(server, "probe", {"workers": 1, "item_list": {"items": items, "batch_size": 1},
                                    "config": {"dir": str(probe_dir)}})
    job_id = spec["job_id"]
    pid = blocked_pid(probe_dir, "s")
    stopped = server.client.delete("/probe", params={"jobID": job_id})
    assert (stopped.status_code, stopped.json()) == (200, {"message": f"stopped job {job_id}"})
    status = job_status(server, "probe", job_id)
    assert status["status"] == "status_stopped" and status["end_time"] is not None
    wait_for(lambda: not alive(pid), "the stopped job's worker exiting", timeout=60)
    assert not markers(probe_dir, "complete") and not markers(probe_dir, "done")
    assert "request received to stop job; performing cleanup..." in job_log(server, "probe", job_id)

    again = server.client.delete(f"/probe/{job_id}")  # the path form of Cortex's docs and v0.19–v0.20
    assert again.status_code == 400
    assert again.json() == {"kind": "batchapi.job_is_not_in_progress",
                            "message": f"{job_id} (probe api): cannot stop batch job because it is not in progress"}


def test_timeout_ends_the_job_as_timed_out(server, probe_dir):
    spec = submit(server, "probe", {"workers": 1, "timeout": 1, "config": {"dir": str(probe_dir)},
                                    "item_list": {"items": [{"id": "forever", "do": "block"}], "batch_size": 1}})
    status = wait_final(server, "probe", spec["job_id"])
    assert status["status"] == "status_timed_out"
    assert "terminating job after exceeding the specified timeout of 1 seconds" in job_log(server, "probe",
                                                                                            spec["job_id"])
    if (probe_dir / "blocked-forever.json").exists():  # the batch had started: its worker is killed
        pid = blocked_pid(probe_dir, "forever")
        wait_for(lambda: not alive(pid), "the timed-out job's worker exiting", timeout=60)
    assert not markers(probe_dir, "complete")


# --- bad submissions --------------------------------------------------------------------------------------------------

BAD = {
    "missing source": ({"workers": 1}, "batchapi.specify_exactly_one_key",
                       "specify exactly one of the following keys: item_list, file_path_lister, or delimited_files"
                       + SUFFIX),
    "workers 0": ({"workers": 0, "item_list": {"items": [1], "batch_size": 1}},
                  "configreader.must_be_greater_than_or_equal_to",
                  "workers: must be greater than or equal to 1 (got 0)" + SUFFIX),
    "item too large": ({"workers": 1, "item_list": {"items": [1, "x" * 256_000], "batch_size": 1}},
                       "batchapi.item_size_exceeds_limit",
                       "item 1 has size 256002 bytes which exceeds the limit (256000 bytes)" + SUFFIX),
    "body over 10 MiB": ({"workers": 1, "item_list": {"items": ["x" * (10 << 20)], "batch_size": 1}}, "error",
                         "http: request body too large"),
    "no file matches": ({"workers": 1, "file_path_lister": {"s3_paths": ["no-such-dir/"], "batch_size": 1}},
                        "batchapi.no_s3_files_found", "file_path_lister: no s3 files match search criteria"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_submission_is_refused_in_cortex_words_and_creates_no_job(server, case):
    body, kind, message = BAD[case]
    before = job_ids(server, "probe")
    response = server.client.post("/probe", json=body)
    assert response.status_code == 400
    assert response.json() == {"kind": kind, "message": message}
    assert job_ids(server, "probe") == before


def test_a_dry_run_that_fails_a_check_answers_text(server):
    response = server.client.post("/probe?dryRun=true", json={
        "workers": 1, "file_path_lister": {"s3_paths": ["no-such-dir/"], "batch_size": 1}})
    assert response.status_code == 400 and response.headers["content-type"].startswith("text/plain")
    assert response.text == "\nfile_path_lister: no s3 files match search criteria\n"


def test_unknown_job_and_missing_job_id(server):
    for method in ("GET", "DELETE"):
        response = server.client.request(method, "/probe", params={"jobID": "0123456789abcdef"})
        assert response.status_code == 400
        assert response.json() == {"kind": "batchapi.job_not_found", "message": "failed to get job state: unable to "
                                   "find batch job 0123456789abcdef (probe api)"}
    response = server.client.delete("/probe")
    assert response.status_code == 400
    assert response.json() == {"kind": "endpoints.query_param_required", "message": "query param required: jobID"}


def test_a_batch_too_large_found_while_reading_files_fails_the_enqueuing(server, tmp_path):
    data = tmp_path / "large.json"
    data.write_text("".join(json.dumps({"text": "x" * 150_000}) + "\n" for _ in range(2)))
    spec = submit(server, "probe", {"workers": 1, "delimited_files": {"s3_paths": [str(data)], "batch_size": 2},
                                    "config": {"dir": str(tmp_path / uuid.uuid4().hex)}})
    status = wait_final(server, "probe", spec["job_id"])
    assert status["status"] == "status_enqueue_failed"
    log = job_log(server, "probe", spec["job_id"])
    assert "failed to enqueue all batches: " in log and "exceeds the 256000 bytes limit" in log
    assert os.path.basename(str(data)) in log
