"""The in-tree plugins use engine's public plugin API only, as an outside plugin must: `engine`'s names (its
`__all__`) in their packages, and also `engine.testing` in their tests and benchmarks. Checked by reading the sources
(ast), code embedded in strings included (what a test runs with `python -c`), so that a core refactor that keeps the
public API cannot break them. engine's own built-in plugins (engine/default_plugins/) are held to the same API, and
reach the server through engine.served only; the core names no plugin. Test modules, here and in the plugins, never
import each other either."""
from __future__ import annotations

import ast
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import engine
import engine.testing

REPO = Path(__file__).resolve().parents[1]
SKIPPED_PARTS = {"build", "dist", ".venv", "__pycache__", ".pytest_cache"}
TESTING = "engine.testing"
# Folders whose code may use engine.testing (it needs pytest and httpx, which a plugin's package must not).
TEST_FOLDERS = {"tests", "benchmarks"}


def sources(*patterns: str) -> list[Path]:
    """The .py files under the repository matching the glob patterns, build outputs left out."""
    found = {path for pattern in patterns for path in REPO.glob(pattern)
             if not SKIPPED_PARTS & set(path.relative_to(REPO).parts)
             and not any(part.endswith(".egg-info") for part in path.parts)}
    return sorted(found)


PLUGIN_SOURCES = sources("plugins/**/*.py", "examples/*plugin*/**/*.py")
DEFAULT_PLUGIN_SOURCES = sources("engine/default_plugins/*.py")
CORE_SOURCES = [path for path in sources("engine/**/*.py") if path.name != "testing.py"]
TEST_SOURCES = sources("tests/**/*.py", "plugins/*/tests/**/*.py")


def embedded_code(tree: ast.AST) -> Iterator[tuple[int, ast.Module]]:
    """Python code written in the file's string literals (f-strings too, their fields as names), by line."""
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(part.value if isinstance(part, ast.Constant) else "_" for part in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        else:
            continue
        if "engine" not in text or "import" not in text:
            continue
        try:
            yield node.lineno, ast.parse(textwrap.dedent(text))
        except SyntaxError:  # prose, not code
            continue


def imports(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """(line, module, name) for every import in the file: name None for `import module`, else `from module import
    name`; relative imports are left out. Code embedded in strings counts, at the string's line."""
    tree = ast.parse(path.read_text(), str(path))
    trees = [(None, tree), *embedded_code(tree)]
    for string_line, module_tree in trees:
        for node in ast.walk(module_tree):
            line = string_line or getattr(node, "lineno", 0)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield line, alias.name, None
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    yield line, node.module, alias.name


def engine_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every module of engine the file imports: `from engine import testing` is engine.testing."""
    seen = set()
    for line, module, name in imports(path):
        if module == "engine" and name == "testing":
            module = TESTING
        if (module == "engine" or module.startswith("engine.")) and (line, module) not in seen:
            seen.add((line, module))
            yield line, module


def in_test_folder(path: Path) -> bool:
    return bool(TEST_FOLDERS & set(path.relative_to(REPO).parts[:-1]))


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(REPO)}:{line}"


def submodule_problems(path: Path) -> list[str]:
    """What the file imports of engine besides `engine` itself (and engine.testing in tests and benchmarks)."""
    problems = []
    for line, module in engine_modules(path):
        if module == "engine":
            continue
        if module == TESTING:
            if not in_test_folder(path):
                problems.append(f"{where(path, line)}: imports {TESTING} outside tests/ and benchmarks/ (it needs "
                                "pytest and httpx; a plugin's package uses `engine` only)")
        else:
            public = "`engine` (its __all__) or engine.testing" if in_test_folder(path) else "`engine` (its __all__)"
            problems.append(f"{where(path, line)}: imports {module}, which is not engine's public API: take what "
                            f"the plugin needs from {public}")
    return problems


def public_name_problems(path: Path) -> list[str]:
    """Names the file takes from `engine` (by `from engine import` or as `engine.NAME`) that engine.__all__ lacks."""
    problems = []
    for line, module, name in imports(path):
        if module == "engine" and name not in (None, "testing") and name not in engine.__all__:
            problems.append(f"{where(path, line)}: `from engine import {name}`: {name} is not in engine.__all__")
        if module == TESTING and name is not None and not hasattr(engine.testing, name):
            problems.append(f"{where(path, line)}: `from engine.testing import {name}`: engine.testing has no {name}")
    tree = ast.parse(path.read_text(), str(path))
    if any(module == "engine" and name is None for _, module, name in imports(path)):
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "engine" \
                    and node.attr not in engine.__all__ and node.attr != "testing":
                problems.append(f"{where(path, node.lineno)}: engine.{node.attr} is not in engine.__all__")
    return problems


def test_the_plugin_sources_are_found():
    names = {path.relative_to(REPO).as_posix() for path in PLUGIN_SOURCES}
    assert "plugins/onnx_predictor/engine_onnx_predictor/__init__.py" in names
    assert "plugins/onnx_predictor/tests/conftest.py" in names
    assert "plugins/onnx_predictor/benchmarks/latency.py" in names
    assert "examples/msgpack-plugin/engine_msgpack/__init__.py" in names
    assert not [name for name in names if name.startswith(("tests/", "engine/"))]


def test_in_tree_plugins_import_no_engine_submodule_but_engine_testing_in_their_tests():
    problems = [problem for path in PLUGIN_SOURCES for problem in submodule_problems(path)]
    assert not problems, "\n".join(problems)


def test_in_tree_plugins_import_only_public_names_from_engine():
    problems = [problem for path in PLUGIN_SOURCES for problem in public_name_problems(path)]
    assert not problems, "\n".join(problems)


def test_the_built_in_plugins_use_the_public_api_as_any_plugin_does():
    assert {path.name for path in DEFAULT_PLUGIN_SOURCES} >= {"payloads.py", "responses.py", "docs.py", "metrics.py",
                                                             "hypercorn_server.py", "cpu.py"}
    problems = [problem for path in DEFAULT_PLUGIN_SOURCES
                for problem in submodule_problems(path) + public_name_problems(path)]
    assert not problems, "\n".join(problems)


def test_no_plugin_reaches_into_the_app_state():
    problems = [where(path, node.lineno) for path in DEFAULT_PLUGIN_SOURCES + PLUGIN_SOURCES
                for node in ast.walk(ast.parse(path.read_text(), str(path)))
                if isinstance(node, ast.Attribute) and node.attr == "state" and _names_an_app(node.value)]
    assert not problems, f"reach the server through engine.served(request) instead: {problems}"


def _names_an_app(node: ast.expr) -> bool:
    """True for `app`, `request`, `scope` or `X.app`: what an app's state hangs on (not, say, h2's state machine)."""
    return (isinstance(node, ast.Name) and node.id in {"app", "request", "scope"}) or \
        (isinstance(node, ast.Attribute) and node.attr == "app")


def plugin_names() -> set[str]:
    """The names that identify the in-tree plugins: their distributions, and the extras of engine that install them."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    distributions = {tomllib.loads(path.read_text())["project"]["name"]
                     for path in REPO.glob("plugins/*/pyproject.toml")}
    extras = {f"engine[{extra}]" for extra, requirements in pyproject["project"]["optional-dependencies"].items()
              if any(requirement in distributions for requirement in requirements)}
    return distributions | extras


