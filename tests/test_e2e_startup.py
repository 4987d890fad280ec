"""What a user meets before the first request: start-up errors, validate, tracebacks, flags, --cpu, temp folders."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from engine.testing import api_yaml, write_project

pytestmark = pytest.mark.e2e

SIMPLE = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return {"echo": payload}
"""

RAISES = """
import helper


class PythonPredictor:
    def __init__(self, config):
        if config.get("fail_init"):
            helper.fail("in __init__")

    def predict(self, payload):
        return helper.fail(payload)
"""

HELPER = """
def fail(what):
    raise ValueError(f"bad {what}")
"""


def engine(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the engine command to its end."""
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def said(output: str) -> list[str]:
    """The lines of `output` that are not log lines (`<date> <time> <logger> <LEVEL> ...`)."""
    return [line for line in output.strip().splitlines() if not re.match(r"\d{4}-\d\d-\d\d [\d:,]+ \S+ [A-Z]+ ", line)]


def temp_dirs_of(pid: int) -> list[Path]:
    """engine's temporary folders owned by process `pid`."""
    return sorted(Path(tempfile.gettempdir()).glob(f"engine-*-{pid}-*"))


def dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- start-up failures: one paragraph, exit 1, nothing left behind --------------------------------------------


def test_a_taken_port_is_one_paragraph_and_leaves_no_folders(serve, tmp_path):
    first = serve({"cortex.yaml": api_yaml("x"), "predictor.py": SIMPLE})
    project = write_project(tmp_path / "second", {"cortex.yaml": api_yaml("x"), "predictor.py": SIMPLE})
    process = subprocess.Popen([sys.executable, "-m", "engine", "serve", str(project), "--port", str(first.port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{first.port}: Address already in use" in err
    assert "Traceback" not in out + err and "LifespanFailure" not in out + err
    assert len(said(err)) == 1
    assert temp_dirs_of(process.pid) == []


@pytest.mark.parametrize("args, message", [
    (["--port", "99999"], "argument --port: 99999 is not a TCP port (0 to 65535)"),
    (["--port", "http"], "argument --port: invalid literal for int()"),
    (["--host", "300.1.1.1"], "cannot listen on 300.1.1.1:"),
    (["--host", "no-such-host.invalid"], "is not an address or a host name of this machine"),
    (["--graceful-timeout", "-1"], "argument --graceful-timeout: -1 is negative"),
    (["--server", "nosuch"], "--server nosuch: no installed plugin provides that HTTP server; installed: hypercorn"),
    (["--server", "hypercorn", "--max-connections", "5"], "--max-connections: the hypercorn server cannot do that"),
    (["--server", "hypercorn", "--certfile", "missing.pem", "--keyfile", "missing.key"],
     "--certfile missing.pem: no such file"),
])
def test_bad_flags_are_one_line_and_exit_1(tmp_path, args, message):
    project = write_project(tmp_path, {"cortex.yaml": api_yaml("x"), "predictor.py": SIMPLE})
    run = engine("serve", str(project), *args)
    assert run.returncode == 1
    assert message in run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert len(said(run.stderr)) == 1


def test_a_bad_environment_variable_names_itself(tmp_path):
    project = write_project(tmp_path, {"cortex.yaml": api_yaml("x"), "predictor.py": SIMPLE})
    run = engine("serve", str(project), env={"ENGINE_PORT": "eighty"})
    assert run.returncode == 1
    assert "environment variable ENGINE_PORT='eighty'" in run.stderr and "Traceback" not in run.stderr


def test_folders_of_a_killed_run_are_removed_at_the_next_start(serve):
    stale = Path(tempfile.mkdtemp(prefix=f"engine-project-{dead_pid()}-"))
    (stale / "predictor.py").write_text("")
    server = serve({"cortex.yaml": api_yaml("x"), "predictor.py": SIMPLE})
    assert not stale.exists()
    assert temp_dirs_of(server.process.pid)  # its own view, alive while it runs
    assert server.stop() == 0
    assert temp_dirs_of(server.process.pid) == []


def test_a_failed_init_leaves_no_folders(serve):
    server = serve({"cortex.yaml": api_yaml("x", predictor_extra="config:\n  fail_init: true"),
                    "predictor.py": RAISES, "helper.py": HELPER}, ready=False)
    assert server.wait_exit() == 1
    assert temp_dirs_of(server.process.pid) == []


# --- tracebacks name the user's files -------------------------------------------------------------------------


def test_predict_traceback_starts_at_the_users_code_and_names_their_files(serve, tmp_path):
    server = serve({"cortex.yaml": api_yaml("x"), "predictor.py": RAISES, "helper.py": HELPER})
    assert server.client.post("/x", json=1).status_code == 500
    server.stop()
    traceback = server.output.split("Traceback (most recent call last):\n", 1)[1]
    frames = [line for line in traceback.splitlines() if line.startswith("  File ")]
    assert frames[0].startswith(f'  File "{tmp_path}/project/predictor.py", line 10, in predict')
    assert frames[1].startswith(f'  File "{tmp_path}/project/helper.py"')
    assert len(frames) == 2
    assert "engine-project-" not in server.output and "ValueError: bad 1" in server.output


def test_debug_logging_keeps_engines_frames(serve, tmp_path):
    server = serve({"cortex.yaml": api_yaml("x"), "predictor.py": RAISES, "helper.py": HELPER},
                   "--log-level", "debug")
    assert server.client.post("/x", json=1).status_code == 500
    server.stop()
    assert "/engine/" in server.output.split("Traceback (most recent call last):\n", 1)[1]
    assert f'"{tmp_path}/project/helper.py"' in server.output


def test_init_traceback_starts_at_the_users_code(serve, tmp_path):
    server = serve({"cortex.yaml": api_yaml("x", predictor_extra="config:\n  fail_init: true"),
                    "predictor.py": RAISES, "helper.py": HELPER}, ready=False)
    assert server.wait_exit() == 1
    traceback = server.output.split("Traceback (most recent call last):\n", 1)[1]
    assert traceback.startswith(f'  File "{tmp_path}/project/predictor.py", line 7, in __init__')
    assert "ValueError: bad in __init__" in traceback and "engine-project-" not in server.output


# --- validate fails wherever serve would -------------------------------------------------------------------


@pytest.mark.parametrize("source, message", [
    ("import no_such_module_here\n" + SIMPLE, "ModuleNotFoundError: No module named 'no_such_module_here'"),
    ("# PythonPredictor lives elsewhere\nclass Other:\n    pass\n", "PythonPredictor class is not defined"),
    ("from helper import fail as PythonPredictor\n", "PythonPredictor class is not defined in predictor.py"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n" + SIMPLE, "crashed the Python process (SIGSEGV)"),
    ("import sys\nsys.exit(3)\n" + SIMPLE, "SystemExit: 3"),
])
def test_validate_fails_where_serve_would(tmp_path, source, message):
    project = write_project(tmp_path, {"cortex.yaml": api_yaml("x"), "predictor.py": source, "helper.py": HELPER})
    run = engine("validate", str(project))
    assert run.returncode == 1, run.stdout
    assert message in run.stderr
    assert f"{project}/cortex.yaml: api 'x'" in run.stderr


def test_validate_bounds_an_import_that_never_returns(tmp_path):
    hangs = "import threading\nthreading.Event().wait()\n" + SIMPLE
    project = write_project(tmp_path, {"cortex.yaml": api_yaml("x"), "predictor.py": hangs})
    run = engine("validate", str(project), "--import-timeout", "2")
    assert run.returncode == 1
    assert "importing its predictor did not finish within 2 s" in run.stderr


def test_validate_imports_with_the_projects_environment_and_python_path(tmp_path):
    uses_env = "import os\nimport helper2\nassert os.environ['FROM_DOTENV'] == 'yes'\n" + SIMPLE
    project = write_project(tmp_path, {"cortex.yaml": api_yaml("x", predictor_extra="python_path: lib"),
                                       "predictor.py": uses_env, "lib/helper2.py": "", ".env": "FROM_DOTENV=yes\n"})
    run = engine("validate", str(project))
    assert run.returncode == 0, run.stderr
    assert "ok: api 'x'" in run.stdout


# --- small things -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_log_level_is_taken_before_or_after_the_command(serve, where):
    args = ("--log-level", "warning")
    server = serve({"cortex.yaml": api_yaml("x"), "predictor.py": SIMPLE}, *args) if where == "after" else None
    if where == "before":
        project = write_project(Path(tempfile.mkdtemp()), {"cortex.yaml": api_yaml("x"), "predictor.py": SIMPLE})
        run = engine("--log-level", "warning", "validate", str(project))
        assert run.returncode == 0 and run.stderr == ""
        return
    assert server.client.post("/x", json=1).status_code == 200
    server.stop()
    assert "engine.access" not in server.output and " INFO " not in server.output


def test_serve_help_describes_every_flag():
    run = engine("serve", "--help")
    for flag in ("--log-level", "--host", "--port", "--graceful-timeout", "--model-poll-interval",
                 "--worker-init-timeout", "--cpu"):
        assert flag in run.stdout
    assert "$ENGINE_PORT" in run.stdout


def test_a_missing_predictor_type_lists_the_installed_types(tmp_path):
    config = "- name: x\n  kind: RealtimeAPI\n  predictor:\n    path: predictor.py\n"
    project = write_project(tmp_path, {"cortex.yaml": config, "predictor.py": SIMPLE})
    run = engine("validate", str(project))
    assert run.returncode == 1
    assert "predictor.type: is required; installed predictor types: " in run.stderr and "python" in run.stderr


def test_405_lists_every_method_of_the_route(serve):
    server = serve({"cortex.yaml": api_yaml("x"), "predictor.py": SIMPLE})
    for path in ("/x", "/", "/predict"):
        answer = server.client.put(path)
        assert answer.status_code == 405
        assert sorted(method.strip() for method in answer.headers["allow"].split(",")) == ["GET", "HEAD", "POST"]
    assert server.client.head("/x").status_code == 200


def test_binding_beyond_loopback_warns(serve):
    server = serve({"cortex.yaml": api_yaml("x"), "predictor.py": SIMPLE}, "--host", "0.0.0.0")
    assert "listening on 0.0.0.0: the APIs are reachable from the network without authentication" in server.output
    local = serve({"cortex.yaml": api_yaml("x"), "predictor.py": SIMPLE}, name="local")
    assert "reachable from the network" not in local.output


# --- a GPU project on a laptop ---------------------------------------------------------------------------------

GPU_API = api_yaml("gpu-api", api_extra="compute:\n  gpu: 1")


def test_a_gpu_api_is_refused_with_a_message_naming_the_switch(serve):
    server = serve({"cortex.yaml": GPU_API, "predictor.py": SIMPLE}, ready=False,
                   env={"ENGINE_SIMULATED_GPUS": ""})
    assert server.wait_exit() == 1
    assert "api 'gpu-api'" in server.output and "engine serve --cpu" in server.output


@pytest.mark.parametrize("switch", ["flag", "environment"])
def test_cpu_switch_serves_a_gpu_api_with_a_warning(serve, switch):
    args, env = (["--cpu"], {}) if switch == "flag" else ([], {"ENGINE_CPU": "1"})
    server = serve({"cortex.yaml": GPU_API, "predictor.py": SIMPLE}, *args,
                   env={"ENGINE_SIMULATED_GPUS": "", **env})
    assert server.client.post("/gpu-api", json=2).json() == {"echo": 2}
    assert "api 'gpu-api': served on the CPU (--cpu), ignoring compute.gpu: 1" in server.output


# --- serving elsewhere -------------------------------------------------------------------------------------------

SERVE_ON = """
from engine import create_app, hookimpl


@hookimpl
def engine_serve_on(target, project_dir, config_file, settings):
    if target != "elsewhere":
        return None
    app = create_app(project_dir, config_file, settings=settings, apis=["x"])
    print(f"serving {[api.name for api in app.state.engine.apis]} elsewhere at {settings.address}", flush=True)
    return 3
"""


def test_serve_on_hands_the_project_to_the_plugin_of_that_engine(tmp_path):
    from engine.testing import plugin_environment

    project = write_project(tmp_path / "project", {"cortex.yaml": api_yaml("x") + api_yaml("y"),
                                                   "predictor.py": SIMPLE})
    env = plugin_environment(tmp_path / "site", "elsewhere", SERVE_ON)
    run = engine("serve", str(project), "--on", "elsewhere", "--address", "cluster:1", env=env)
    assert run.returncode == 3 and "serving ['x'] elsewhere at cluster:1" in run.stdout
    without_ray = {**env, "ENGINE_PLUGINS": "python,elsewhere"}  # as if engine-ray were not installed
    missing = engine("serve", str(project), "--on", "ray", env=without_ray)
    assert missing.returncode == 1 and "no installed plugin serves on 'ray'; pip install engine[ray]" in missing.stderr
