"""One project served both ways in the same sandbox, `engine serve` and `engine serve --on ray` (a local instance): its
predictor sees the same environment (predictor.env, and a .env whose values refer to $VARIABLES, quote and escape
them), the start-up warnings are the same lines, said once, and an invalid project is the same error."""
from __future__ import annotations

import re

import pytest
import yaml

from engine.testing import write_project

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(300)]

ENVIRONMENT = """
import os


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return dict(os.environ)
"""

ENV_FILE = """\
GREETING=hello
FROM_HOME=$HOME/models
BRACED=${GREETING}-${MODEL}
DEFAULTED=${UNSET_VARIABLE:-fallback}
LITERAL='${HOME} stays'
ESCAPED=\\$HOME
PATH=$PATH:/opt/project/bin
this line is not an assignment
"""

PREDICTOR_ENV = {"MODEL": "small", "DOLLAR_IN_CONFIG": "$HOME/kept"}  # predictor.env is never expanded

# A warning of engine's about the project: "DATE TIME engine WARNING message" (a replica's, which Ray prefixes, is not
# one).
WARNING_LINE = re.compile(r"^\S+ \S+ engine WARNING (.*)$", re.MULTILINE)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """One API asking for a GPU (served with --cpu), its environment from predictor.env and .env."""
    api = {"name": "environment", "kind": "RealtimeAPI",
           "predictor": {"type": "python", "path": "predictor.py", "env": PREDICTOR_ENV}, "compute": {"gpu": 1}}
    return write_project(tmp_path_factory.mktemp("same") / "same", {
        "cortex.yaml": yaml.safe_dump([api]), "predictor.py": ENVIRONMENT, ".env": ENV_FILE})


def served(ray_server, project, on_ray: bool) -> tuple[dict[str, str], list[str], str]:
    """Serve the project one way: what the predictor's os.environ holds, the warnings, and all the output."""
    server = ray_server(project, "--cpu", on_ray=on_ray)
    server.wait_ready()
    environ = server.client.post("/environment", json={}).json()
    assert server.stop() == 0
    return environ, WARNING_LINE.findall(server.output), server.output


def test_the_predictor_gets_the_same_environment_and_the_same_warnings(sandbox, ray_server, project):
    local_environ, local_warnings, _ = served(ray_server, project, on_ray=False)
    ray_environ, ray_warnings, ray_output = served(ray_server, project, on_ray=True)
    names = {line.partition("=")[0] for line in ENV_FILE.splitlines() if "=" in line} | set(PREDICTOR_ENV)
    assert {name: ray_environ.get(name) for name in names} == {name: local_environ.get(name) for name in names}
    home = sandbox.env["HOME"]
    assert {name: local_environ[name] for name in names} == {
        "GREETING": "hello", "FROM_HOME": f"{home}/models", "BRACED": "hello-small", "DEFAULTED": "fallback",
        "LITERAL": "${HOME} stays", "ESCAPED": "$HOME", "PATH": sandbox.env["PATH"] + ":/opt/project/bin",
        "MODEL": "small", "DOLLAR_IN_CONFIG": "$HOME/kept"}
    assert ray_warnings == local_warnings == [
        f"{project / '.env'} line 8 is not VARIABLE=value and is ignored: this line is not an assignment",
        "api 'environment': served on the CPU (--cpu), ignoring compute.gpu: 1"]
    assert ray_output.count("is not VARIABLE=value") == 1  # the driver says it; no replica says it again


def test_an_invalid_project_is_the_same_error(ray_server, project, tmp_path):
    broken = write_project(tmp_path / "broken", {"cortex.yaml": (project / "cortex.yaml").read_text(),
                                                 ".env": ENV_FILE})  # no predictor.py
    errors = []
    for on_ray in (False, True):
        server = ray_server(broken, "--cpu", on_ray=on_ray)
        assert server.wait_exit() == 1
        errors.append(server.output[server.output.index("error: "):])
    assert errors[0] == errors[1]
    assert errors[0].startswith(f"error: {broken / 'cortex.yaml'}: api 'environment': predictor.path: predictor.py "
                                "does not exist")
