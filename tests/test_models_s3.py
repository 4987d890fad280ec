"""Models in S3, against a real S3-compatible server (moto in server mode on loopback): never mocked boto3 calls."""
from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest
from engine_python_predictor.client import PythonClient, PythonModelFormat
from support import JsonFormat, fresh_bucket, moto_s3

from engine.errors import ModelError
from engine.models import ModelRepository
from engine.models.stores import S3Store
from engine.project.config import Models

pytest.importorskip("moto.server")

pytestmark = pytest.mark.e2e  # a real S3-compatible server (moto) on loopback


@pytest.fixture(scope="module")
def s3_endpoint():
    """One moto S3 server for the module, on a free loopback port."""
    yield from moto_s3()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    """A fresh bucket, with the environment pointing boto3 (and so the engine) at the local server."""
    return Bucket(*fresh_bucket(s3_endpoint, monkeypatch, "models"))


class Bucket:
    def __init__(self, client, name: str) -> None:
        self.client = client
        self.name = name

    def put(self, key: str, value) -> None:
        body = value if isinstance(value, bytes) else json.dumps({"value": value})  # bytes: as they are
        self.client.put_object(Bucket=self.name, Key=key, Body=body)

    def delete(self, prefix: str) -> None:
        for obj in self.client.list_objects_v2(Bucket=self.name, Prefix=prefix).get("Contents", []):
            self.client.delete_object(Bucket=self.name, Key=obj["Key"])

    def uri(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"


@pytest.fixture
def repos(tmp_path):
    made = []

    def make(fmt=None, cache_root: Path | None = None, scan: bool = True, **models) -> ModelRepository:
        repository = ModelRepository(Models(**models), tmp_path, fmt or JsonFormat(), "test", poll_interval=0.1,
                                     cache_root=cache_root)
        made.append(repository)
        if scan:
            repository.scan()
        return repository

    yield make
    for repository in made:
        repository.stop()


def refresh_until(repository: ModelRepository, check, timeout: float = 10.0):
    """Refresh until check() holds; uploads are seconds-old at most, so this waits for them to settle."""
    deadline = time.monotonic() + timeout
    while True:
        repository.refresh()
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(repository.settle / 2)


def copies(cache_root: Path) -> list[Path]:
    """Downloaded copies on disk, those being downloaded included."""
    return sorted(cache_root.iterdir()) if cache_root.exists() else []


# --- where models are ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["mpg", "mpg/"])
def test_versions_under_a_prefix(bucket, repos, tmp_path, prefix):
    for number in (1, 2, 10):
        bucket.put(f"mpg/{number}/model.json", number)
    bucket.put("mpg-other/1/model.json", "a sibling prefix, not a version")
    repository = repos(path=bucket.uri(prefix), cache_root=tmp_path / "cache")
    assert repository.get().value == 10 and repository.get(model_version="1").value == 1
    assert repository.metadata()["_cortex_default"]["versions"] == ["10", "2", "1"]
    model = repository.get(model_version="2")
    assert model.path.parent == tmp_path / "cache" and (model.path / "model.json").is_file()


def test_unversioned_prefix_is_version_1(bucket, repos):
    bucket.put("m/model.json", "one")
    bucket.put("m/extra/vocab.txt", b"words")
    bucket.put("m/.hidden", "ignored")
    repository = repos(path=bucket.uri("m"))
    model = repository.get()
    assert model.value == "one" and (model.path / "extra" / "vocab.txt").read_text() == "words"
    assert not (model.path / ".hidden").exists()


def test_models_dir_prefix(bucket, repos):
    bucket.put("all/iris/1/model.json", "iris-1")
    bucket.put("all/iris/2/model.json", "iris-2")
    bucket.put("all/mpg/model.json", "mpg")
    bucket.put("all/.trash/1/model.json", "hidden")
    bucket.put("all/README.md", "not a model")
    repository = repos(dir=bucket.uri("all/"))
    assert repository.model_names() == ["iris", "mpg"]
    assert repository.get("iris").value == "iris-2" and repository.get("mpg", "1").value == "mpg"
    with pytest.raises(ModelError) as caught:
        repository.get(".trash")
    assert caught.value.status_code == 404


def test_a_single_object_is_a_single_file_model(bucket, repos):
    bucket.put("files/model.json", "single")
    bucket.put("files/model.json.bak", "not this one")
    repository = repos(path=bucket.uri("files/model.json"))
    model = repository.get()
    assert model.value == "single" and model.path.name == "model.json" and model.path.is_file()


def test_a_missing_bucket_is_a_clear_start_up_error(bucket, repos):
    with pytest.raises(ModelError, match=r"cannot list the models at s3://no-such-bucket-x/m: .*NoSuchBucket"):
        repos(path="s3://no-such-bucket-x/m")


def test_an_empty_prefix_is_a_start_up_error(bucket, repos):
    with pytest.raises(ModelError, match="nothing found at s3://"):
        repos(path=bucket.uri("nothing/here"))


def test_keys_that_are_not_safe_local_paths_are_ignored(bucket, repos, tmp_path):
    bucket.put("m/1/model.json", "safe")
    for key in ("m/1//escape.json", "m/1/./dot.json", "m/1/../../escape.json", "m//escape.json"):
        bucket.put(key, "evil")
    repository = repos(path=bucket.uri("m"), cache_root=tmp_path / "cache")
    model = repository.get()
    assert model.value == "safe"
    assert sorted(p.name for p in model.path.rglob("*")) == ["model.json"]
    assert not list(tmp_path.glob("*.json")) and not Path("/escape.json").exists()


# --- live reloading -----------------------------------------------------------------------------------------


def test_new_versions_changes_and_removals_are_picked_up(bucket, repos, tmp_path):
    bucket.put("m/1/model.json", 1)
    cache = tmp_path / "cache"
    repository = repos(path=bucket.uri("m"), cache_root=cache)
    repository.preload()
    assert repository.get().value == 1

    bucket.put("m/2/model.json", 2)
    refresh_until(repository, lambda: repository.get().value == 2)
    assert repository.metadata()["_cortex_default"]["versions"] == ["2", "1"]
    assert len(copies(cache)) == 2

    bucket.put("m/2/model.json", 22)  # rewritten in place
    refresh_until(repository, lambda: repository.get().value == 22)
    assert len(copies(cache)) == 2  # the outdated copy of version 2 was deleted

    bucket.delete("m/2/")
    refresh_until(repository, lambda: repository.metadata()["_cortex_default"]["versions"] == ["1"])
    assert repository.get().value == 1
    assert len(copies(cache)) == 1 and repository.memory_usage() == (1, 1)
    assert repository.fmt.alive == 1


def test_a_same_size_rewrite_within_the_same_second_is_picked_up(bucket, repos):
    # LastModified has whole seconds only: the ETag tells the two uploads apart
    def last_modified():
        return bucket.client.head_object(Bucket=bucket.name, Key="m/1/model.json")["LastModified"]

    for attempt in range(5):
        bucket.put("m/1/model.json", f"a{attempt}")
        repository = repos(path=bucket.uri("m"))
        assert repository.get().value == f"a{attempt}"
        first = last_modified()
        bucket.put("m/1/model.json", f"b{attempt}")
        if last_modified() == first:
            break
    else:
        pytest.skip("could not upload twice within one second")
    refresh_until(repository, lambda: repository.get().value == f"b{attempt}")


def test_a_broken_upload_never_replaces_a_working_version(bucket, repos):
    bucket.put("m/1/model.json", 1)
    repository = repos(path=bucket.uri("m"))
    repository.preload()
    bucket.put("m/2/model.json", b"{not json")
    refresh_until(repository, lambda: repository.metadata()["_cortex_default"].get("errors"))
    assert repository.get().value == 1
    assert "failed to load" in repository.metadata()["_cortex_default"]["errors"]["2"]


def test_new_models_appear_in_a_models_dir_prefix(bucket, repos):
    bucket.put("all/a/model.json", "a")
    repository = repos(dir=bucket.uri("all"), cache_size=1, disk_cache_size=1)
    bucket.put("all/b/1/model.json", "b")
    refresh_until(repository, lambda: repository.model_names() == ["a", "b"])
    assert repository.get("b").value == "b"
    bucket.delete("all/a/")
    refresh_until(repository, lambda: repository.model_names() == ["b"])


def test_polling_an_s3_prefix(bucket, repos):
    bucket.put("m/1/model.json", 1)
    repository = repos(path=bucket.uri("m"))
    repository.preload()
    repository.start_polling()
    bucket.put("m/2/model.json", 2)
    deadline = time.monotonic() + 10
    while repository.get().value != 2:
        assert time.monotonic() < deadline, "the new version was not picked up by polling"
        time.sleep(0.02)


def test_a_failed_download_is_tried_again(bucket, repos):
    bucket.put("m/1/model.json", 1)
    repository = repos(path=bucket.uri("m"), cache_size=1, disk_cache_size=1)
    bucket.delete("m/1/")  # listed at start-up, gone when first asked for
    with pytest.raises(ModelError, match="failed to download"):
        repository.get()
    bucket.put("m/1/model.json", 1)
    assert repository.get().value == 1  # not marked broken for good, unlike a version that fails to load


# --- caching ------------------------------------------------------------------------------------------------


def test_disk_cache_keeps_the_most_recently_used_copies_and_deletes_the_others(bucket, repos, tmp_path):
    for name in "abcd":
        bucket.put(f"all/{name}/1/model.json", name)
    cache = tmp_path / "cache"
    repository = repos(dir=bucket.uri("all"), cache_size=1, disk_cache_size=2, cache_root=cache)
    assert copies(cache) == []  # nothing is downloaded before it is asked for
    repository.get("a")
    repository.get("b")
    assert len(copies(cache)) == 2 and repository.memory_usage() == (1, 2)
    repository.get("a")  # from memory? no: cache_size 1 evicted it, but its copy is still on disk
    assert sum(repository.fmt.loads.values()) == 3 and len(copies(cache)) == 2
    a_copy = {p for p in copies(cache) if json.loads((p / "model.json").read_text())["value"] == "a"}
    repository.get("c")  # b is the least recently used copy: deleted
    repository.get("d")  # then a
    assert len(copies(cache)) == 2 and not any(p.exists() for p in a_copy)
    values = sorted(json.loads((p / "model.json").read_text())["value"] for p in copies(cache))
    assert values == ["c", "d"]
    repository.stop()
    assert copies(cache) == []  # stop deletes what it downloaded


def test_disk_and_memory_limits_hold_under_concurrent_access(bucket, repos, tmp_path):
    names = [f"m{i}" for i in range(6)]
    for name in names:
        bucket.put(f"all/{name}/1/model.json", name)
        bucket.put(f"all/{name}/1/weights.bin", b"\0" * 50_000)
    cache = tmp_path / "cache"
    repository = repos(dir=bucket.uri("all"), cache_size=2, disk_cache_size=3, cache_root=cache)
    on_disk, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            on_disk.append(len(copies(cache)))
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    errors = []

    def worker(seed):
        chooser = random.Random(seed)
        try:
            for _ in range(12):
                name = chooser.choice(names)
                assert repository.get(name).value == name
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stop.set()
    sampler.join()
    assert not errors, errors[0]
    assert sum(repository.fmt.loads.values()) > 6  # models were evicted and loaded again
    assert max(on_disk) <= 3, f"{max(on_disk)} copies on disk at once"
    assert repository.fmt.max_alive <= 2
    assert repository.memory_usage()[1] <= 3 and len(copies(cache)) == repository.memory_usage()[1]


def test_a_copy_being_deleted_is_never_handed_to_a_load(bucket, repos, tmp_path, monkeypatch):
    """Regression: a version evicted from disk was deleted outside the lock while another thread, loading that same
    version again, was handed the doomed copy's path (the cause of a FileNotFoundError one run in ten above)."""
    for name in ("m0", "m1", "m2"):
        bucket.put(f"all/{name}/1/model.json", name)
    repository = repos(dir=bucket.uri("all"), cache_size=2, disk_cache_size=2, cache_root=tmp_path / "cache")
    assert [repository.get(name).value for name in ("m0", "m1")] == ["m0", "m1"]
    deleting, handed_out, deleted = threading.Event(), threading.Event(), threading.Event()
    discard, materialise = S3Store.discard, S3Store.materialise

    def gated_discard(store, version):
        if deleting.is_set():
            return discard(store, version)
        deleting.set()
        handed_out.wait(timeout=1)  # the race: the other load gets this copy's path before it is deleted...
        discard(store, version)
        deleted.set()

    def watched_materialise(store, version):
        path = materialise(store, version)
        if deleting.is_set() and not deleted.is_set():
            handed_out.set()
            deleted.wait(timeout=10)  # ...and reads it only after the deletion
        return path

    monkeypatch.setattr(S3Store, "discard", gated_discard)
    monkeypatch.setattr(S3Store, "materialise", watched_materialise)
    loading = threading.Thread(target=repository.get, args=("m2",))  # evicts m0 from memory, then from disk
    loading.start()
    assert deleting.wait(10)
    assert repository.get("m0").value == "m0"  # waits for the old copy to go, then downloads it afresh
    loading.join(10)
    assert not handed_out.is_set()


# --- python_client ------------------------------------------------------------------------------------------


def test_python_client_over_s3(bucket, repos):
    bucket.put("mpg/1/model.json", 1)
    bucket.put("mpg/2/model.json", 2)
    repository = repos(PythonModelFormat(), path=bucket.uri("mpg/"))
    client = PythonClient(repository)
    paths = []

    def load_model(model_path):
        paths.append(model_path)
        return json.loads(Path(model_path, "model.json").read_text())["value"]

    client.set_load_method(load_model)
    repository.preload()
    assert client.get_model() == 2 and client.get_model(model_version="1") == 1
    assert len(paths) == 2 and all(Path(p).is_dir() and not p.startswith("s3://") for p in paths)
    assert client.metadata()["_cortex_default"]["versions"] == ["2", "1"]
