"""The project directory: visible files, .cortexignore, the symlink view, python_path and the environment."""
from __future__ import annotations

import importlib
import logging
import os
import sys
import uuid
from pathlib import Path

import pytest

from engine import ConfigError, ServeSettings, create_app, load_project
from engine.project.files import Project, conflicting_env, enter_view, remove_view
from engine.testing import api_yaml


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    """Write `files` (relative path -> content) under root and return root."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def project_of(root: Path, files: dict[str, str | bytes], config: str = "cortex.yaml") -> Project:
    """A Project over a freshly written tree whose config file is `config`."""
    write_tree(root, {config: "- name: api\n", **files})
    return Project(root, root / config)


def view_files(view: Path) -> set[str]:
    """Every non-directory entry under the view, relative, as posix paths."""
    found = set()
    for current, _, names in os.walk(view):
        for name in names:
            found.add(Path(current, name).relative_to(view).as_posix())
    return found


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """Restore the working directory, sys.path, sys.modules and os.environ after the test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(os, "environ", os.environ.copy())
    before = set(sys.modules)
    yield monkeypatch
    for name in set(sys.modules) - before:
        del sys.modules[name]


# --- the visible file set -------------------------------------------------------------------------------------


def test_ordinary_files_and_folders_are_visible(tmp_path):
    project = project_of(tmp_path, {"predictor.py": "", "values.json": "{}", "src/pkg/mod.py": "",
                                    "requirements.txt": "", "data/nested/deep/x.bin": b"\0"})
    assert sorted(project.files) == ["data/nested/deep/x.bin", "predictor.py", "requirements.txt",
                                     "src/pkg/mod.py", "values.json"]
    assert set(project.dirs) == {"data", "data/nested", "data/nested/deep", "src", "src/pkg"}


@pytest.mark.parametrize("hidden", [
    ".hidden", ".git/config", ".git/objects/ab/cdef", "sub/.secret", ".venv/lib/site.py", "sub/.cache/x",
    "a.pyc", "pkg/b.pyo", "pkg/c.pyd", "pkg/__pycache__/mod.cpython-311.pyc", "__pycache__/notes.txt",
    "cortex-debug-1600000000.tgz", "sub/cortex-debug-x", "cortex-debug-dir/file.txt", "sub/.env",
])
def test_hidden_bytecode_and_debug_files_are_not_visible(tmp_path, hidden):
    project = project_of(tmp_path, {"predictor.py": "", hidden: "x"})
    assert project.files == ["predictor.py"]
    assert not project.has_file(hidden)


def test_hidden_folders_are_not_listed_as_dirs(tmp_path):
    project = project_of(tmp_path, {"predictor.py": "", ".git/HEAD": "", "pkg/__pycache__/m.pyc": "",
                                    "pkg/m.py": "", "cortex-debug-x/f": ""})
    assert project.dirs == ["pkg"]
    assert not project.has_dir(".git") and not project.has_dir("pkg/__pycache__")


def test_root_env_file_is_visible(tmp_path):
    project = project_of(tmp_path, {"predictor.py": "", ".env": "A=1\n", ".envrc": "x", "sub/.env": "B=2\n"})
    assert sorted(project.files) == [".env", "predictor.py"]


def test_files_that_only_look_like_bytecode_stay_visible(tmp_path):
    project = project_of(tmp_path, {"predictor.py": "", "notes.pyc.txt": "", "pyc": "", "my.pyx": ""})
    assert sorted(project.files) == ["my.pyx", "notes.pyc.txt", "predictor.py", "pyc"]


@pytest.mark.parametrize("config", ["cortex.yaml", "api.yaml", "deploy/../other-name.yml"])
def test_the_config_file_is_not_visible_whatever_its_name(tmp_path, config):
    write_tree(tmp_path, {"predictor.py": "", "cortex.yaml": "- name: a\n", "api.yaml": "- name: b\n",
                          "other-name.yml": "- name: c\n", "deploy/keep.txt": ""})
    project = Project(tmp_path, tmp_path / config)
    expected = {"predictor.py", "cortex.yaml", "api.yaml", "other-name.yml", "deploy/keep.txt"}
    assert set(project.files) == expected - {Path(config).name}


