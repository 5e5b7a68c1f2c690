"""The package's shape: no import cycles among cnnbench's modules, counting the imports
made inside functions (which would only hide a cycle, not remove it)."""

from __future__ import annotations

import ast
from pathlib import Path

import cnnbench

PACKAGE = Path(cnnbench.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The cnnbench modules `path` imports anywhere in its code (top level or in functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            origin = ".".join([*base, *(node.module.split(".") if node.module else [])])
            # `from . import x` may name a module (x) or a name of the package
            targets = [f"{origin}.{a.name}" for a in node.names] + [origin]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)  # a package's own __init__ is not a cycle of its modules
    return found


def test_cnnbench_has_no_import_cycles():
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: imports_of(path, set(paths)) for name, path in paths.items()}
    cycles, done = [], set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            cycles.append(" -> ".join([*stack[stack.index(name) :], name]))
            return
        if name in done:
            return
        for nxt in sorted(graph[name]):
            visit(nxt, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert len(graph) > 40 and graph["cnnbench.train"] >= {"cnnbench.checkpoint", "cnnbench.engine"}
    assert cycles == []
