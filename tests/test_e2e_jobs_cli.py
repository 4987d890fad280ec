"""The terminal's BatchAPI commands on real processes: `engine run` (a job in the foreground: results, exit status,
progress on pipes and on a terminal, Ctrl+C, resume after kill -9, start-up errors) and `engine jobs
submit|status|list|stop` against a running `engine serve` (Cortex's 400s, API keys, an unreachable server)."""
from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import httpx
import pytest

from engine.testing import Server, free_port, wait_file, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Writes each batch to OUT/<batch_id>.json; an item "fail" makes predict raise; with config "hold", predict writes
# OUT/started (its pid) and waits for that file to exist; on_job_complete writes OUT/complete.json.
PREDICTOR = """
import json
import os
import time
from pathlib import Path


class PythonPredictor:
    def __init__(self, config, job_spec):
        self.out = Path(config["out"])
        self.hold = config.get("hold")

    def predict(self, payload, batch_id):
        if self.hold:
            (self.out / "started").write_text(str(os.getpid()))
            while not Path(self.hold).exists():
                time.sleep(0.02)
        if "fail" in payload:
            raise ValueError("asked to fail")
        (self.out / f"{batch_id}.json").write_text(json.dumps(payload))

    def on_job_complete(self, batch_metrics):
        (self.out / "complete.json").write_text(json.dumps(batch_metrics))
"""

ECHO = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return payload
"""

CONFIG = """
- name: writer
  kind: BatchAPI
  predictor:
    type: python
    path: predictor.py
    config:
      out: {out}

- name: echo
  kind: RealtimeAPI
  predictor:
    type: python
    path: echo.py
"""

KEY = "test-key-1234"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project with a BatchAPI `writer` (results in tmp_path/out) and a RealtimeAPI `echo`."""
    root = tmp_path / "project"
    root.mkdir()
    (tmp_path / "out").mkdir()
    for name, text in {"predictor.py": PREDICTOR, "echo.py": ECHO,
                       "cortex.yaml": CONFIG.format(out=tmp_path / "out")}.items():
        (root / name).write_text(textwrap.dedent(text).lstrip())
    return root