def test_the_config_file_is_found_through_a_relative_path(tmp_path, monkeypatch):
    write_tree(tmp_path, {"predictor.py": "", "cortex.yaml": ""})
    monkeypatch.chdir(tmp_path)
    project = Project(Path("."), Path("cortex.yaml"))
    assert project.files == ["predictor.py"]


def test_a_config_file_that_is_a_symlink_hides_the_link_not_its_target(tmp_path):
    write_tree(tmp_path, {"predictor.py": "", "configs/real.yaml": "- name: a\n"})
    (tmp_path / "cortex.yaml").symlink_to(tmp_path / "configs" / "real.yaml")
    project = Project(tmp_path, tmp_path / "cortex.yaml")
    assert sorted(project.files) == ["configs/real.yaml", "predictor.py"]


def test_a_file_named_like_the_config_in_a_subfolder_stays_visible(tmp_path):
    project = project_of(tmp_path, {"predictor.py": "", "examples/cortex.yaml": ""})
    assert sorted(project.files) == ["examples/cortex.yaml", "predictor.py"]


def test_has_file_and_has_dir_accept_equivalent_spellings(tmp_path):
    project = project_of(tmp_path, {"predictor.py": "", "src/pkg/mod.py": ""})
    assert project.has_file("predictor.py") and project.has_file("./predictor.py")
    assert project.has_file("src//pkg/./mod.py")
    assert project.has_dir("src") and project.has_dir("src/") and project.has_dir("./src/pkg")
    assert not project.has_file("src") and not project.has_dir("predictor.py")
    assert not project.has_file("missing.py") and not project.has_dir("")


def test_symlinked_folders_are_followed_and_cycles_end(tmp_path):
    outside = write_tree(tmp_path / "outside", {"weights.bin": "w", ".hidden": "h"})
    root = tmp_path / "project"
    write_tree(root, {"cortex.yaml": "", "predictor.py": "", "pkg/mod.py": ""})
    (root / "models").symlink_to(outside, target_is_directory=True)
    (root / "pkg" / "loop").symlink_to(root / "pkg", target_is_directory=True)
    project = Project(root, root / "cortex.yaml")
    assert sorted(project.files) == ["models/weights.bin", "pkg/mod.py", "predictor.py"]
    assert "pkg/loop" not in project.dirs


# --- .cortexignore --------------------------------------------------------------------------------------------

IGNORE_TREE = {
    "predictor.py": "", "keep.txt": "", "notes.txt": "", "sub/notes.txt": "", "sub/keep.txt": "",
    "a.log": "", "important.log": "", "build/out.o": "", "build/keep.txt": "", "src/build": "",
    "data/raw/big.bin": "", "data/raw/keep.bin": "", "data/clean.csv": "", "logs/x.log": "", "logs/keep.md": "",
    "logs/old/y.md": "", "top.md": "", "sub/top.md": "", "#literal": "", "a/b/c.py": "", "x/a/b/c.py": "",
}


@pytest.mark.parametrize("patterns, hidden", [
    ("*.txt\n", {"keep.txt", "notes.txt", "sub/notes.txt", "sub/keep.txt", "build/keep.txt"}),
    ("*.txt\n!keep.txt\n", {"notes.txt", "sub/notes.txt"}),
    ("build/\n", {"build/out.o", "build/keep.txt"}),  # a directory pattern leaves the file src/build alone
    ("build\n", {"build/out.o", "build/keep.txt", "src/build"}),
    ("build/\n!build/keep.txt\n", {"build/out.o", "build/keep.txt"}),  # git: no re-include inside an ignored dir
    ("build/*\n!build/keep.txt\n", {"build/out.o"}),
    ("data/raw/\n", {"data/raw/big.bin", "data/raw/keep.bin"}),
    ("/data/raw/*\n!/data/raw/keep.bin\n", {"data/raw/big.bin"}),
    ("logs/**\n!logs/keep.md\n", {"logs/x.log", "logs/old/y.md"}),
    ("/top.md\n", {"top.md"}),
    ("top.md\n", {"top.md", "sub/top.md"}),
    ("a/b/\n", {"a/b/c.py"}),  # a pattern with a slash is anchored to the root
    ("**/b/\n", {"a/b/c.py", "x/a/b/c.py"}),
    ("# a comment\n\n   \n", set()),
    ("\\#literal\n", {"#literal"}),
    ("*.log\n!important.log\n", {"a.log", "logs/x.log"}),
    ("*\n!*/\n!*.py\n", set(IGNORE_TREE) - {"predictor.py", "a/b/c.py", "x/a/b/c.py"}),
])
def test_cortexignore_follows_gitignore_rules(tmp_path, patterns, hidden):
    project = project_of(tmp_path, {**IGNORE_TREE, ".cortexignore": patterns})
    assert set(project.files) == set(IGNORE_TREE) - hidden


