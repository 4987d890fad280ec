"""Model layouts: which files form which versions, and the error a predictor type's rejected layout gives."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import ModelError
from engine.models import FileEntry, ModelRepository
from engine.models.layout import MAX_TREE_LINES, check_layout, group_versions
from engine.models.stores import LocalStore
from engine.project.config import Models

OLD = 1_600_000_000.0  # a modification time long settled


def write(root: Path, files: dict[str, str], mtime: float = OLD) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.utime(path, (mtime, mtime))
    return root


def versions_of(root: Path) -> dict[int, list[str]]:
    """What the local store and group_versions make of a directory: version → its files."""
    listing = LocalStore().listing(str(root))
    assert listing is not None
    return {v: sorted(e.path for e in info.files) for v, info in group_versions(str(root), *listing).items()}


class AnyFormat:
    """Accepts any non-empty version; loads nothing."""

    expected_tree = "anything"

    def validate(self, files):
        return None if files else "empty"

    def load(self, path):
        return str(path)

    def unload(self, model):
        pass

    def describe(self, model):
        return {}


class OnnxLikeFormat(AnyFormat):
    """Exactly one .onnx file, as the ONNX predictor type wants."""

    expected_tree = "model.onnx"

    def validate(self, files):
        if len(files) == 1 and files[0].endswith(".onnx"):
            return None
        return f"expected exactly one .onnx file, found {len(files)} files"


# --- versions from directories ---------------------------------------------------------------------------


def test_integer_sub_directories_are_versions(tmp_path):
    write(tmp_path, {"1/model.json": "a", "2/model.json": "b", "10/weights/w.bin": "c"})
    assert versions_of(tmp_path) == {1: ["model.json"], 2: ["model.json"], 10: ["weights/w.bin"]}


def test_version_location_is_the_version_directory(tmp_path):
    write(tmp_path, {"3/model.json": "a"})
    listing = LocalStore().listing(str(tmp_path))
    (info,) = group_versions(str(tmp_path), *listing).values()
    assert info.location == f"{tmp_path}/3" and info.version == 3


def test_no_integer_sub_directories_is_version_1(tmp_path):
    write(tmp_path, {"model.pkl": "a", "vocab/words.txt": "b"})
    assert versions_of(tmp_path) == {1: ["model.pkl", "vocab/words.txt"]}
    listing = LocalStore().listing(str(tmp_path))
    assert group_versions(str(tmp_path), *listing)[1].location == str(tmp_path)


@pytest.mark.parametrize("extra", ["model.pkl", "notes/readme.txt", "v3/model.json"])
def test_integer_directories_mixed_with_anything_else_is_one_unversioned_model(tmp_path, extra):
    write(tmp_path, {"1/model.json": "a", "2/model.json": "b", extra: "c"})
    assert versions_of(tmp_path) == {1: sorted(["1/model.json", "2/model.json", extra])}


def test_a_file_named_like_a_version_is_not_a_version(tmp_path):
    write(tmp_path, {"1": "a file, not a directory", "2/model.json": "b"})
    assert versions_of(tmp_path) == {1: ["1", "2/model.json"]}


def test_empty_version_directories_are_skipped(tmp_path):
    write(tmp_path, {"1/model.json": "a", "3/model.json": "c"})
    (tmp_path / "2").mkdir()
    (tmp_path / "4" / "empty").mkdir(parents=True)
    assert versions_of(tmp_path) == {1: ["model.json"], 3: ["model.json"]}


def test_hidden_files_and_directories_are_ignored(tmp_path):
    write(tmp_path, {"1/model.json": "a", "1/.model.json.swp": "x", ".DS_Store": "x", ".git/HEAD": "x",
                     "2/.hidden/inner.txt": "x", "2/model.json": "b", "3/.only-hidden": "x"})
    assert versions_of(tmp_path) == {1: ["model.json"], 2: ["model.json"]}


def test_a_directory_with_only_hidden_files_has_no_versions(tmp_path):
    write(tmp_path, {".keep": "", ".cache/x": ""})
    assert versions_of(tmp_path) == {}


def test_non_ascii_digit_directories_are_not_versions(tmp_path):
    # "²".isdigit() and "١".isdigit() are True, yet int("²") fails: such names must not break the listing
    write(tmp_path, {"²/model.json": "a", "1/model.json": "b"})
    assert versions_of(tmp_path) == {1: ["1/model.json", "²/model.json"]}
    write(tmp_path / "other", {"١/model.json": "a"})
    assert versions_of(tmp_path / "other") == {1: ["١/model.json"]}


def test_zero_padded_versions_do_not_collide(tmp_path):
    write(tmp_path, {"1/model.json": "a", "01/model.json": "b", "2/model.json": "c"})
    versions = group_versions(str(tmp_path), *LocalStore().listing(str(tmp_path)))
    assert sorted(versions) == [1, 2]
    assert versions[1].location == f"{tmp_path}/1"  # the canonical spelling wins, whatever the listing order


def test_a_single_file_model_is_version_1(tmp_path):
    write(tmp_path, {"model.onnx": "bytes"})
    listing = LocalStore().listing(str(tmp_path / "model.onnx"))
    assert listing is not None and listing[1] is True
    versions = group_versions(str(tmp_path / "model.onnx"), *listing)
    assert list(versions) == [1]
    assert versions[1].location == str(tmp_path / "model.onnx")
    assert [e.path for e in versions[1].files] == [""]


def test_missing_location_lists_nothing(tmp_path):
    assert LocalStore().listing(str(tmp_path / "nope")) is None


def test_timestamp_is_the_newest_file_and_signature_tracks_content(tmp_path):
    write(tmp_path, {"1/a": "a"}, mtime=OLD)
    write(tmp_path, {"1/b": "b"}, mtime=OLD + 50)
    (info,) = group_versions(str(tmp_path), *LocalStore().listing(str(tmp_path))).values()
    assert info.timestamp == OLD + 50
    write(tmp_path, {"1/b": "bb"}, mtime=OLD + 50)  # same mtime, new size
    (again,) = group_versions(str(tmp_path), *LocalStore().listing(str(tmp_path))).values()
    assert again.signature != info.signature


def test_models_dir_sub_directories_are_models(tmp_path):
    write(tmp_path / "models", {"iris/1/model.json": "a", "iris/2/model.json": "b", "mpg/model.json": "c",
                                "README.md": "not a model", ".hidden/1/model.json": "x"})
    (tmp_path / "models" / "empty").mkdir()
    assert LocalStore().subdirectories(str(tmp_path / "models")) == ["empty", "iris", "mpg"]


# --- layouts a predictor type cannot load ---------------------------------------------------------------


def test_check_layout_error_names_the_model_and_shows_both_trees(tmp_path):
    write(tmp_path, {"1/model.onnx": "x", "1/extra.txt": "y"})
    (info,) = group_versions(str(tmp_path), *LocalStore().listing(str(tmp_path))).values()
    with pytest.raises(ModelError) as caught:
        check_layout("iris", str(tmp_path), info, OnnxLikeFormat(), "onnx")
    message = str(caught.value)
    assert "model 'iris' version 1" in message and "onnx predictor" in message
    assert "expected exactly one .onnx file, found 2 files" in message
    expected, found = message.split("expected", 2)[2].split("found:")
    assert "model.onnx" in expected
    assert "extra.txt" in found and "model.onnx" in found


def test_check_layout_accepts_a_valid_version(tmp_path):
    write(tmp_path, {"1/model.onnx": "x"})
    (info,) = group_versions(str(tmp_path), *LocalStore().listing(str(tmp_path))).values()
    check_layout("iris", str(tmp_path), info, OnnxLikeFormat(), "onnx")


def test_check_layout_shows_only_the_first_50_paths():
    files = tuple(FileEntry(f"file-{i:03}.txt", 1, OLD) for i in range(MAX_TREE_LINES + 7))
    info = group_versions("/m", list(files), False)[1]
    with pytest.raises(ModelError) as caught:
        check_layout("big", "/m", info, OnnxLikeFormat(), "onnx")
    message = str(caught.value)
    assert "file-049.txt" in message and "file-050.txt" not in message
    assert "... and 7 more" in message
    assert MAX_TREE_LINES == 50


def test_check_layout_of_a_single_file_shows_its_name(tmp_path):
    write(tmp_path, {"model.pkl": "x"})
    location = str(tmp_path / "model.pkl")
    info = group_versions(location, *LocalStore().listing(location))[1]
    with pytest.raises(ModelError) as caught:
        check_layout("_cortex_default", location, info, OnnxLikeFormat(), "onnx")
    assert "found:\n    model.pkl" in str(caught.value)


def test_scan_rejects_a_layout_the_format_cannot_load_naming_the_model(tmp_path):
    write(tmp_path, {"models/good/model.onnx": "x", "models/bad/1/model.onnx": "x", "models/bad/1/notes.txt": "y"})
    repository = ModelRepository(Models(dir="models"), tmp_path, OnnxLikeFormat(), "onnx")
    with pytest.raises(ModelError) as caught:
        repository.scan()
    message = str(caught.value)
    assert "model 'bad' version 1" in message and "notes.txt" in message and "model.onnx" in message
    assert "'good'" not in message
    repository.stop()


def test_scan_reports_a_missing_model_path(tmp_path):
    repository = ModelRepository(Models(paths=[{"name": "gone", "path": "nowhere"}]), tmp_path, AnyFormat(), "python")
    with pytest.raises(ModelError, match=r"model 'gone': nothing found at .*nowhere"):
        repository.scan()
    repository.stop()


def test_scan_of_an_empty_models_dir_is_allowed(tmp_path):
    (tmp_path / "models").mkdir()
    repository = ModelRepository(Models(dir="models"), tmp_path, AnyFormat(), "python")
    repository.scan()
    assert repository.model_names() == []
    repository.stop()


# --- symbolic links --------------------------------------------------------------------------------------


def test_symlinked_version_directories_are_followed(tmp_path):
    write(tmp_path / "elsewhere" / "v3", {"model.json": "c", "weights/w.bin": "w"})
    write(tmp_path / "m", {"1/model.json": "a"})
    (tmp_path / "m" / "3").symlink_to(tmp_path / "elsewhere" / "v3", target_is_directory=True)
    assert versions_of(tmp_path / "m") == {1: ["model.json"], 3: ["model.json", "weights/w.bin"]}


def test_a_symlink_loop_is_listed_once_and_ends(tmp_path):
    write(tmp_path / "m", {"1/model.json": "a"})
    (tmp_path / "m" / "1" / "again").symlink_to(tmp_path / "m", target_is_directory=True)
    (tmp_path / "m" / "1" / "dangling.json").symlink_to(tmp_path / "nowhere")
    assert versions_of(tmp_path / "m") == {1: ["model.json"]}


# --- write activity (what tells a version still being copied) --------------------------------------------


def test_hidden_files_and_directories_count_as_write_activity_not_as_content(tmp_path):
    write(tmp_path, {"1/model.json": "a", "1/sub/w.bin": "w"}, mtime=OLD)
    for directory in (tmp_path / "1", tmp_path / "1" / "sub"):
        os.utime(directory, (OLD, OLD))
    (info,) = group_versions(str(tmp_path), *LocalStore().listing(str(tmp_path))).values()
    assert info.activity == OLD and info.timestamp == OLD
    write(tmp_path, {"1/sub/.w2.bin.tmp": "partial"}, mtime=OLD + 30)
    os.utime(tmp_path / "1" / "sub", (OLD + 10, OLD + 10))
    (busy,) = group_versions(str(tmp_path), *LocalStore().listing(str(tmp_path))).values()
    assert busy.signature == info.signature and busy.timestamp == OLD
    assert busy.activity == OLD + 30
