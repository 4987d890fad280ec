"""The model repository: version resolution, lazy loading, LRU limits, live reloading and the GET summary."""
from __future__ import annotations

import gc
import json
import os
import random
import threading
import time
import weakref
from pathlib import Path

import pytest
from engine_python_predictor.client import PythonClient, PythonModelFormat
from support import JsonFormat

from engine.errors import ModelError
from engine.models import ModelRepository
from engine.project.config import Models

OLD = time.time() - 3600  # an mtime long settled


def put(path: Path, content, mtime: float | None = OLD) -> Path:
    """Write a model file (JSON of `content`, or raw text); unless mtime is None, date it and its directory (where
    the write also changed the mtime) long ago, as if it had been written a while back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
        os.utime(path.parent, (mtime, mtime))
    return path


def version(root: Path, number: int, value, mtime: float | None = OLD) -> Path:
    """Write <root>/<number>/model.json holding {"value": value}."""
    return put(root / str(number) / "model.json", {"value": value}, mtime)


@pytest.fixture
def repos():
    """Build repositories on a project directory; every one is stopped at teardown."""
    made = []

    def make(project: Path, fmt=None, poll_interval: float = 10.0, scan: bool = True, **models) -> ModelRepository:
        repository = ModelRepository(Models(**models), project, fmt or JsonFormat(), "test",
                                     poll_interval=poll_interval)
        made.append(repository)
        if scan:
            repository.scan()
        return repository

    yield make
    for repository in made:
        repository.stop()


def run_threads(count: int, target) -> list:
    """Run target(index) on `count` threads started together; re-raise the first exception."""
    results, errors = [None] * count, []
    barrier = threading.Barrier(count)

    def body(index):
        try:
            barrier.wait()
            results[index] = target(index)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "threads deadlocked"
    if errors:
        raise errors[0]
    return results


def finishes(call, timeout: float = 5.0):
    """Run call on a thread; fail (instead of hanging the suite) when it does not return in time."""
    box = {}
    thread = threading.Thread(target=lambda: box.update(result=call()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "call did not return: deadlock"
    return box.get("result")


# --- version resolution -----------------------------------------------------------------------------------


def test_latest_is_the_highest_version_numerically(tmp_path, repos):
    for number in (1, 2, 10):
        version(tmp_path / "m", number, number)
    repository = repos(tmp_path, path="m")
    assert repository.get().value == 10
    assert repository.get(model_version="latest").value == 10
    assert repository.get(model_version=None).value == 10


@pytest.mark.parametrize("asked, expected", [("1", 1), ("2", 2), (1, 1), (2, 2), ("02", 2)])
def test_explicit_versions_as_digits_or_int(tmp_path, repos, asked, expected):
    version(tmp_path / "m", 1, 1)
    version(tmp_path / "m", 2, 2)
    assert repos(tmp_path, path="m").get(model_version=asked).value == expected


@pytest.mark.parametrize("bad", ["x", "1.5", "-1", "+1", " 1", "1 ", "", "../1", "%2e%2e", "1/../2", "/1", "1/",
                                 "Latest", "LATEST", "²", "١", "9" * 5000, -1, 1.0, True, [1], b"1"])
def test_bad_versions_are_400(tmp_path, repos, bad):
    version(tmp_path / "m", 1, 1)
    repository = repos(tmp_path, path="m")
    with pytest.raises(ModelError) as caught:
        repository.get(model_version=bad)
    assert caught.value.status_code == 400
    assert "model_version must be either a parse-able numeric value or 'latest'" in str(caught.value)
    assert repository.fmt.total_loads == 0


def test_missing_version_is_404_listing_the_available_ones(tmp_path, repos):
    for number in (1, 3):
        version(tmp_path / "m", number, number)
    with pytest.raises(ModelError) as caught:
        repos(tmp_path, path="m").get(model_version="2")
    assert caught.value.status_code == 404
    assert "model _cortex_default of version 2 wasn't found" in str(caught.value)
    assert "[3, 1]" in str(caught.value)


def test_single_model_ignores_the_model_name(tmp_path, repos):
    version(tmp_path / "m", 1, "one")
    repository = repos(tmp_path, path="m")
    assert repository.get("anything").value == "one"
    assert repository.get(None).value == "one"
    assert repository.model_names() == ["_cortex_default"]


def test_paths_model_name_is_required_and_must_be_known(tmp_path, repos):
    version(tmp_path / "a", 1, "a")
    version(tmp_path / "b", 1, "b")
    repository = repos(tmp_path, paths=[{"name": "alpha", "path": "a"}, {"name": "beta", "path": "b"}])
    assert repository.get("alpha").value == "a" and repository.get("beta").value == "b"
    with pytest.raises(ModelError) as missing:
        repository.get()
    assert missing.value.status_code == 400
    assert "model_name was not specified, choose one of the following: ['alpha', 'beta']" in str(missing.value)
    with pytest.raises(ModelError) as unknown:
        repository.get("gamma")
    assert unknown.value.status_code == 404
    assert "'gamma' model wasn't found in the list of available models: ['alpha', 'beta']" in str(unknown.value)
    with pytest.raises(ModelError) as wrong_type:
        repository.get(["alpha"])
    assert wrong_type.value.status_code == 400


def test_models_dir_name_is_required(tmp_path, repos):
    version(tmp_path / "models" / "iris", 1, "iris")
    repository = repos(tmp_path, dir="models")
    with pytest.raises(ModelError) as caught:
        repository.get()
    assert caught.value.status_code == 400 and "['iris']" in str(caught.value)


@pytest.mark.parametrize("name", ["../secret", "..", ".", "", "/", "iris/../../secret", "%2e%2e/secret",
                                  "..%2fsecret", "%2e%2e", "iris/1", "iris/../secret", "/etc", "iris\x00",
                                  "./iris", "iris/", "IRIS"])
def test_model_names_never_escape_the_models_directory(tmp_path, repos, name):
    version(tmp_path / "models" / "iris", 1, "iris")
    version(tmp_path / "secret", 1, "secret")
    version(tmp_path / "models" / ".hidden", 1, "hidden")
    repository = repos(tmp_path, dir="models")
    assert repository.model_names() == ["iris"]
    with pytest.raises(ModelError) as caught:
        repository.get(name)
    assert caught.value.status_code in (400, 404)
    assert repository.fmt.total_loads == 0


@pytest.mark.parametrize("name", ["../b", "/abs", "%2e%2e", "a/../b"])
def test_paths_names_are_looked_up_never_joined(tmp_path, repos, name):
    version(tmp_path / "a", 1, "a")
    version(tmp_path / "b", 1, "b")
    repository = repos(tmp_path, paths=[{"name": "a", "path": "a"}])
    with pytest.raises(ModelError) as caught:
        repository.get(name)
    assert caught.value.status_code == 404
    assert repository.fmt.total_loads == 0


# --- loading ---------------------------------------------------------------------------------------------


def test_loading_is_lazy_and_once_per_version(tmp_path, repos):
    version(tmp_path / "m", 1, 1)
    version(tmp_path / "m", 2, 2)
    repository = repos(tmp_path, path="m", cache_size=5, disk_cache_size=5)
    assert repository.fmt.total_loads == 0
    first = repository.get(model_version="1")
    assert repository.fmt.loads == {str(tmp_path / "m" / "1"): 1}
    assert repository.get(model_version="1") is first and repository.get(model_version=1) is first
    assert repository.fmt.total_loads == 1


def test_concurrent_first_requests_load_once(tmp_path, repos):
    version(tmp_path / "m", 1, 1)
    version(tmp_path / "m", 2, 2)
    repository = repos(tmp_path, JsonFormat(delay=0.1), path="m", cache_size=2, disk_cache_size=2)
    models = run_threads(24, lambda i: repository.get(model_version=str(1 + i % 2)))
    assert repository.fmt.loads == {str(tmp_path / "m" / "1"): 1, str(tmp_path / "m" / "2"): 1}
    assert {id(m) for m in models[0::2]} == {id(models[0])} and models[0].value == 1
    assert {id(m) for m in models[1::2]} == {id(models[1])} and models[1].value == 2


def test_models_are_loaded_from_the_original_directory_in_place(tmp_path, repos):
    version(tmp_path / "m", 1, 1)
    model = repos(tmp_path, path="m").get()
    assert model.path == tmp_path / "m" / "1"


def test_preload_loads_every_version_when_caching_is_off(tmp_path, repos):
    for name in ("a", "b"):
        for number in (1, 2):
            version(tmp_path / "models" / name, number, f"{name}{number}")
    repository = repos(tmp_path, dir="models")
    repository.preload()
    assert repository.fmt.total_loads == 4 and repository.memory_usage() == (4, 0)
    assert repository.get("a", "1").value == "a1"
    assert repository.fmt.total_loads == 4


def test_preload_fails_when_a_model_has_no_version_that_loads(tmp_path, repos):
    put(tmp_path / "models" / "good" / "1" / "model.json", {"value": 1})
    put(tmp_path / "models" / "bad" / "1" / "model.json", "{corrupt")
    put(tmp_path / "models" / "bad" / "2" / "model.json", {"raise": "boom"})
    repository = repos(tmp_path, dir="models")
    with pytest.raises(ModelError) as caught:
        repository.preload()
    message = str(caught.value)
    assert "model 'bad': no version could be loaded" in message and "boom" in message and "JSONDecodeError" in message


def test_preload_tolerates_a_broken_version_beside_a_good_one(tmp_path, repos):
    version(tmp_path / "m", 1, 1)
    put(tmp_path / "m" / "2" / "model.json", "{corrupt")
    repository = repos(tmp_path, path="m")
    repository.preload()
    assert repository.get().value == 1
    summary = repository.metadata()["_cortex_default"]
    assert "2" in summary["errors"] and summary["versions"] == ["1"]  # as a broken version found later would be
    with pytest.raises(ModelError) as caught:
        repository.get(model_version="2")
    assert caught.value.status_code == 500 and "JSONDecodeError" in str(caught.value)
    repository.refresh()
    assert repository.fmt.loads[str(tmp_path / "m" / "2")] == 1  # not tried again while unchanged
    version(tmp_path / "m", 2, 2, OLD + 10)
    repository.refresh()
    assert repository.get().value == 2


# --- LRU caching -----------------------------------------------------------------------------------------


def test_least_recently_used_model_is_evicted(tmp_path, repos):
    for name in ("a", "b", "c"):
        version(tmp_path / "models" / name, 1, name)
    repository = repos(tmp_path, dir="models", cache_size=2, disk_cache_size=2)
    repository.get("a")
    repository.get("b")
    repository.get("a")  # b is now the least recently used
    repository.get("c")
    assert repository.fmt.unloaded == ["b"]
    loaded = {name for name, entry in repository.metadata().items() if entry["loaded"]}
    assert loaded == {"a", "c"}
    assert repository.memory_usage() == (2, 0)  # local models are read in place: nothing on disk


def test_an_evicted_model_is_freed_and_reloaded_transparently(tmp_path, repos):
    for name in ("a", "b"):
        version(tmp_path / "models" / name, 1, name)
    repository = repos(tmp_path, dir="models", cache_size=1, disk_cache_size=1)
    ref = weakref.ref(repository.get("a"))
    repository.get("b")
    gc.collect()
    assert ref() is None, "the evicted model is still referenced somewhere"
    again = repository.get("a")
    assert again.value == "a"
    assert repository.fmt.loads[str(tmp_path / "models" / "a" / "1")] == 2


def test_versions_count_as_separate_models_in_the_cache(tmp_path, repos):
    for number in (1, 2, 3):
        version(tmp_path / "m", number, number)
    repository = repos(tmp_path, path="m", cache_size=2, disk_cache_size=2)
    for asked in ("1", "2", "3", "latest"):
        repository.get(model_version=asked)
    assert repository.memory_usage()[0] == 2 and repository.fmt.unloaded == [1]
    assert repository.metadata()["_cortex_default"]["loaded"] == ["3", "2"]


def test_memory_limit_is_never_exceeded_under_concurrent_access(tmp_path, repos):
    names = [f"m{i}" for i in range(8)]
    for name in names:
        version(tmp_path / "models" / name, 1, name)
        version(tmp_path / "models" / name, 2, name + "-2")
    fmt = JsonFormat(delay=0.003)
    repository = repos(tmp_path, fmt, dir="models", cache_size=3, disk_cache_size=3)
    seen = []

    def worker(index):
        chooser = random.Random(index)
        for _ in range(40):
            name, number = chooser.choice(names), chooser.choice(["1", "2", "latest"])
            model = repository.get(name, number)
            assert model.value == (name if number == "1" else name + "-2")
            seen.append(repository.memory_usage()[0])

    run_threads(16, worker)
    assert fmt.max_alive <= 3, f"{fmt.max_alive} models were in memory at once"
    assert max(seen) <= 3
    assert fmt.total_loads > 16  # evictions happened, so the limit was really exercised
    assert fmt.alive == repository.memory_usage()[0]


def test_cache_size_1_reloads_a_version_changed_in_place(tmp_path, repos):
    path = version(tmp_path / "m", 1, "old")
    repository = repos(tmp_path, path="m", cache_size=1, disk_cache_size=1)
    assert repository.get().value == "old"
    put(path, {"value": "new"}, OLD + 10)
    repository.refresh()
    assert finishes(repository.get).value == "new"
    assert repository.fmt.max_alive == 1 and repository.fmt.unloaded == ["old"]


# --- live reloading ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("caching", [False, True])
def test_a_new_version_becomes_latest(tmp_path, repos, caching):
    version(tmp_path / "m", 1, 1)
    sizes = {"cache_size": 2, "disk_cache_size": 2} if caching else {}
    repository = repos(tmp_path, path="m", **sizes)
    if not caching:
        repository.preload()
    assert repository.get().value == 1
    version(tmp_path / "m", 2, 2)
    assert repository.get().value == 1  # nothing changes before the next look
    assert repository.refresh() is False
    assert repository.get().value == 2
    assert repository.metadata()["_cortex_default"]["versions"] == ["2", "1"]
    assert repository.fmt.total_loads == 2


def test_without_caching_a_new_version_is_loaded_before_it_is_served(tmp_path, repos):
    version(tmp_path / "m", 1, 1)
    repository = repos(tmp_path, path="m")
    repository.preload()
    version(tmp_path / "m", 2, 2)
    repository.refresh()
    assert repository.fmt.loads[str(tmp_path / "m" / "2")] == 1  # by the refresh, not by a request
    assert repository.metadata()["_cortex_default"]["loaded"] == ["2", "1"]


@pytest.mark.parametrize("caching", [False, True])
def test_a_removed_version_disappears_and_is_freed(tmp_path, repos, caching):
    version(tmp_path / "m", 1, 1)
    version(tmp_path / "m", 2, 2)
    sizes = {"cache_size": 2, "disk_cache_size": 2} if caching else {}
    repository = repos(tmp_path, path="m", **sizes)
    ref = weakref.ref(repository.get())
    for path in (tmp_path / "m" / "2").iterdir():
        path.unlink()
    (tmp_path / "m" / "2").rmdir()
    repository.refresh()
    gc.collect()
    assert ref() is None and repository.fmt.unloaded == [2]
    assert repository.get().value == 1
    with pytest.raises(ModelError) as caught:
        repository.get(model_version="2")
    assert caught.value.status_code == 404
    assert repository.metadata()["_cortex_default"]["versions"] == ["1"]


def test_a_removed_model_disappears_and_is_freed(tmp_path, repos):
    for name in ("a", "b"):
        version(tmp_path / "models" / name, 1, name)
    repository = repos(tmp_path, dir="models")
    repository.preload()
    ref = weakref.ref(repository.get("b"))
    (tmp_path / "models" / "b" / "1" / "model.json").unlink()
    repository.refresh()
    gc.collect()
    assert ref() is None and repository.fmt.unloaded == ["b"]
    assert repository.model_names() == ["a"] and list(repository.metadata()) == ["a"]
    with pytest.raises(ModelError) as caught:
        repository.get("b")
    assert caught.value.status_code == 404


def test_a_removed_paths_model_comes_back_when_its_files_do(tmp_path, repos):
    path = version(tmp_path / "a", 1, "a")
    repository = repos(tmp_path, paths=[{"name": "a", "path": "a"}])
    path.unlink()
    repository.refresh()
    assert repository.model_names() == []
    version(tmp_path / "a", 1, "back")
    repository.refresh()
    assert repository.get("a").value == "back"


def test_an_empty_model_directory_in_models_dir_is_skipped_until_it_has_files(tmp_path, repos):
    version(tmp_path / "models" / "a", 1, "a")
    (tmp_path / "models" / "b" / "1").mkdir(parents=True)
    repository = repos(tmp_path, dir="models")
    assert repository.model_names() == ["a"]
    version(tmp_path / "models" / "b", 1, "b")
    repository.refresh()
    assert repository.get("b").value == "b"


def test_new_models_appear_in_models_dir(tmp_path, repos):
    (tmp_path / "models").mkdir()
    repository = repos(tmp_path, dir="models", cache_size=1, disk_cache_size=1)
    assert repository.model_names() == []
    version(tmp_path / "models" / "new", 1, "new")
    (tmp_path / "models" / "empty").mkdir()
    repository.refresh()
    assert repository.model_names() == ["new"] and repository.get("new").value == "new"


@pytest.mark.parametrize("caching", [False, True])
def test_a_file_changed_in_place_is_reloaded_on_the_next_get(tmp_path, repos, caching):
    path = version(tmp_path / "m", 1, "old")
    sizes = {"cache_size": 2, "disk_cache_size": 2} if caching else {}
    repository = repos(tmp_path, path="m", **sizes)
    old = weakref.ref(repository.get())
    put(path, {"value": "new"}, OLD + 10)
    repository.refresh()
    assert repository.get().value == "new"
    gc.collect()
    assert old() is None and repository.fmt.unloaded == ["old"]
    assert repository.memory_usage()[0] == 1
    assert repository.metadata()["_cortex_default"]["timestamps"] == [int(OLD + 10)]


@pytest.mark.parametrize("caching", [False, True])
@pytest.mark.parametrize("broken", ["{corrupt json", json.dumps({"raise": "load_model raised"})])
def test_a_new_version_that_fails_to_load_never_breaks_serving(tmp_path, repos, caching, broken):
    version(tmp_path / "m", 1, 1)
    sizes = {"cache_size": 2, "disk_cache_size": 2} if caching else {}
    repository = repos(tmp_path, path="m", **sizes)
    if not caching:
        repository.preload()
    put(tmp_path / "m" / "2" / "model.json", broken)
    repository.refresh()
    for _ in range(3):
        assert repository.get().value == 1
        assert repository.get(model_version=None).value == 1
    with pytest.raises(ModelError) as caught:
        repository.get(model_version="2")
    assert caught.value.status_code == 500 and "model _cortex_default of version 2 failed to load" in str(caught.value)
    summary = repository.metadata()["_cortex_default"]
    assert "failed to load" in summary["errors"]["2"]
    assert summary["loaded"] == ["1"]
    loads = repository.fmt.loads[str(tmp_path / "m" / "2")]
    assert loads == 1  # a broken version is not tried again and again...
    repository.refresh()
    repository.get()
    assert repository.fmt.loads[str(tmp_path / "m" / "2")] == 1
    version(tmp_path / "m", 2, 2, OLD + 20)  # ...until its files change
    repository.refresh()
    assert repository.get().value == 2
    assert "errors" not in repository.metadata()["_cortex_default"]


def test_a_newer_broken_version_falls_back_to_the_newest_that_loads(tmp_path, repos):
    version(tmp_path / "m", 1, 1)
    version(tmp_path / "m", 2, 2)
    put(tmp_path / "m" / "3" / "model.json", "{")
    put(tmp_path / "m" / "4" / "model.json", {"raise": "no"})
    repository = repos(tmp_path, path="m", cache_size=3, disk_cache_size=3)
    assert repository.get().value == 2
    assert sorted(repository.metadata()["_cortex_default"]["errors"]) == ["3", "4"]


def test_a_broken_version_that_is_removed_stops_being_reported(tmp_path, repos):
    version(tmp_path / "m", 1, 1)
    repository = repos(tmp_path, path="m")
    repository.preload()
    broken = put(tmp_path / "m" / "2" / "model.json", "{")
    repository.refresh()
    assert "errors" in repository.metadata()["_cortex_default"]
    broken.unlink()
    repository.refresh()
    assert "errors" not in repository.metadata()["_cortex_default"]


@pytest.mark.parametrize("caching", [False, True])
def test_a_version_rewritten_in_place_that_no_longer_loads_keeps_serving_the_old_copy(tmp_path, repos, caching):
    path = version(tmp_path / "m", 1, "good")
    sizes = {"cache_size": 2, "disk_cache_size": 2} if caching else {}
    repository = repos(tmp_path, path="m", **sizes)
    assert repository.get().value == "good"
    put(path, "{half", OLD + 10)
    repository.refresh()
    for _ in range(2):
        assert repository.get().value == "good"
        assert repository.get(model_version="1").value == "good"
    summary = repository.metadata()["_cortex_default"]
    assert "failed to load" in summary["errors"]["1"] and summary["loaded"] == ["1"]
    put(path, {"value": "fixed"}, OLD + 20)
    repository.refresh()
    assert repository.get().value == "fixed"
    assert "errors" not in repository.metadata()["_cortex_default"]


def test_a_half_written_version_is_not_loaded_until_it_settles(tmp_path, repos):
    version(tmp_path / "m", 1, 1)
    repository = repos(tmp_path, path="m")
    repository.preload()
    fresh = version(tmp_path / "m", 2, 2, mtime=None)  # just written: it may still be growing
    assert repository.refresh() is True
    assert repository.get().value == 1 and repository.fmt.total_loads == 1
    assert repository.metadata()["_cortex_default"]["versions"] == ["1"]
    os.utime(fresh, (OLD + 5, OLD + 5))
    os.utime(fresh.parent, (OLD + 5, OLD + 5))
    assert repository.refresh() is False
    assert repository.get().value == 2


def test_a_version_with_a_hidden_file_still_being_written_is_not_loaded(tmp_path, repos):
    # rsync writes each file as a hidden temporary, then renames it with the source's (old) mtime
    version(tmp_path / "m", 1, 1)
    repository = repos(tmp_path, path="m")
    repository.preload()
    version(tmp_path / "m", 2, 2)
    temporary = put(tmp_path / "m" / "2" / ".weights.bin.Xy12", "partial", mtime=None)
    os.utime(tmp_path / "m" / "2", (OLD, OLD))
    assert repository.refresh() is True
    assert repository.get().value == 1
    temporary.unlink()
    os.utime(tmp_path / "m" / "2", (OLD, OLD))
    assert repository.refresh() is False
    assert repository.get().value == 2


def test_a_version_directory_still_being_filled_is_not_loaded(tmp_path, repos):
    # cp -rp and rsync -a keep old file mtimes; the directory's own mtime shows files are still arriving
    version(tmp_path / "m", 1, 1)
    repository = repos(tmp_path, path="m")
    repository.preload()
    version(tmp_path / "m", 2, 2)
    os.utime(tmp_path / "m" / "2", None)  # now
    assert repository.refresh() is True
    assert repository.get().value == 1
    os.utime(tmp_path / "m" / "2", (OLD, OLD))
    assert repository.refresh() is False
    assert repository.get().value == 2


def test_a_version_changed_in_place_is_not_reloaded_while_being_written(tmp_path, repos):
    path = version(tmp_path / "m", 1, "old")
    repository = repos(tmp_path, path="m")
    repository.preload()
    put(path, {"value": "new"}, mtime=None)
    assert repository.refresh() is True
    assert repository.get().value == "old"
    os.utime(path, (OLD + 5, OLD + 5))
    repository.refresh()
    assert repository.get().value == "new"


def test_files_dated_in_the_future_are_accepted_once_unchanged_for_the_settle_time(tmp_path, repos):
    version(tmp_path / "m", 1, 1)
    repository = repos(tmp_path, path="m", poll_interval=0.1)  # settle: 0.05 s
    repository.preload()
    version(tmp_path / "m", 2, 2, mtime=time.time() + 3600)  # another machine's clock, an hour ahead
    assert repository.refresh() is True
    time.sleep(repository.settle + 0.02)
    assert repository.refresh() is False
    assert repository.get().value == 2


def test_polling_picks_up_new_versions_and_stop_ends_it(tmp_path, repos):
    version(tmp_path / "m", 1, 1)
    repository = repos(tmp_path, path="m", poll_interval=0.05)
    repository.preload()
    repository.start_polling()
    version(tmp_path / "m", 2, 2)
    deadline = time.monotonic() + 5
    while repository.get().value != 2:
        assert time.monotonic() < deadline, "the new version was not picked up"
        time.sleep(0.01)
    repository.stop()
    assert not repository.reloader.thread.is_alive()
    assert repository.fmt.alive == 0  # stop frees every model


def test_polling_survives_a_broken_format(tmp_path, repos):
    class Flaky(JsonFormat):
        calls = 0

        def validate(self, files):
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise RuntimeError("a bug in a plugin")
            return super().validate(files)

    version(tmp_path / "m", 1, 1)
    repository = repos(tmp_path, Flaky(), path="m", poll_interval=0.05)
    repository.start_polling()
    version(tmp_path / "m", 2, 2)
    deadline = time.monotonic() + 5
    while repository.get().value != 2:
        assert time.monotonic() < deadline, "live reloading stopped after an unexpected error"
        time.sleep(0.01)


def test_a_removal_during_a_load_does_not_leave_the_model_in_memory(tmp_path, repos):
    reading, gate = threading.Event(), threading.Event()

    class Gated(JsonFormat):
        def load(self, path):
            model = super().load(path)  # the files are read...
            reading.set()
            gate.wait(5)  # ...and the load is still under way
            return model

    version(tmp_path / "m", 1, 1)
    path = version(tmp_path / "m", 2, 2)
    repository = repos(tmp_path, Gated(), path="m", cache_size=2, disk_cache_size=2)
    loader = threading.Thread(target=repository.get)
    loader.start()
    assert reading.wait(5)
    path.unlink()
    refresher = threading.Thread(target=repository.refresh)
    refresher.start()
    time.sleep(0.05)  # give the removal its chance to run before the load ends
    gate.set()
    loader.join(5)
    refresher.join(5)
    assert repository.metadata()["_cortex_default"]["versions"] == ["1"]
    assert repository.memory_usage()[0] == 0 and repository.fmt.alive == 0


# --- the GET summary ----------------------------------------------------------------------------------------


def test_metadata_lists_versions_newest_first_with_timestamps_loaded_and_errors(tmp_path, repos):
    version(tmp_path / "models" / "a", 1, "a1", OLD)
    version(tmp_path / "models" / "a", 2, "a2", OLD + 100)
    version(tmp_path / "models" / "a", 10, "a10", OLD + 200)
    put(tmp_path / "models" / "b" / "model.json", {"value": "b"}, OLD + 300)
    put(tmp_path / "models" / "c" / "3" / "model.json", "{", OLD + 400)
    repository = repos(tmp_path, dir="models", cache_size=4, disk_cache_size=4)
    repository.get("a", "2")
    with pytest.raises(ModelError):
        repository.get("c")
    summary = repository.metadata()
    assert summary["a"] == {"versions": ["10", "2", "1"],
                            "timestamps": [int(OLD + 200), int(OLD + 100), int(OLD)],
                            "loaded": ["2"], "details": {"2": {"value": "a2"}}}
    assert summary["b"] == {"versions": ["1"], "timestamps": [int(OLD + 300)], "loaded": []}
    assert summary["c"]["versions"] == ["3"] and "JSONDecodeError" in summary["c"]["errors"]["3"]
    json.dumps(summary)  # the GET response encodes it as is


def test_metadata_shows_a_new_model_that_never_loaded(tmp_path, repos):
    (tmp_path / "models").mkdir()
    repository = repos(tmp_path, dir="models")
    put(tmp_path / "models" / "x" / "1" / "model.json", "{")
    repository.refresh()
    assert repository.metadata() == {"x": {"versions": [], "timestamps": [], "loaded": [],
                                           "errors": {"1": repository.metadata()["x"]["errors"]["1"]}}}
    assert "failed to load" in repository.metadata()["x"]["errors"]["1"]


# --- python_client ------------------------------------------------------------------------------------------


def test_python_client_returns_what_load_model_returned(tmp_path, repos):
    version(tmp_path / "m", 1, "one")
    version(tmp_path / "m", 2, "two")
    repository = repos(tmp_path, PythonModelFormat(), path="m")
    client = PythonClient(repository)
    with pytest.raises(ModelError, match="only after the predictor.s __init__ has returned"):
        client.get_model()
    paths = []

    def load_model(model_path):
        paths.append(model_path)
        return json.loads(Path(model_path, "model.json").read_text())["value"]

    client.set_load_method(load_model)
    assert client.get_model() == "two"
    assert client.get_model(model_version="1") == "one"
    assert client.get_model("ignored", None) == "two"
    assert client.get_model(model_version=1) == "one"
    assert paths == [str(tmp_path / "m" / "2"), str(tmp_path / "m" / "1")]
    assert isinstance(paths[0], str)
    metadata = client.metadata()["_cortex_default"]
    assert metadata["versions"] == ["2", "1"] and metadata["loaded"] == ["2", "1"] and "details" not in metadata


def test_python_client_load_model_errors_and_bad_arguments(tmp_path, repos):
    version(tmp_path / "models" / "a", 1, "a")
    repository = repos(tmp_path, PythonModelFormat(), dir="models")
    client = PythonClient(repository)

    def load_model(model_path):
        raise ValueError("cannot read " + Path(model_path).name)

    client.set_load_method(load_model)
    with pytest.raises(ModelError) as caught:
        client.get_model("a")
    assert caught.value.status_code == 500 and "ValueError: cannot read 1" in str(caught.value)
    with pytest.raises(ModelError) as caught:
        client.get_model()
    assert caught.value.status_code == 400 and "['a']" in str(caught.value)
    with pytest.raises(ModelError) as caught:
        client.get_model("a", "v1")
    assert caught.value.status_code == 400


def test_a_switched_models_symlink_is_followed(tmp_path, repos):
    version(tmp_path / "releases" / "a" / "m", 1, "a1")
    version(tmp_path / "releases" / "b" / "m", 1, "b1")
    version(tmp_path / "releases" / "b" / "m", 2, "b2")
    (tmp_path / "current").symlink_to(tmp_path / "releases" / "a", target_is_directory=True)
    repository = repos(tmp_path, path="current/m")
    assert repository.get().value == "a1"
    (tmp_path / "next").symlink_to(tmp_path / "releases" / "b", target_is_directory=True)
    os.replace(tmp_path / "next", tmp_path / "current")  # the atomic switch of a release script
    repository.refresh()
    assert repository.get().value == "b2" and repository.get(model_version="1").value == "b1"