def test_cortexignore_itself_is_not_visible(tmp_path):
    project = project_of(tmp_path, {"predictor.py": "", ".cortexignore": "nothing\n"})
    assert project.files == ["predictor.py"]


def test_cortexignore_does_not_hide_the_root_env_file(tmp_path):
    project = project_of(tmp_path, {"predictor.py": "", ".env": "A=1\n", ".cortexignore": ".env\n*\n!predictor.py\n"})
    assert sorted(project.files) == [".env", "predictor.py"]


def test_cortexignore_in_a_subfolder_is_not_read(tmp_path):
    project = project_of(tmp_path, {"predictor.py": "", "sub/x.txt": "", "sub/.cortexignore": "*\n"})
    assert sorted(project.files) == ["predictor.py", "sub/x.txt"]


def test_ignored_directories_are_not_listed(tmp_path):
    project = project_of(tmp_path, {"predictor.py": "", "build/x": "", "src/m.py": "", ".cortexignore": "build/\n"})
    assert project.dirs == ["src"]


# --- the view -------------------------------------------------------------------------------------------------


def test_view_mirrors_exactly_the_visible_files_as_symlinks(tmp_path):
    root = tmp_path / "project"
    project = project_of(root, {"predictor.py": "", "values.json": "{}", "src/pkg/mod.py": "", ".env": "A=1\n",
                                ".git/HEAD": "", "cache.pyc": "", "ignored.csv": "", ".cortexignore": "*.csv\n",
                                "cortex-debug-1.tgz": ""})
    view = project.create_view()
    try:
        assert view_files(view) == {"predictor.py", "values.json", "src/pkg/mod.py", ".env"}
        for relative in view_files(view):
            assert os.path.islink(view / relative)
            assert Path(os.path.realpath(view / relative)) == (root / relative).resolve()
        assert (view / "src").is_dir() and not (view / "src").is_symlink()
        assert not (view / "cortex.yaml").exists() and not (view / ".git").exists()
    finally:
        remove_view(view)