def items_file(path: Path, items: list) -> Path:
    """A JSON-lines file of the items."""
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def engine(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the engine command to its end, with pipes (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def start_engine(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def results(out: Path) -> list:
    """Every item the predictor wrote, batch by batch."""
    return [item for path in sorted(out.glob("*-*-*-*-*.json")) for item in json.loads(path.read_text())]


def reported(stdout: str, what: str) -> str:
    """The value of a `<what>: ...` line of engine run's report."""
    found = re.search(rf"^{what}: (.*)$", stdout, re.MULTILINE)
    assert found, f"no {what} line in:\n{stdout}"
    return found.group(1)


def log_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not re.match(r"\d{4}-\d\d-\d\d [\d:,]+ \S+ [A-Z]+ ", line)]


def progress_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.match(r"\d+/\d+ batches done", line)]


def gone(pid: int) -> bool:
    """True once the process has exited (a zombie counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, before the open or during the read
        return True


def forget_kept_log(stdout: str) -> None:
    """Remove the log engine run kept in the system's temporary directory."""
    Path(reported(stdout, "log")).unlink()


# --- engine run ------------------------------------------------------------------------------------------------


def test_run_writes_every_batch_and_exits_0(project, tmp_path):
    items = [{"i": i} for i in range(24)] + [[1, 2]]  # a line holding an array is one item
    path = items_file(tmp_path / "items.jsonl", items)
    items_file(tmp_path / "items.jsonl.bak", ["fail"])  # the listing is by prefix: only the file named is read
    process = start_engine("run", str(project), "--api", "writer", "--items", str(path), "--batch-size", "4",
                           "--workers", "2")
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stdout + stderr
    out = tmp_path / "out"
    assert sorted(results(out), key=json.dumps) == sorted(items, key=json.dumps)
    assert len(list(out.glob("*-*-*-*-*.json"))) == 7
    assert json.loads((out / "complete.json").read_text())["succeeded"] == 7
    job_id, status = re.fullmatch(r"job (\w+) \(writer api\): (\w+)", stdout.splitlines()[0]).groups()
    assert status == "status_succeeded"
    metrics = json.loads(reported(stdout, "batch_metrics"))
    assert (metrics["succeeded"], metrics["failed"]) == (7, 0)
    log = Path(reported(stdout, "log"))
    assert log.name == f"engine-run-{job_id}.log" and "job ended: status_succeeded" in log.read_text()
    log.unlink()
    # not a terminal: plain lines, the last one final; no bar
    lines = log_lines(stderr)
    assert "\r" not in stderr and lines, stderr
    assert re.fullmatch(r"7/7 batches done, 0 failed(, [\d.]+ batches/s)?", lines[-1]), stderr
    assert not list(Path(tempfile.gettempdir()).glob(f"engine-*-{process.pid}-*"))  # the temporary state is gone


def test_a_failing_batch_exits_1_with_the_failed_count(project, tmp_path):
    path = items_file(tmp_path / "items.jsonl", [1, 2, "fail", 4, 5])
    result = engine("run", str(project), "--api", "writer", "--items", str(path), "--batch-size", "2")
    assert result.returncode == 1, result.stdout + result.stderr
    assert reported(result.stdout, "job \\w+ \\(writer api\\)") == "status_completed_with_failures"
    metrics = json.loads(reported(result.stdout, "batch_metrics"))
    assert (metrics["succeeded"], metrics["failed"]) == (2, 1)
    assert progress_lines(result.stderr)[-1].startswith("3/3 batches done, 1 failed")
    assert "the job's log ends with:" in result.stderr and "ValueError: asked to fail" in result.stderr
    assert sorted(results(tmp_path / "out")) == [1, 2, 5]
    forget_kept_log(result.stdout)

    # retried as SQS counts receives (2: one retry), then kept as a dead letter; with --state-dir all is kept there
    state = tmp_path / "state"
    result = engine("run", str(project), "--api", "writer", "--items", str(path), "--batch-size", "2",
                    "--max-receive-count", "2", "--state-dir", str(state))
    assert result.returncode == 1, result.stdout + result.stderr
    assert json.loads(reported(result.stdout, "batch_metrics"))["failed"] == 2
    dead = Path(reported(result.stdout, "dead letters"))
    assert dead.parent == state / "jobs" / "writer" and Path(reported(result.stdout, "log")).parent == dead.parent
    [letter] = [json.loads(line) for line in dead.read_text().splitlines()]
    assert (letter["items"], letter["attempts"]) == (["fail", 4], 2)


def test_progress_bar_on_a_terminal(project, tmp_path):
    path = items_file(tmp_path / "items.jsonl", list(range(10)))
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "engine", "run", str(project), "--api", "writer", "--items",
                                str(path)], stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    shown = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: every writer has closed it
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    stdout, _ = process.communicate(timeout=120)
    reader.join(30)
    os.close(leader)
    assert process.returncode == 0, stdout + shown.decode()
    text = shown.decode()
    assert re.search(r"\r\[#{30}\] 10/10 batches done, 0 failed[^\r\n]*\x1b\[K\r?\n", text), repr(text)
    forget_kept_log(stdout)


def test_ctrl_c_stops_the_job_and_exits_130(project, tmp_path):
    path = items_file(tmp_path / "items.jsonl", list(range(5)))
    out = tmp_path / "out"
    process = start_engine("run", str(project), "--api", "writer", "--items", str(path), "--config",
                           json.dumps({"hold": str(tmp_path / "never")}), "--state-dir", str(tmp_path / "state"))
    wait_file(out / "started", timeout=60)
    worker = int((out / "started").read_text())
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stdout + stderr
    assert reported(stdout, "job \\w+ \\(writer api\\)") == "status_stopped"
    assert "stopping job" in stderr
    wait_for(lambda: gone(worker), "the worker's end")
    assert not results(out) and not (out / "complete.json").exists()