def test_the_core_names_no_plugin():
    names = plugin_names()
    assert {"engine-oip", "engine[uvicorn]", "engine[ray]"} <= names
    problems = []
    for path in CORE_SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                problems += [f"{where(path, node.lineno)}: {name}" for name in names if name in node.value]
    assert not problems, f"the core names plugins (a plugin says what it is; hints come from packaging): {problems}"


def test_every_public_name_resolves():
    missing = [name for name in engine.__all__ if not hasattr(engine, name)]
    assert not missing, f"engine.__all__ names what `engine` does not have: {missing}"
    assert len(set(engine.__all__)) == len(engine.__all__), "engine.__all__ lists a name twice"


def test_no_test_module_imports_another_or_the_core_tests_folder():
    core_modules = {path.stem for path in (REPO / "tests").glob("*.py")}  # on sys.path for the core's suite only
    problems = []
    for path in TEST_SOURCES:
        plugin = path.relative_to(REPO).parts[0] == "plugins"
        for line, module, _ in imports(path):
            top = module.split(".")[0]
            if top.startswith("test_") or top == "conftest":
                problems.append(f"{where(path, line)}: imports the test module {module}: shared helpers go into "
                                "engine.testing (or, for the core's tests only, tests/support.py)")
            elif plugin and top in core_modules:
                problems.append(f"{where(path, line)}: imports {module} from the core's tests/ folder: a plugin's "
                                "suite must run on its own, with engine.testing")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("source, in_tests, expected", [
    ("import engine.plugins", True, "imports engine.plugins, which is not engine's public API"),
    ("from engine.project.config import Api", False,
     "imports engine.project.config, which is not engine's public API"),
    ("from engine.models.layout import FileEntry", True, "imports engine.models.layout"),
    ("from engine.testing import Server", False, "imports engine.testing outside tests/ and benchmarks/"),
    ("from engine import testing", False, "imports engine.testing outside tests/ and benchmarks/"),
    ("run('''\n    from engine.project.validate import validate_project\n''')", True,
     "imports engine.project.validate"),
    ("run(f'''\n    from engine.plugins import {name}\n''')", True, "imports engine.plugins"),
    ("from engine import plugins", True, "`from engine import plugins`: plugins is not in engine.__all__"),
    ("import engine\nengine.plugins.make_plugin_manager()", False, "engine.plugins is not in engine.__all__"),
    ("from engine.testing import no_such_helper", True, "engine.testing has no no_such_helper"),
])
def test_the_check_finds_each_way_of_reaching_into_the_core(tmp_path, monkeypatch, source, in_tests, expected):
    monkeypatch.setitem(globals(), "REPO", tmp_path)  # where() names files relative to it
    path = tmp_path / "plugin" / ("tests" if in_tests else "engine_plugin") / "module.py"
    path.parent.mkdir(parents=True)
    path.write_text(source + "\n")
    found = submodule_problems(path) + public_name_problems(path)
    assert any(expected in problem for problem in found), found
    assert all(problem.startswith("plugin/") for problem in found), found


@pytest.mark.parametrize("source", [
    "from engine import Device, ModelRepository, hookimpl\nimport engine\nengine.PredictorType",
    "from engine_onnx_predictor import ONNX\nimport numpy",
    "text = 'import engine.plugins is what a plugin must never write'",  # prose in a string, not code
])
def test_the_check_accepts_the_public_api(tmp_path, monkeypatch, source):
    monkeypatch.setitem(globals(), "REPO", tmp_path)  # where() names files relative to it
    path = tmp_path / "plugin" / "engine_plugin" / "module.py"
    path.parent.mkdir(parents=True)
    path.write_text(source + "\n")
    assert submodule_problems(path) + public_name_problems(path) == []
