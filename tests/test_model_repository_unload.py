"""Models loaded and unloaded by request (ModelRepository.load, unload): an unloaded model answers 503 saying how to
load it, its memory is freed (a version a request holds, once that request ends), new versions of it stay
unloaded, and load brings it back loaded, whatever the caching mode."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support import JsonFormat

from engine.errors import ModelError
from engine.models import ModelRepository, budget
from engine.models.budget import Ledger
from engine.project.config import Models


def write_version(root: Path, name: str, version: int, **content) -> None:
    path = root / name / str(version) / "model.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"value": f"{name}{version}", **content}))


class SizedFormat(JsonFormat):
    """Each model is 100 bytes in the budget."""

    def size(self, model) -> int:
        return 100


@pytest.fixture
def repos(tmp_path):
    made = []

    def make(memory: int | None = None, **models) -> tuple[ModelRepository, Ledger]:
        ledger = Ledger(memory, "--model-memory", "memory")
        repository = ModelRepository(Models(**models), tmp_path, SizedFormat(), "test", api_name="zoo",
                                     ledgers=(ledger, Ledger(None, "--model-disk", "disk")),
                                     cache_root=tmp_path / f"cache-{len(made)}")
        made.append(repository)
        repository.scan()
        if not repository.on_demand:
            repository.preload()
        return repository, ledger

    yield make
    for repository in made:
        repository.stop()


def unavailable(repository: ModelRepository, name: str | None, version: str = "latest") -> str:
    with pytest.raises(ModelError) as raised:
        repository.get(name, version)
    assert raised.value.status_code == 503
    return str(raised.value)


def test_unload_frees_every_version_and_load_brings_them_all_back_without_caching(tmp_path, repos):
    for version in (1, 2):
        write_version(tmp_path / "models", "a", version)
    write_version(tmp_path / "models", "b", 1)
    repository, ledger = repos(dir="models")
    assert repository.memory_usage() == (3, 0) and ledger.used == 300

    repository.unload("a")
    assert sorted(repository.fmt.unloaded) == ["a1", "a2"] and repository.memory_usage() == (1, 0)
    assert ledger.used == 100 and repository.unloaded() == ["a"]
    assert unavailable(repository, "a") == unavailable(repository, "a", "1") == (
        "model a of api 'zoo' is unloaded; load it again with `engine models load zoo.a` "
        "(or POST /v2/repository/models/zoo.a/load)")
    assert repository.get("b").value == "b1"  # the others serve on
    summary = repository.metadata()
    assert summary["a"]["unloaded"] is True and summary["a"]["versions"] == ["2", "1"]
    assert "unloaded" not in summary["b"]

    repository.load("a")  # every version, as at start-up: no request waits for a load
    assert repository.memory_usage() == (3, 0) and repository.unloaded() == []
    loads = sum(repository.fmt.loads.values())
    assert repository.get("a", "1").value == "a1" and repository.get("a").value == "a2"
    assert sum(repository.fmt.loads.values()) == loads
    repository.unload("a")
    repository.unload("a")  # already unloaded: nothing more to do
    for call in (repository.load, repository.unload):
        with pytest.raises(ModelError) as raised:
            call("c")
        assert raised.value.status_code == 404 and "'c' wasn't found" in str(raised.value)


def test_on_demand_load_loads_the_latest_version_only(tmp_path, repos):
    for version in (1, 2):
        write_version(tmp_path / "models", "a", version)
    repository, ledger = repos(memory=1000, dir="models")
    assert repository.on_demand and repository.memory_usage() == (0, 0)
    repository.get("a", "1")
    repository.get("a", "2")
    repository.unload("a")
    assert repository.memory_usage() == (0, 0) and ledger.used == 0
    unavailable(repository, "a")
    repository.load("a")
    assert repository.metadata()["a"]["loaded"] == ["2"] and ledger.used == 100


def test_a_version_a_request_holds_is_freed_when_that_request_ends(tmp_path, repos, monkeypatch):
    monkeypatch.setattr(budget, "WAIT_FOR_ROOM", 0.0)  # a load with no room is refused at once
    write_version(tmp_path / "models", "a", 1)
    write_version(tmp_path / "models", "b", 1)
    repository, ledger = repos(memory=200, dir="models")
    with budget.holding():
        held = repository.get("a")
        repository.unload("a")  # returns at once: the request keeps its model until it ends
        assert repository.fmt.unloaded == [] and held.value == "a1"
        unavailable(repository, "a")
        assert ledger.used == 100  # still in memory, so still counted, and never evicted meanwhile
        repository.get("b")
        with pytest.raises(ModelError) as raised:  # 100 + 100 fit; a third model would need a's room
            repository.load("a")
        assert raised.value.status_code == 503 and repository.unloaded() == ["a"]  # a failed load leaves it unloaded
    assert repository.fmt.unloaded == ["a1"] and ledger.used == 100 and repository.memory_usage() == (1, 0)
    repository.load("a")
    assert repository.get("a").value == "a1"


def test_new_versions_of_an_unloaded_model_stay_unloaded_until_it_is_loaded(tmp_path, repos):
    write_version(tmp_path / "models", "a", 1)
    repository, _ = repos(dir="models")
    repository.settle = 0
    repository.unload("a")
    write_version(tmp_path / "models", "a", 2)
    repository.refresh()
    assert repository.metadata()["a"]["versions"] == ["2", "1"] and repository.memory_usage() == (0, 0)
    unavailable(repository, "a", "2")
    repository.load("a")
    assert repository.metadata()["a"]["loaded"] == ["2", "1"] and repository.get("a").value == "a2"

    # a model gone entirely forgets it was unloaded: when it comes back, it comes back available
    repository.unload("a")
    shutil.rmtree(tmp_path / "models" / "a")
    repository.refresh()
    write_version(tmp_path / "models", "a", 3)
    repository.refresh()
    assert repository.unloaded() == [] and repository.get("a").value == "a3"


def test_a_load_that_fails_leaves_the_model_unloaded(tmp_path, repos):
    write_version(tmp_path / "models", "a", 1, **{"raise": "corrupt"})
    repository, _ = repos(memory=1000, dir="models")
    repository.unload("a")
    with pytest.raises(ModelError) as raised:
        repository.load("a")
    assert raised.value.status_code == 500 and "corrupt" in str(raised.value)
    unavailable(repository, "a")


def test_the_single_model_is_unloaded_by_any_name(tmp_path, repos):
    write_version(tmp_path, "m", 1)
    repository, _ = repos(path="m")
    repository.unload("whatever")
    assert repository.unloaded() == ["_cortex_default"]
    assert unavailable(repository, None).startswith("the model of api 'zoo' is unloaded; load it again with "
                                                    "`engine models load zoo`")
    repository.load("")
    assert repository.get().value == "m1"