def test_view_does_not_copy_large_files(tmp_path):
    big = tmp_path / "project" / "model.bin"
    project = project_of(tmp_path / "project", {"predictor.py": "", "model.bin": b""})
    with open(big, "wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    view = project.create_view()
    try:
        assert os.path.islink(view / "model.bin")
        assert os.lstat(view / "model.bin").st_size < 4096  # the link, not 64 MiB of data
        assert os.stat(view / "model.bin").st_ino == os.stat(big).st_ino
        assert (view / "model.bin").stat().st_size == 64 * 1024 * 1024
    finally:
        remove_view(view)


def test_view_shows_later_edits_to_project_files(tmp_path):
    project = project_of(tmp_path / "project", {"predictor.py": "", "values.json": "old"})
    view = project.create_view()
    try:
        (tmp_path / "project" / "values.json").write_text("new")
        assert (view / "values.json").read_text() == "new"
    finally:
        remove_view(view)


def test_remove_view_deletes_the_view_and_leaves_the_project(tmp_path):
    root = tmp_path / "project"
    project = project_of(root, {"predictor.py": "print()", "data/x.txt": "x"})
    view = project.create_view()
    remove_view(view)
    assert not view.exists()
    assert (root / "predictor.py").read_text() == "print()" and (root / "data" / "x.txt").read_text() == "x"


def test_relative_open_works_after_enter_view(tmp_path, isolated):
    project = project_of(tmp_path / "project", {"predictor.py": "", "values.json": '{"a": 1}'})
    view = project.create_view()
    try:
        enter_view(view, [])
        assert Path.cwd() == view.resolve() or Path.cwd() == view
        with open("values.json") as handle:
            assert handle.read() == '{"a": 1}'
        assert not os.path.exists("cortex.yaml")
    finally:
        remove_view(view)


def test_without_python_path_the_view_root_is_importable(tmp_path, isolated):
    module = f"helper_{uuid.uuid4().hex}"
    project = project_of(tmp_path / "project", {"predictor.py": "", f"{module}.py": "VALUE = 7\n"})
    view = project.create_view()
    try:
        enter_view(view, [])
        assert sys.path[0] == str(view)
        assert importlib.import_module(module).VALUE == 7
    finally:
        remove_view(view)


def test_python_path_entries_are_put_first_on_sys_path(tmp_path, isolated):
    module = f"helper_{uuid.uuid4().hex}"
    project = project_of(tmp_path / "project", {"predictor.py": "", f"src/{module}.py": "VALUE = 'src'\n",
                                                "lib/other.py": ""})
    view = project.create_view()
    try:
        enter_view(view, ["src", "lib"])
        assert sys.path[:2] == [str(view / "src"), str(view / "lib")]
        assert str(view) not in sys.path  # as Cortex: python_path replaces the project root
        assert importlib.import_module(module).VALUE == "src"
    finally:
        remove_view(view)


def test_enter_view_adds_each_entry_once(tmp_path, isolated):
    project = project_of(tmp_path / "project", {"predictor.py": "", "src/m.py": ""})
    view = project.create_view()
    try:
        enter_view(view, ["src", "src", ""])
        assert sys.path.count(str(view / "src")) == 1 and sys.path.count(str(view)) == 1
    finally:
        remove_view(view)


def test_bytecode_is_written_in_the_view_not_the_project(tmp_path, isolated):
    isolated.setattr(sys, "dont_write_bytecode", False)
    module = f"helper_{uuid.uuid4().hex}"
    root = tmp_path / "project"
    project = project_of(root, {"predictor.py": "", f"{module}.py": "VALUE = 1\n"})
    view = project.create_view()
    try:
        enter_view(view, [])
        importlib.import_module(module)
        assert (view / "__pycache__").is_dir()
        assert not (root / "__pycache__").exists()
    finally:
        remove_view(view)


# --- the environment ------------------------------------------------------------------------------------------


@pytest.fixture
def environ(monkeypatch):
    """An os.environ of our own for the test."""
    env = {"HOME": "/home/user", "PRESET": "from-shell"}
    monkeypatch.setattr(os, "environ", env)
    return env


def apply_environment(project: Project, api_envs: dict[str, dict[str, str]]) -> None:
    """Set the variables the project's predictors would run with, as the app does when it starts."""
    os.environ.update(project.environment(api_envs, os.environ))


def added(environ: dict[str, str]) -> dict[str, str]:
    """The variables the test's code set (pytest itself writes PYTEST_CURRENT_TEST)."""
    return {key: value for key, value in environ.items() if key not in ("HOME", "PRESET", "PYTEST_CURRENT_TEST")}


def test_predictor_env_is_applied(tmp_path, environ):
    project = project_of(tmp_path, {"predictor.py": ""})
    apply_environment(project, {"api": {"MODEL": "small", "PRESET": "from-config"}})
    assert environ["MODEL"] == "small" and environ["PRESET"] == "from-config"


def test_env_file_is_parsed_like_bash(tmp_path, environ):
    env_file = "\n".join([
        "# a comment line",
        "PLAIN=value",
        "export EXPORTED=yes",
        "SPACED='two words'",
        'DOUBLE="double quoted"',
        "TRAILING=kept # a trailing comment",
        "EMPTY=",
        "BRACED=${HOME}/models",
        "UNBRACED=$HOME/data",
        'INQUOTES="$PLAIN-${PLAIN}"',
        "LITERAL='${HOME} stays'",
        "DEFAULTED=${UNSET_VARIABLE:-fallback}",
        "UNSET_IS_EMPTY=[${UNSET_VARIABLE}]",
        "ESCAPED=\\$HOME",
        "",
    ])
    project = project_of(tmp_path, {"predictor.py": "", ".env": env_file})
    apply_environment(project, {})
    assert added(environ) == {
        "PLAIN": "value", "EXPORTED": "yes", "SPACED": "two words", "DOUBLE": "double quoted",
        "TRAILING": "kept", "EMPTY": "", "BRACED": "/home/user/models", "UNBRACED": "/home/user/data",
        "INQUOTES": "value-value", "LITERAL": "${HOME} stays", "DEFAULTED": "fallback", "UNSET_IS_EMPTY": "[]",
        "ESCAPED": "$HOME",
    }


def test_env_file_sees_predictor_env(tmp_path, environ):
    project = project_of(tmp_path, {"predictor.py": "", ".env": "MODEL_DIR=${BUCKET}/models\nURL=s3://$BUCKET\n"})
    apply_environment(project, {"api": {"BUCKET": "my-bucket"}})
    assert environ["MODEL_DIR"] == "my-bucket/models" and environ["URL"] == "s3://my-bucket"


def test_env_file_overrides_predictor_env_and_the_shell(tmp_path, environ):
    project = project_of(tmp_path, {"predictor.py": "", ".env": "MODEL=large\nPRESET=from-env-file\n"})
    apply_environment(project, {"api": {"MODEL": "small"}})
    assert environ["MODEL"] == "large" and environ["PRESET"] == "from-env-file"


def test_env_file_lines_see_earlier_lines(tmp_path, environ):
    project = project_of(tmp_path, {"predictor.py": "", ".env": "A=1\nB=${A}2\nA=3\nC=$A$B\n"})
    apply_environment(project, {})
    assert (environ["A"], environ["B"], environ["C"]) == ("3", "12", "312")


def test_env_file_is_applied_even_when_python_dotenv_is_disabled(tmp_path, environ):
    environ["PYTHON_DOTENV_DISABLED"] = "1"
    project = project_of(tmp_path, {"predictor.py": "", ".env": "A=1\n"})
    apply_environment(project, {})
    assert environ["A"] == "1"


def test_env_file_bad_line_is_a_warning_and_the_rest_applied(tmp_path, environ):
    project = project_of(tmp_path, {"predictor.py": "", ".env": "A=1\nthis is not an assignment\nB=2\n"})
    apply_environment(project, {})
    assert environ["A"] == "1" and environ["B"] == "2"
    assert [str(warning) for warning in project.warnings] == [
        f"{tmp_path / '.env'} line 2 is not VARIABLE=value and is ignored: this is not an assignment"]
    assert not project.warnings[0].local


def test_no_env_file_applies_only_predictor_env(tmp_path, environ):
    project = project_of(tmp_path, {"predictor.py": ""})
    apply_environment(project, {"a": {"X": "1"}, "b": {"Y": "2"}})
    assert added(environ) == {"X": "1", "Y": "2"} and environ["PRESET"] == "from-shell"


def test_sub_folder_env_files_are_not_read(tmp_path, environ):
    project = project_of(tmp_path, {"predictor.py": "", "sub/.env": "A=1\n"})
    apply_environment(project, {})
    assert "A" not in environ


def test_different_predictor_env_values_across_apis_warn(tmp_path, environ):
    project = project_of(tmp_path, {"predictor.py": ""})
    api_envs = {"first": {"MODE": "a", "SAME": "x"}, "second": {"MODE": "b", "SAME": "x"}}
    apply_environment(project, api_envs)
    assert environ["MODE"] == "b"
    assert conflicting_env(api_envs) == ["predictor.env MODE differs between api 'first' and api 'second'; they "
                                         "share one process, so api 'second''s value is used"]


def test_the_environment_is_data_and_leaves_os_environ_alone(tmp_path, environ):
    project = project_of(tmp_path, {"predictor.py": "", ".env": "A=${B}x\n"})
    assert project.environment({"api": {"C": "c"}}, {"B": "b"}) == {"C": "c", "A": "bx"}
    assert "A" not in environ and "C" not in environ


# --- load_project: the project as data ------------------------------------------------------------------------

PREDICTOR = "class PythonPredictor:\n    def __init__(self, config):\n        pass\n\n" \
            "    def predict(self, payload):\n        return payload\n"


def two_api_project(root: Path) -> Path:
    """`gpu` (compute.gpu: 1, predictor.env MODE=a) and `scaled` (autoscaling set, MODE=b), and a .env with a
    reference, a literal and a bad line."""
    return write_tree(root, {
        "cortex.yaml": api_yaml("gpu", predictor_extra="env:\n  MODE: a", api_extra="compute:\n  gpu: 1")
        + api_yaml("scaled", predictor_extra="env:\n  MODE: b", api_extra="autoscaling:\n  max_replicas: 3"),
        "predictor.py": PREDICTOR,
        ".env": "URL=s3://$MODE/${HOME}\nLITERAL='$HOME'\nnot an assignment\n"})


def test_load_project_gives_the_apis_environment_and_warnings_as_data(tmp_path, environ, caplog):
    root = two_api_project(tmp_path)
    with caplog.at_level(logging.DEBUG, logger="engine"):
        loaded = load_project(root, cpu=True)
    assert [api.name for api in loaded.apis] == loaded.every_api == ["gpu", "scaled"]
    assert loaded.config_file == root / "cortex.yaml"
    assert loaded.environment == {"MODE": "b", "URL": "s3://b//home/user", "LITERAL": "$HOME"}
    assert [(str(warning), warning.local) for warning in loaded.warnings] == [
        (f"{root / '.env'} line 3 is not VARIABLE=value and is ignored: not an assignment", False),
        ("api 'gpu': served on the CPU (--cpu), ignoring compute.gpu: 1", False),
        ("api 'scaled': not applied locally (accepted for Cortex compatibility): autoscaling.max_replicas", True),
        ("predictor.env MODE differs between api 'gpu' and api 'scaled'; they share one process, so api "
         "'scaled''s value is used", True)]
    assert caplog.records == [] and added(environ) == {}


def test_load_project_keeps_the_apis_named(tmp_path, environ):
    root = two_api_project(tmp_path)
    loaded = load_project(root, cpu=True, apis=["gpu"])
    assert [api.name for api in loaded.apis] == ["gpu"] and loaded.every_api == ["gpu", "scaled"]
    assert loaded.environment == {"MODE": "a", "URL": "s3://a//home/user", "LITERAL": "$HOME"}
    assert not any("differs" in str(warning) for warning in loaded.warnings)
    assert loaded.environment_for(loaded.apis) == loaded.environment
    with pytest.raises(ConfigError, match="cortex.yaml: no api named nothing"):
        load_project(root, cpu=True, apis=["nothing"])


def test_without_hardware_a_gpu_api_is_checked_as_on_the_cpu_and_kept_as_it_is(tmp_path, environ):
    environ["ENGINE_SIMULATED_GPUS"] = ""  # this machine has no GPU
    root = write_tree(tmp_path, {"cortex.yaml": api_yaml("gpu", api_extra="compute:\n  gpu: 1"),
                                 "predictor.py": PREDICTOR})
    with pytest.raises(ConfigError, match="api 'gpu'.*engine serve --cpu"):
        load_project(root)
    loaded = load_project(root, hardware=False)
    assert loaded.apis[0].compute.gpu == 1 and loaded.warnings == []


def test_create_app_says_the_warnings_of_what_it_loads_only(tmp_path, environ, caplog):
    root = two_api_project(tmp_path)
    with caplog.at_level(logging.WARNING, logger="engine"):
        create_app(project=load_project(root, cpu=True), settings=ServeSettings(cpu=True))
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="engine"):
        create_app(root, settings=ServeSettings(cpu=True))
    assert [record.getMessage() for record in caplog.records] == \
        [str(warning) for warning in load_project(root, cpu=True).warnings]
