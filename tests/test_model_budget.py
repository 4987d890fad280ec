"""Byte budgets for models (engine.models.budget): least recently used eviction by bytes across repositories, models
in use never evicted, 507 for a model larger than a budget, 503 when no room frees up, the disk budget of S3 copies,
and the settings and configuration fields that set them."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support import JsonFormat, fresh_bucket, moto_s3

from engine.errors import ConfigError, ModelError
from engine.models import ModelRepository, budget, events
from engine.models.budget import Ledger
from engine.project.config import Models
from engine.project.predictor_class import Signature
from engine.serving.predictor import Predictor
from engine.settings import ServeSettings
from engine.testing import validate, write_project

MiB = 2**20


class SizedFormat(JsonFormat):
    """A version is a model.json whose size is the model's (as ONNX's file size is): the budget counts exactly it.
    Records every unload of a model a test marked as in use."""

    def __init__(self) -> None:
        super().__init__()
        self.in_use: dict[int, int] = {}  # id(model) → threads using it
        self.unloaded_in_use: list[str] = []

    def size(self, model) -> int:
        return (model.path / "model.json").stat().st_size

    def unload(self, model) -> None:
        with self.lock:
            if self.in_use.get(id(model)):
                self.unloaded_in_use.append(model.value)
        super().unload(model)

    def using(self, model, delta: int) -> None:
        with self.lock:
            self.in_use[id(model)] = self.in_use.get(id(model), 0) + delta


def write_model(root: Path, name: str, size: int, version: int = 1) -> None:
    """<root>/<name>/<version>/model.json of exactly `size` bytes, holding {"value": name}."""
    text = json.dumps({"value": name, "pad": ""})
    path = root / name / str(version) / "model.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace('""', '"' + "x" * (size - len(text)) + '"'))
    assert path.stat().st_size == size


def ledgers(memory: int | None = None, disk: int | None = None) -> tuple[Ledger, Ledger]:
    """A process's pair of ledgers, private to a test."""
    return Ledger(memory, "--model-memory", "memory"), Ledger(disk, "--model-disk", "disk")


@pytest.fixture
def repos(tmp_path):
    made = []

    def make(books: tuple[Ledger, Ledger], fmt=None, api_name: str = "api", **models) -> ModelRepository:
        repository = ModelRepository(Models(**models), tmp_path, fmt or SizedFormat(), "test", api_name=api_name,
                                     ledgers=books, cache_root=tmp_path / f"cache-{len(made)}")
        made.append(repository)
        repository.scan()
        return repository

    yield make
    for repository in made:
        repository.stop()


@pytest.fixture
def short_wait(monkeypatch):
    """Loads give up waiting for room at once (the 503 path), instead of after 10 s."""
    monkeypatch.setattr(budget, "WAIT_FOR_ROOM", 0.0)


class Recorder:
    """Counts model events as /metrics does."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        events.observe(self)

    def model_event(self, api: str, model: str, event: str, amount: int) -> None:
        self.counts[(model, event)] = self.counts.get((model, event), 0) + amount


# --- memory -----------------------------------------------------------------------------------------------------


def test_least_recently_used_versions_go_until_the_new_one_fits(tmp_path, repos):
    for name in "abc":
        write_model(tmp_path / "models", name, 200)
    memory, _ = books = ledgers(memory=500)
    recorder = Recorder()
    repository = repos(books, dir="models")
    assert repository.on_demand and repository.memory_usage() == (0, 0)
    for name in "aba":
        repository.get(name)
    assert repository.get("c").value == "c"  # 600 > 500: b, the least recently used, goes
    assert repository.fmt.unloaded == ["b"] and memory.used == 400 == repository.bytes_usage()[0]
    assert sorted(repository.metadata()) == ["a", "b", "c"] and repository.metadata()["b"]["loaded"] == []
    assert recorder.counts == {("a", "miss"): 1, ("a", "hit"): 1, ("b", "miss"): 1, ("c", "miss"): 1,
                               ("a", "memory_bytes"): 200, ("b", "memory_bytes"): 0, ("c", "memory_bytes"): 200,
                               ("b", "eviction"): 1}


MEASURED = """
import sys
from pathlib import Path
from engine_python_predictor.client import PythonModelFormat
from engine.models import ModelRepository
from engine.models.budget import Ledger
from engine.project.config import Models

