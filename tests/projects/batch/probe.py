"""A BatchAPI predictor that records what it is given as files in config["dir"], for tests to assert on.

Markers: init-<pid>.json (config and job_spec, per worker), attempt-<batch_id>-<n>.json at the start of the n-th
attempt at a batch, done-<batch_id>-<n>.json when it succeeds, blocked-<id>.json while an item holds its batch,
complete-<pid>-<n>.json from on_job_complete. Items that are objects steer it with "do": "fail_always", "fail_once"
(raises on the first attempt only), "block" (on the first attempt: waits for the file gate-<id>). The config's
"init_raise" and "complete_raise" make __init__ and on_job_complete raise; "init_kill" and "complete_kill" make them
SIGKILL their own process (a crash)."""
import json
import os
import signal
import time
from pathlib import Path

GATE_TIMEOUT = 300  # a blocked predict ends by itself if nobody opens its gate (its worker is normally killed)


def write(path, value):
    """Write JSON atomically: a reader that sees the file sees all of it."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value))
    os.replace(temporary, path)


def claim(folder, stem, value):
    """Create folder/<stem>-<n>.json with the lowest free n (atomically) and return n."""
    n = 1
    while True:
        try:
            fd = os.open(folder / f"{stem}-{n}.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            n += 1
            continue
        with os.fdopen(fd, "w") as file:
            json.dump(value, file)
        return n


class PythonPredictor:
    def __init__(self, config, job_spec):
        self.dir = Path(config["dir"])
        self.job_spec = job_spec
        self.config = config
        if config.get("init_raise"):
            raise RuntimeError(config["init_raise"])
        if config.get("init_kill"):
            claim(self.dir, "killed-init", {"pid": os.getpid()})
            os.kill(os.getpid(), signal.SIGKILL)
        write(self.dir / f"init-{os.getpid()}.json", {"config": config, "job_spec": job_spec, "pid": os.getpid()})
        print(f"probe ready in process {os.getpid()}")  # a worker's output goes to the job's log

    def predict(self, payload, batch_id):
        attempt = claim(self.dir, f"attempt-{batch_id}", {"payload": payload, "pid": os.getpid()})
        for item in payload:
            action = item.get("do") if isinstance(item, dict) else None
            if action == "fail_always" or (action == "fail_once" and attempt == 1):
                raise ValueError(f"item {item['id']} fails on attempt {attempt}")
            if action == "block" and attempt == 1:
                write(self.dir / f"blocked-{item['id']}.json", {"pid": os.getpid(), "batch_id": batch_id})
                gate, deadline = self.dir / f"gate-{item['id']}", time.monotonic() + GATE_TIMEOUT
                while not gate.exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
        write(self.dir / f"done-{batch_id}-{attempt}.json", {"payload": payload, "pid": os.getpid()})

    def on_job_complete(self, batch_metrics):
        done = sorted(path.name for path in self.dir.glob("done-*.json"))
        if self.config.get("complete_raise"):
            raise RuntimeError(self.config["complete_raise"])
        if self.config.get("complete_kill"):
            claim(self.dir, "killed-complete", {"pid": os.getpid()})
            os.kill(os.getpid(), signal.SIGKILL)
        claim(self.dir, f"complete-{os.getpid()}", {"batch_metrics": batch_metrics, "job_spec": self.job_spec,
                                                    "pid": os.getpid(), "done": done})
