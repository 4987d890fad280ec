"""Packaging proof: wheels of the core and every plugin, `pip install 'engine[onnx,gpu]'` in a fresh venv, then use it.

Slow (a fresh virtual environment, dependencies from the index; pip's cache makes reruns quicker). It runs in the full
suite; deselect it with `-m "not packaging"`.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from support import clean_env

from engine.testing import free_port

pytestmark = [pytest.mark.packaging, pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
PROJECTS = [REPO, *sorted(path.parent for path in REPO.glob("plugins/*/pyproject.toml"))]
ONNX_IRIS = REPO / "examples" / "onnx-iris"
SETOSA = {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3}
# What the copies of the sources leave out: build outputs, caches, tests and the virtual environment.
NOT_SOURCES = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", "tests",
                                     "benchmarks", "examples", "plugins", ".pytest_cache", "docs")


def project_meta(project: Path) -> tuple[str, str]:
    """(distribution name, version) from a pyproject.toml."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    return meta["name"], meta["version"]


def run(*command: str | Path, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run a command with extra environment variables; fail the test with its output if it exits non-zero."""
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=900, cwd=cwd,
                            env=clean_env(**env), check=False)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed ({result.returncode}):\n" \
                                   f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with engine[onnx,gpu] installed from a wheelhouse of this repository's wheels; its bin folder."""
    work = tmp_path_factory.mktemp("packaging")
    sources, wheelhouse = work / "src", work / "wheelhouse"
    copies = []
    for project in PROJECTS:  # build from copies, so that build/ and *.egg-info never land in the working tree
        copy = sources / (project.name if project != REPO else "engine")
        shutil.copytree(project, copy, ignore=NOT_SOURCES)
        copies.append(copy)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", wheelhouse, *copies)
    built = sorted(path.name for path in wheelhouse.glob("*.whl"))
    for project in PROJECTS:
        name, version = project_meta(project)
        assert any(wheel.startswith(f"{name.replace('-', '_')}-{version}-") for wheel in built), (name, built)
    venv = work / "venv"
    run(sys.executable, "-m", "venv", venv)
    bin_dir = venv / "bin"
    run(bin_dir / "python", "-m", "pip", "install", "--quiet", "--find-links", wheelhouse, "engine[onnx,gpu]")
    return bin_dir


def test_the_wheels_are_what_got_installed(installed):
    """Not an engine from the index or from this checkout: the installed files are the wheelhouse's copies."""
    code = ("import importlib.metadata as m, engine, engine_onnx_predictor, engine_hw_cuda; "
            "print(engine.__file__); print(engine_hw_cuda.__file__); "
            "print(*(m.version(d) for d in ('engine', 'engine-python-predictor', 'engine-onnx-predictor', "
            "'engine-hw-cuda', 'onnxruntime', 'nvidia-ml-py')))")
    lines = run(installed / "python", "-c", code, cwd=Path("/")).stdout.splitlines()
    site = str(installed.parent / "lib")
    assert lines[0].startswith(site) and lines[1].startswith(site), lines
    assert (Path(lines[0]).parent / "hookspecs.py").read_text() == (REPO / "engine" / "hookspecs.py").read_text()
    versions = lines[2].split()
    expected = [project_meta(REPO / path)[1] for path in (".", "plugins/python_predictor", "plugins/onnx_predictor",
                                                          "plugins/hw_cuda")]
    assert versions[:4] == expected
    listed = run(installed / "python", "-m", "pip", "list", "--format=freeze").stdout
    assert "engine-tensorflow-predictor" not in listed and "engine-hw-inferentia" not in listed  # only the extras asked


def test_engine_plugins_lists_the_onnx_predictor_and_the_cuda_target(installed):
    output = run(installed / "engine", "plugins").stdout
    assert "onnx  (engine-onnx-predictor " in output and "cuda  (engine-hw-cuda " in output
    assert "predictor types: python (PythonPredictor), onnx (ONNXPredictor)" in output
    assert "hardware targets: cpu, gpu" in output


def test_engine_validate_and_serve_an_onnx_project(installed, tmp_path):
    project = tmp_path / "onnx-iris"
    shutil.copytree(ONNX_IRIS, project)
    assert (project / "model" / "model.onnx").is_file(), "examples/onnx-iris must ship model/model.onnx"
    output = run(installed / "engine", "validate", project).stdout
    assert "ok: api 'iris-classifier' (onnx predictor, predictor.py)" in output
    port = free_port()
    server = subprocess.Popen([installed / "engine", "serve", project, "--port", str(port)], env=clean_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(600):
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert server.poll() is None, server.communicate()[0]
                time.sleep(0.1)
            assert client.post("/iris-classifier", json=SETOSA).text == "setosa"
    finally:
        server.terminate()
        server.wait(30)


def test_the_installed_cuda_target_checks_compute_gpu(installed, tmp_path):
    project = tmp_path / "onnx-iris-gpu"
    shutil.copytree(ONNX_IRIS, project)
    config = project / "cortex.yaml"
    config.write_text(config.read_text().rstrip("\n") + "\n  compute:\n    gpu: 1\n")
    simulated = run(installed / "engine", "validate", project, ENGINE_SIMULATED_GPUS="Tesla T4").stdout
    assert "ok: api 'iris-classifier'" in simulated
    too_many = subprocess.run([installed / "engine", "validate", project], capture_output=True, text=True,
                              env=clean_env(ENGINE_SIMULATED_GPUS=""), check=False)
    assert too_many.returncode == 1
    assert "api 'iris-classifier': compute.gpu: 1 requested, 0 GPUs found" in too_many.stderr
