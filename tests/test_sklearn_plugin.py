"""The predictor-type plugin of docs/writing_plugins.md (examples/sklearn-plugin), as a user gets it: built and
installed from its source, found through its entry point, serving a model the test trains."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.testing import Server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SOURCE = Path(__file__).resolve().parents[1] / "examples" / "sklearn-plugin"
SETOSA = {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3}
VIRGINICA = {"sepal_length": 6.9, "sepal_width": 3.1, "petal_length": 5.4, "petal_width": 2.1}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A directory the plugin is installed into (pip install --target), from a copy of its source."""
    work = tmp_path_factory.mktemp("sklearn-plugin")
    source = shutil.copytree(SOURCE, work / "source", ignore=shutil.ignore_patterns("model", "*.egg-info", "build"))
    site = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(source)], check=True, timeout=300)
    return site


def environment(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_engine_plugins_lists_the_installed_distribution_and_its_type(site):
    listing = subprocess.run([sys.executable, "-m", "engine", "plugins"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, **environment(site)})
    assert listing.returncode == 0, listing.stderr
    assert "sklearn  (engine-sklearn 0.1.0)\n    hooks: engine_predictor_types" in listing.stdout
    assert "sklearn (SklearnPredictor)" in listing.stdout


def test_it_serves_a_model_made_by_the_test(site, tmp_path):
    project = shutil.copytree(SOURCE / "example", tmp_path / "project", ignore=shutil.ignore_patterns("model"))
    subprocess.run([sys.executable, str(project / "make_model.py"), str(project / "model" / "1")], check=True,
                   timeout=120)
    server = Server(project, env=environment(site))
    try:
        server.wait_ready()
        assert server.client.post("/iris", json=SETOSA).text == "setosa"
        assert server.client.post("/iris", json=VIRGINICA).text == "virginica"
        details = server.client.get("/iris").json()["model_metadata"]["_cortex_default"]["details"]["1"]
        assert details == {"estimator": "LogisticRegression", "features": 4, "classes": [0, 1, 2]}
        assert server.client.post("/iris", json={"sepal_length": 1}).status_code == 500  # the predictor's KeyError
    finally:
        assert server.stop() == 0