fmt = PythonModelFormat()
fmt.load_method = lambda path: bytes(range(256)) * (int(Path(path, "weights.txt").read_text()) * 2**20 // 256)
books = Ledger(64 * 2**20, "--model-memory", "memory"), Ledger(None, "--model-disk", "disk")
repository = ModelRepository(Models(path="m"), Path(sys.argv[1]), fmt, "python", ledgers=books)
repository.scan()
assert len(repository.get()) == 8 * 2**20
print(repository.bytes_usage()[0])
repository.stop()
"""


def test_without_a_format_size_the_resident_memory_growth_of_the_load_counts(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.txt").write_text("8")
    # in a fresh process: memory that a process already has (freed by earlier tests) is reused without growing it
    measured = subprocess.run([sys.executable, "-c", MEASURED, str(tmp_path)], capture_output=True, text=True,
                              check=True).stdout
    assert 8 * MiB <= int(measured) <= 8 * MiB + 4 * MiB


def test_a_model_larger_than_the_whole_budget_is_a_507_naming_it_and_the_budget(tmp_path, repos):
    write_model(tmp_path / "models", "small", 100)
    write_model(tmp_path / "models", "huge", 600)
    memory, _ = books = ledgers(memory=500)
    repository = repos(books, dir="models")
    repository.get("small")
    for _ in range(2):
        with pytest.raises(ModelError) as caught:
            repository.get("huge")
        assert caught.value.status_code == 507
        assert str(caught.value) == ("model huge of version 1 of api 'api' needs 600 bytes, more than the model memory "
                                     "budget (--model-memory = 500 bytes) allows in all; raise the budget or serve a "
                                     "smaller model")
    assert repository.fmt.total_loads == 1  # its files are larger than the budget: never loaded
    assert repository.memory_usage() == (1, 0) and memory.used == 100  # and nothing was evicted for it


MEASURED_TOO_LARGE = """
import json, sys
from pathlib import Path
from engine.errors import ModelError
from engine_python_predictor.client import PythonModelFormat
from engine.models import ModelRepository
from engine.models.budget import Ledger
from engine.project.config import Models

fmt = PythonModelFormat()
fmt.load_method = lambda path: bytes(range(256)) * (16 * 2**20 // 256)
loads = []
load = fmt.load
fmt.load = lambda path: loads.append(path) or load(path)
memory = Ledger(8 * 2**20, "--model-memory", "memory")
disk = Ledger(None, "--model-disk", "disk")
repository = ModelRepository(Models(path="m"), Path(sys.argv[1]), fmt, "python", ledgers=(memory, disk))
repository.scan()
answers = []
for _ in range(2):
    try:
        repository.get()
        answers.append(None)
    except ModelError as error:
        answers.append([error.status_code, str(error)])
print(json.dumps({"answers": answers, "loads": len(loads), "used": memory.used, "usage": repository.memory_usage()}))
repository.stop()
"""


def test_a_model_measured_larger_than_the_budget_after_its_load_is_freed_and_507_without_reloading(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.txt").write_text("tiny files, a large model")
    # in a fresh process, as the measurement above: another test's memory freed meanwhile would hide the growth
    measured = json.loads(subprocess.run([sys.executable, "-c", MEASURED_TOO_LARGE, str(tmp_path)],
                                         capture_output=True, text=True, check=True).stdout)
    for answer in measured["answers"]:
        assert answer is not None and answer[0] == 507
        assert answer[1].startswith("the model of version 1 needs 16.0 MiB")
        assert "(--model-memory = 8.0 MiB" in answer[1]
    assert measured["loads"] == 1 and measured["used"] == 0 and measured["usage"] == [0, 0]


def test_an_api_budget_and_the_process_budget_both_hold_and_evict_across_apis(tmp_path, repos):
    for name, size in (("a", 200), ("b", 200), ("x", 700), ("y", 300), ("z", 400)):
        write_model(tmp_path / "models", name, size)
    memory, _ = books = ledgers(memory=1000)
    first = repos(books, dir="models", memory_budget=300, api_name="first")
    second = repos(books, dir="models", api_name="second")
    first.get("a")
    first.get("b")  # its own budget (300) has no room for both, though the process's has
    assert first.fmt.unloaded == ["a"] and memory.used == 200
    second.get("x")  # 900 in the process
    second.get("y")  # 1200 > 1000: the least recently used of the process goes, another API's
    assert first.memory_usage() == (0, 0) and first.fmt.unloaded == ["a", "b"]
    assert second.memory_usage() == (2, 0) and memory.used == 1000
    with pytest.raises(ModelError, match=r"needs 400 bytes, more than the model memory budget "
                                         r"\(api 'first': models.memory_budget = 300 bytes\)"):
        first.get("z")


def test_a_model_in_use_is_never_evicted_and_a_load_with_no_room_gets_503(tmp_path, repos, short_wait):
    for name in "ab":
        write_model(tmp_path / "models", name, 300)
    recorder = Recorder()
    repository = repos(ledgers(memory=500), dir="models")
    with repository.use("a") as model:
        with pytest.raises(ModelError) as caught:
            repository.get("b")
        assert model.value == "a" and repository.fmt.unloaded == []
    assert caught.value.status_code == 503
    assert str(caught.value) == ("model b of version 1 of api 'api' needs 300 bytes but the model memory budget "
                                 "(--model-memory = 500 bytes) is taken by 1 model (300 bytes) that requests are "
                                 "using or loading right now; try again when they are done (or raise the budget)")
    assert recorder.counts[("b", "no_room")] == 1
    assert repository.get("b").value == "b" and repository.fmt.unloaded == ["a"]  # a was released


def test_a_load_waits_for_the_models_in_its_way_to_be_released(tmp_path, repos, caplog):
    for name in "ab":
        write_model(tmp_path / "models", name, 300)
    repository = repos(ledgers(memory=500), dir="models")
    loaded, waiting, release = threading.Event(), threading.Event(), threading.Event()

    class Watch(logging.Handler):
        def emit(self, record):
            if "waits up to" in record.getMessage():
                waiting.set()

    handler = Watch()
    logging.getLogger("engine.models").addHandler(handler)
    caplog.set_level(logging.INFO, "engine.models")
    unloaded_before_release = []

    def hold_a():
        with repository.use("a"):
            loaded.set()
            release.wait(10)
            unloaded_before_release.extend(repository.fmt.unloaded)

    holder = threading.Thread(target=hold_a)
    holder.start()
    result = {}
    loader = threading.Thread(target=lambda: result.update(b=repository.get("b")))
    try:
        assert loaded.wait(10)
        loader.start()
        assert waiting.wait(10), "the load of b never waited"
        assert "b" not in result
    finally:
        release.set()
        holder.join(10)
        if loader.is_alive():
            loader.join(10)
        logging.getLogger("engine.models").removeHandler(handler)
    assert result["b"].value == "b" and repository.fmt.unloaded == ["a"] and unloaded_before_release == []


def test_concurrent_requests_never_lose_a_model_they_use_and_the_budget_always_holds(tmp_path, repos):
    rng = random.Random(29)
    sizes = {f"m{index}": rng.randrange(100, 300) for index in range(10)}
    for name, size in sizes.items():
        write_model(tmp_path / "models", name, size)
    memory, _ = books = ledgers(memory=800)
    repository = repos(books, dir="models")
    fmt = repository.fmt
    overdrawn = []

    def requests(seed: int) -> None:
        picks = random.Random(seed)
        for _ in range(60):
            with repository.use(picks.choice(list(sizes))) as model:
                fmt.using(model, 1)
                with budget.room:
                    if memory.used > 800:
                        overdrawn.append(memory.used)
                fmt.using(model, -1)

    threads = [threading.Thread(target=requests, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "deadlocked"
    assert fmt.unloaded_in_use == [] and overdrawn == []
    assert len(fmt.unloaded) > 0 and memory.used == repository.bytes_usage()[0] <= 800
    assert all(charge.users == 0 for charge in memory.charges)


def test_a_predict_holds_the_models_it_gets_until_it_returns(tmp_path, repos, short_wait):
    for name in "ab":
        write_model(tmp_path / "models", name, 300)
    repository = repos(ledgers(memory=500), dir="models")

    class Predictor_:
        def predict(self, payload):
            model = repository.get(payload)
            with pytest.raises(ModelError, match="is taken by 1 model"):
                repository.get("b" if payload == "a" else "a")  # a is held by this very predict
            return model.value

    predictor = Predictor(Predictor_(), {"predict": Signature(("payload",), frozenset())})
    assert predictor.predict({"payload": "a"}) == "a"
    assert predictor.predict({"payload": "b"}) == "b"  # a was released when the first predict returned
    assert repository.fmt.unloaded == ["a"]


def test_an_async_predict_holds_its_models_too_and_keeps_its_name(tmp_path, repos, short_wait):
    for name in "ab":
        write_model(tmp_path / "models", name, 300)
    repository = repos(ledgers(memory=500), dir="models")

    class AsyncPredictor:
        async def predict(self, payload):
            model = repository.get(payload)
            with pytest.raises(ModelError, match="is taken by 1 model"):
                repository.get("b")  # a is held by this very predict
            return model.value

    predictor = Predictor(AsyncPredictor(), {"predict": Signature(("payload",), frozenset())})
    call = predictor.predict({"payload": "a"})
    assert call.__qualname__ == "test_an_async_predict_holds_its_models_too_and_keeps_its_name.<locals>." \
                                "AsyncPredictor.predict"  # the event loop's slow-step warnings name it
    assert asyncio.run(call) == "a"
    assert repository.get("b").value == "b" and repository.fmt.unloaded == ["a"]


def test_cache_size_still_counts_models_whatever_their_size(tmp_path, repos):
    for name, size in (("a", 100), ("b", 400), ("c", 100)):
        write_model(tmp_path / "models", name, size)
    repository = repos(ledgers(), dir="models", cache_size=2, disk_cache_size=2)
    for name in "abc":
        repository.get(name)
    assert repository.memory_usage() == (2, 0) and repository.fmt.unloaded == ["a"]
    assert repository.bytes_usage() == (500, 0)


# --- disk: S3 copies --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint():
    """One moto S3 server for the module, on a free loopback port."""
    yield from moto_s3()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    """A fresh bucket, with the environment pointing boto3 (and so the engine) at the local server."""
    return fresh_bucket(s3_endpoint, monkeypatch, "budget")


def upload_models(tmp_path: Path, bucket, sizes: dict[str, int]) -> str:
    client, name = bucket
    for model, size in sizes.items():
        write_model(tmp_path / "upload", model, size)
        client.upload_file(str(tmp_path / "upload" / model / "1" / "model.json"), name, f"all/{model}/1/model.json")
    return f"s3://{name}/all/"


def copies(repository: ModelRepository) -> list[str]:
    return sorted(path.name for path in repository.cache_root.iterdir()) if repository.cache_root.exists() else []


@pytest.mark.e2e  # a real S3-compatible server (moto) on loopback
def test_disk_budget_deletes_the_least_recently_used_copies_of_models_not_in_memory(tmp_path, repos, bucket):
    where = upload_models(tmp_path, bucket, {"a": 300, "b": 300, "c": 300})
    recorder = Recorder()
    _, disk = books = ledgers(memory=600, disk=700)
    repository = repos(books, dir=where)
    for name in "abc":  # each load evicts from memory first (600), which unpins that version's copy on disk
        assert repository.get(name).value == name
    assert repository.memory_usage() == (2, 2) and len(copies(repository)) == 2
    assert disk.used == 600 == repository.bytes_usage()[1]
    assert recorder.counts[("a", "disk_eviction")] == 1 and recorder.counts[("a", "disk_bytes")] == 0
    assert repository.get("a").value == "a"  # downloaded again


@pytest.mark.e2e
def test_disk_budget_never_deletes_the_copy_of_a_loaded_model(tmp_path, repos, bucket, short_wait):
    where = upload_models(tmp_path, bucket, {"a": 300, "b": 300, "huge": 800})
    _, disk = books = ledgers(disk=500)
    repository = repos(books, dir=where)
    repository.get("a")
    with pytest.raises(ModelError) as caught:
        repository.get("b")  # a is in memory, so its copy stays
    assert caught.value.status_code == 503 and "the model disk budget (--model-disk = 500 bytes)" in str(caught.value)
    with pytest.raises(ModelError) as caught:
        repository.get("huge")
    assert caught.value.status_code == 507 and "needs 800 bytes, more than the model disk budget" in str(caught.value)
    assert repository.memory_usage() == (1, 1) and len(copies(repository)) == 1 and disk.used == 300
    assert repository.fmt.total_loads == 1


# --- settings and configuration ----------------------------------------------------------------------------------


def test_the_settings_and_their_environment_variables():
    settings = ServeSettings.load({"model_memory": 2 * 10**9}, environ={"ENGINE_MODEL_DISK": "512MiB"})
    assert settings.model_memory == 2 * 10**9 and settings.model_disk == 512 * MiB
    assert ServeSettings.load(environ={}).model_memory is None
    with pytest.raises(ConfigError, match="ENGINE_MODEL_MEMORY='lots'"):
        ServeSettings.load(environ={"ENGINE_MODEL_MEMORY": "lots"})


def test_configure_sets_this_process_and_tells_its_worker_processes(monkeypatch):
    monkeypatch.delenv("ENGINE_MODEL_MEMORY", raising=False)
    monkeypatch.delenv("ENGINE_MODEL_DISK", raising=False)
    try:
        budget.configure(64 * MiB, None)
        assert budget.process_ledger("memory").limit == 64 * MiB and budget.process_ledger("disk").limit is None
        assert os.environ["ENGINE_MODEL_MEMORY"] == str(64 * MiB) and "ENGINE_MODEL_DISK" not in os.environ
    finally:
        budget.configure(None, None)
    assert budget.process_ledger("memory").limit is None and "ENGINE_MODEL_MEMORY" not in os.environ


def project(tmp_path: Path, models: str, processes: int = 1) -> Path:
    return write_project(tmp_path, {
        "cortex.yaml": f"""
            - name: api
              kind: RealtimeAPI
              predictor:
                type: python
                path: predictor.py
                processes_per_replica: {processes}
                multi_model_reloading: {models}
            """,
        "predictor.py": """
            class PythonPredictor:
                def __init__(self, config, python_client):
                    self.client = python_client

                def load_model(self, model_path):
                    return model_path

                def predict(self, payload):
                    return self.client.get_model()
            """,
        "m/1/model.json": "{}",
    })


def test_memory_and_disk_budgets_are_engine_fields_beside_cache_size(tmp_path):
    (api,) = validate(project(tmp_path, "{path: m, memory_budget: 512MiB, disk_budget: 2000000000}", processes=2))
    assert api.predictor.models.memory_budget == 512 * MiB and api.predictor.models.disk_budget == 2 * 10**9
    assert api.predictor.processes_per_replica == 2  # a byte budget is per process: no rule against several


@pytest.mark.parametrize("models, message", [
    ("{path: m, memory_budget: lots}", "predictor.multi_model_reloading.memory_budget: must be a size: a number "
                                       "of bytes, or one with a unit such as 512MiB or 2GB (given: 'lots')"),
    ("{path: m, disk_budget: 0}", "predictor.multi_model_reloading.disk_budget: must be greater than 0 (given: 0)"),
    ("{path: m, cache_size: 1, disk_cache_size: 1, memory_budget: 1GiB}", "predictor.processes_per_replica: must be "
                                                                          "1 when model caching is on"),
])
def test_bad_budgets_are_config_errors(tmp_path, models, message):
    with pytest.raises(ConfigError) as caught:
        validate(project(tmp_path, models, processes=2 if "cache_size" in models else 1))
    assert message in str(caught.value)
