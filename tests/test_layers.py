"""The layers of engine's tree: a module imports (at run time) only from its own layer or those below it."""
from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"

# Lowest first. A module not named here belongs to the layer of its package (serving, project, models), or to the
# top when it sits in engine/ itself.
LAYERS = [
    ("support", {"errors", "types", "units", "tracebacks", "logformat", "tracing", "tempdirs", "jsoncodec", "memory",
                 "processes", "asgi", "hardware", "routes", "install_hints"}),
    ("plugin face", {"settings", "plugin_api", "hookspecs", "plugins", "plugin_routes"}),
    ("project", {"project"}),
    ("models", {"models"}),
    ("serving", {"serving"}),
    ("jobs", {"jobs"}),
    ("top", {"app", "server", "cli", "openapi", "testing", "default_plugins", "reload", "predict_once", "__init__",
             "__main__", "models_client"}),
]


def layer_of(module: str) -> int:
    """The layer of `engine.a.b` (by `a`)."""
    first = module.split(".")[1] if "." in module else "__init__"
    for index, (_, members) in enumerate(LAYERS):
        if first in members:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def runtime_imports(path: Path) -> set[str]:
    """The engine modules a file imports outside `if TYPE_CHECKING:` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", "") == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                if child.module == "engine":
                    found.update(f"engine.{alias.name}" for alias in child.names
                                 if (ENGINE / alias.name).exists() or (ENGINE / f"{alias.name}.py").exists())
                elif child.module.startswith("engine."):
                    found.add(child.module)
            elif isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names if alias.name.startswith("engine."))
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_from_a_higher_layer():
    wrong = []
    for path in sorted(ENGINE.rglob("*.py")):
        module = module_name(path)
        here = layer_of(module)
        for imported in runtime_imports(path):
            if layer_of(imported) > here:
                wrong.append(f"{module} ({LAYERS[here][0]}) imports {imported} ({LAYERS[layer_of(imported)][0]})")
    assert not wrong, "\n".join(wrong)


def test_the_models_package_has_no_import_loop():
    for path in sorted((ENGINE / "models").glob("*.py")):
        for imported in runtime_imports(path) | typing_imports(path):
            if imported.startswith("engine.models."):
                other = ENGINE.parent / (imported.replace(".", "/") + ".py")
                assert module_name(path) not in runtime_imports(other) | typing_imports(other), \
                    f"{module_name(path)} and {imported} import each other"


def typing_imports(path: Path) -> set[str]:
    """The engine modules a file imports only for type checking."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for child in ast.walk(node):
                if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("engine."):
                    found.add(child.module)
    return found
