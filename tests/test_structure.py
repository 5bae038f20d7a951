"""The shape of the house: imports go one way, and only functional imports the kernels.

The import graph of the package is built from the source with ``ast``, imports inside
functions included (a lazy import is still a dependency). Edges to a package's
``__init__`` are left out: it only re-exports, and modules take the version from it.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cnncli"
COMPILED = {"cnncli._conv", "cnncli._pool", "cnncli._linear", "cnncli._parallel",
            "cnncli._elementwise"}


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph():
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    known = set(modules) | COMPILED
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {target for target in targets
                       if target in known and target not in packages and target != name}
    return graph


def find_cycle(graph):
    state = {}

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target, path + [target])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "cnncli.jobs.trainer" in graph and "cnncli.loading" in graph
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_only_functional_imports_the_compiled_kernels():
    graph = import_graph()
    importers = sorted(name for name, targets in graph.items() if targets & COMPILED)
    assert importers == ["cnncli.functional"]


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