def test_a_run_killed_outright_resumes_with_the_same_state_dir(project, tmp_path):
    items = list(range(6))
    path = items_file(tmp_path / "items.jsonl", items)
    out, release = tmp_path / "out", tmp_path / "release"
    args = ["run", str(project), "--api", "writer", "--items", str(path), "--state-dir", str(tmp_path / "state")]
    process = start_engine(*args, "--config", json.dumps({"hold": str(release)}))
    wait_file(out / "started", timeout=60)
    process.kill()
    process.communicate(timeout=30)
    release.touch()
    result = engine(*args)  # no --config: the resumed job keeps its own submission
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming job" in result.stderr
    assert sorted(set(results(out))) == items  # at least once


def test_start_up_errors_are_one_paragraph(project, tmp_path):
    path = items_file(tmp_path / "items.jsonl", [1])
    cases = {
        ("--api", "echo", "--items", str(path)):
            r"error: \S+cortex.yaml: 'echo' is a RealtimeAPI, not a BatchAPI; engine run runs a job of a BatchAPI, "
            r"and the BatchAPIs there are: writer",
        ("--api", "nope", "--items", str(path)): r"error: \S+: there is no api named 'nope'; .*: writer",
        ("--api", "writer", "--items", str(tmp_path / "missing.jsonl")):
            r"error: --items \S+missing.jsonl: cannot read the items file \(No such file or directory\); .*",
        ("--api", "writer", "--items", str(path), "--workers", "0"):
            r"error: --workers: must be greater than or equal to 1 \(got 0\)",
    }
    for args, expected in cases.items():
        result = engine("run", str(project), *args)
        assert result.returncode == 1, result.stdout + result.stderr
        assert [line for line in log_lines(result.stderr) if line] == [result.stderr.strip()], result.stderr
        assert re.fullmatch(expected, result.stderr.strip()), result.stderr
    result = engine("run", str(tmp_path), "--api", "writer", "--items", str(path))  # no cortex.yaml there
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "configuration file not found" in \
        result.stderr


# --- engine jobs, against engine serve ---------------------------------------------------------------------------


@pytest.fixture
def server(project, tmp_path):
    """`engine serve` of the project, its jobs kept in tmp_path/state, an API key required."""
    server = Server(project, "--state-dir", str(tmp_path / "state"), "--api-key", KEY)
    try:
        server.wait_ready(60)
        yield server
    finally:
        server.close()


def jobs(server: Server, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess:
    """`engine jobs ...` against the server (the URL and key from the environment)."""
    env = {"ENGINE_URL": server.url, **({"ENGINE_API_KEY": key} if key else {})}
    return engine("jobs", *args, env=env, timeout=60)


def job_status(server: Server, job_id: str) -> dict:
    answer = httpx.get(f"{server.url}/writer", params={"jobID": job_id}, headers={"Authorization": f"Bearer {KEY}"})
    return answer.json()["job_status"]


def test_jobs_submit_status_list(server, tmp_path):
    items = list(range(7))
    path = items_file(tmp_path / "items.jsonl", items)
    result = jobs(server, "submit", "writer", "--items", str(path), "--batch-size", "3", "--workers", "2",
                  "--config", json.dumps({"note": 1}))
    assert result.returncode == 0, result.stdout + result.stderr
    spec = json.loads(result.stdout)
    assert (spec["api_name"], spec["workers"], spec["config"]) == ("writer", 2, {"note": 1})
    wait_for(lambda: job_status(server, spec["job_id"])["status"] == "status_succeeded", "the job's end", 60)
    assert sorted(results(tmp_path / "out")) == items

    result = jobs(server, "status", "/writer", spec["job_id"])  # the API named by its endpoint
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("{\n  ")  # pretty
    status = json.loads(result.stdout)["job_status"]
    assert (status["status"], status["total_batch_count"], status["batch_metrics"]["succeeded"]) == \
        ("status_succeeded", 3, 3)

    (tmp_path / "submission.json").write_text(json.dumps(
        {"workers": 1, "delimited_files": {"s3_paths": [str(path)], "batch_size": 7}}))
    result = jobs(server, "submit", "writer", "--submission", str(tmp_path / "submission.json"), "--dry-run")
    assert (result.returncode, result.stdout) == (0, f"{path}\nvalidations passed\n"), result.stderr
    result = jobs(server, "submit", "writer", "--submission", str(tmp_path / "submission.json"))
    assert result.returncode == 0, result.stderr
    second = json.loads(result.stdout)["job_id"]
    wait_for(lambda: job_status(server, second)["status"] == "status_succeeded", "the second job's end", 60)

    result = jobs(server, "list", "writer")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{second}  status_succeeded  1/0/1 batches succeeded/failed/total",
                                          f"{spec['job_id']}  status_succeeded  3/0/3 batches succeeded/failed/total"]


