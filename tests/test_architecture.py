"""The package's imports point down the layers of docs/architecture.md, and never in a circle.

Every module under xprune/ is parsed (``ast``), and every ``import`` and
``from ... import`` in it counts, at module level and inside functions alike:
an import moved into a function body still makes the dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xprune"

# The layers, lowest first (the same table as docs/architecture.md). A module
# may import from its own layer and from the layers below it, never from above.
# Keys are the first component below `xprune` ("" is the package's __init__).
LAYERS = [
    ("foundation", {"_validation", "_io", "_state", "_version", "stats"}),
    ("data and models", {"_batches", "data", "models", "textdata", "speechdata"}),
    ("pruning and attribution", {"pruning", "profiling", "attribution",
                                 "checkpoint"}),
    ("metrics", {"metrics"}),
    ("report", {"report"}),
    ("analysis", {"config", "_cache", "analysis", "compare", "_study", ""}),
    ("reproductions", {"reproductions"}),
    ("cli", {"cli"}),
]



def _module_name(path: Path) -> str:
    parts = ["xprune", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name of the module a ``from`` import reads from."""
    if node.level == 0:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, source: str | None = None) -> set[str]:
    """The xprune modules that ``module`` imports anywhere in its source."""
    tree = ast.parse(MODULES[module].read_text() if source is None else source)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            # `from . import metrics` imports the module xprune.metrics
            names = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # `import xprune.a.b.c` where c is a name
                name = name.rpartition(".")[0]
            if name.split(".")[0] == "xprune" and name != module:
                found.add(name)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _layer(module: str) -> int:
    key = module.split(".")[1] if "." in module else ""
    for index, (_, members) in enumerate(LAYERS):
        if key in members:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer(module)


def test_foundation_imports_nothing_of_xprune():
    foundation = [m for m in MODULES if _layer(m) == 0]
    assert {m: GRAPH[m] for m in foundation if GRAPH[m]} == {}


def test_no_import_from_a_higher_layer():
    upward = sorted(f"{a} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]})"
                    for a, targets in GRAPH.items() for b in targets
                    if _layer(b) > _layer(a))
    assert upward == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert _cycles(GRAPH) == []


def test_the_checks_see_late_imports_and_cycles():
    """The walker counts an import inside a function, and the cycle finder finds a cycle."""
    late = "def f():\n    if True:\n        from ..config import AnalysisConfig\n"
    assert _imports("xprune.metrics.agreement", late) == {"xprune.config"}
    assert _imports("xprune.attribution", "from . import _methods\nimport xprune.cli\n") \
        == {"xprune.attribution._methods", "xprune.cli"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


