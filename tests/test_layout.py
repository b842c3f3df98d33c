"""The house's rooms import each other only downwards, and never in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "chatd"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}


def _target(module: str, level: int, name: str | None, current: str, is_pkg: bool) -> str:
    if level:
        base = current.split(".") if is_pkg else current.split(".")[:-1]
        base = base[: len(base) - (level - 1)]
        module = ".".join([*base, module] if module else base)
    if name and f"{module}.{name}" in MODULES:
        return f"{module}.{name}"  # `from chatd.store import queries` imports a module
    return module


def imports(module: str, *, top_level_only: bool) -> set[str]:
    """Return the chatd modules a module imports (at its top level, or anywhere)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:
        # `if TYPE_CHECKING:` blocks count: a cycle there is still a knot to untie.
        nodes = [*nodes, *(n for s in tree.body if isinstance(s, ast.If) for n in s.body)]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            is_pkg = path.name == "__init__.py"
            for alias in node.names:
                found.add(_target(node.module or "", node.level, alias.name, module, is_pkg))
    return {m for m in found if m == "chatd" or m.startswith("chatd.")} - {module}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_module_of_chatd_imports_itself_in_a_circle() -> None:
    graph = {m: imports(m, top_level_only=True) & MODULES.keys() for m in MODULES}
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        path.append(module)
        for dep in sorted(graph[module]):
            visit(dep)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


@pytest.mark.parametrize(
    ("room", "never"),
    [
        ("store", {"engine", "api", "cli"}),
        ("providers", {"engine", "api", "cli", "store"}),
        ("tools", {"engine", "api", "cli", "store"}),
        ("engine", {"api", "cli", "store"}),
        ("types", {"engine", "api", "cli", "store", "providers", "tools"}),
        ("errors", {"engine", "api", "cli", "store", "providers", "tools"}),
    ],
)
def test_lower_rooms_never_import_higher_ones(room: str, never: set[str]) -> None:
    offenders = {
        f"{module} imports {dep}"
        for module in MODULES
        if _room(module) == room
        for dep in imports(module, top_level_only=False)
        if _room(dep) in never
    }
    assert not offenders


def test_only_the_api_and_the_server_know_the_web_framework() -> None:
    allowed = {"api", "server", "connections", "testing"}
    offenders = set()
    for module, path in MODULES.items():
        if _room(module) in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders.update(
                f"{module} imports {n}"
                for n in names
                if n.split(".")[0] in {"fastapi", "starlette"}
            )
    assert not offenders