def test_jobs_refusals(server, tmp_path):
    path = items_file(tmp_path / "items.jsonl", [1, 2])
    result = jobs(server, "submit", "writer", "--items", str(path), "--workers", "0")
    assert result.returncode == 1
    assert result.stderr == ("error: workers: must be greater than or equal to 1 (got 0)\n\njob submission schema "
                             "can be found at https://docs.cortex.dev/v/0.25/ "
                             "(configreader.must_be_greater_than_or_equal_to)\n")
    result = jobs(server, "status", "writer", "0123456789abcdef")
    assert (result.returncode, result.stderr) == (1, "error: failed to get job state: unable to find batch job "
                                                     "0123456789abcdef (writer api) (batchapi.job_not_found)\n")
    result = jobs(server, "list", "echo")  # a RealtimeAPI answers, but not as a job API
    assert result.returncode == 1 and "is not the job API of a BatchAPI" in result.stderr
    result = jobs(server, "list", "writer", key=None)
    assert result.returncode == 1 and "a valid API key is required" in result.stderr and "HTTP 401" in result.stderr
    result = jobs(server, "list", "writer", "--api-key", "wrong")  # the flag wins over the environment
    assert result.returncode == 1 and "HTTP 401" in result.stderr
    url = f"http://127.0.0.1:{free_port()}"
    result = engine("jobs", "list", "writer", "--url", url)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot reach {url}: connection refused") and \
        result.stderr.count("\n") == 1


def test_jobs_stop_a_long_job(server, tmp_path):
    path = items_file(tmp_path / "items.jsonl", list(range(4)))
    out = tmp_path / "out"
    result = jobs(server, "submit", "writer", "--items", str(path), "--config",
                  json.dumps({"hold": str(tmp_path / "never")}))
    assert result.returncode == 0, result.stderr
    job_id = json.loads(result.stdout)["job_id"]
    wait_file(out / "started", timeout=60)
    worker = int((out / "started").read_text())
    result = jobs(server, "stop", "writer", job_id)
    assert (result.returncode, result.stdout) == (0, f"stopped job {job_id}\n"), result.stderr
    result = jobs(server, "status", "writer", job_id)
    assert json.loads(result.stdout)["job_status"]["status"] == "status_stopped"
    wait_for(lambda: gone(worker), "the worker's end")
    result = jobs(server, "stop", "writer", job_id)
    assert (result.returncode, result.stderr) == (1, f"error: {job_id} (writer api): cannot stop batch job because it "
                                                     "is not in progress (batchapi.job_is_not_in_progress)\n")
    assert jobs(server, "list", "writer").stdout.split()[:2] == [job_id, "status_stopped"]
    assert not results(out)
