"""The shape of the package: every import points down, and no module imports itself back.

The installed package's sources are read (not imported): every `import` and `from ... import`,
those inside functions included (a lazy import is an arrow all the same), at module level.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pycni

PACKAGE = Path(pycni.__file__).resolve().parent

# From the bottom up; an import may only point to the same layer or one below (the longest
# prefix decides a module's layer).
LAYERS: list[tuple[str, ...]] = [
    (
        "pycni",
        "pycni.spec",
        "pycni.faults",
        "pycni.gcreport",
        "pycni.logs",
        "pycni.registry",
        "pycni.stdio",
        "pycni.extras",
        "pycni.files",
    ),
    ("pycni.net",),
    ("pycni.skel", "pycni.runtime", "pycni.launcher"),
    ("pycni.plugins", "pycni.calico", "pycni.flannel"),  # plugins and what they are built from
    ("pycni.agent", "pycni.cli", "pycni.calico.calicoctl", "pycni.calico.node"),  # the programs
]
# The wings depend on the core, never the other way: only a wing and plugins import one.
WINGS = ("pycni.calico", "pycni.flannel")


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer(module: str) -> int:
    best = (-1, -1)  # the longest matching prefix decides
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if _within(module, prefix) and len(prefix) > best[1]:
                best = (rank, len(prefix))
    assert best[0] >= 0, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules `name` imports (a `from X import Y` of a submodule Y counts as Y)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    out.add(f"{base}.{alias.name}")
                elif base in known:
                    out.add(base)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back() -> None:
    assert cycles(graph()) == []


def test_cycles_are_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_import_points_down() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in sorted(graph().items())
        for target in sorted(targets)
        if layer(target) > layer(module)
    ]
    assert upward == []


def test_the_core_never_imports_a_wing() -> None:
    plugin_kinds = tuple(f"pycni.plugins.{kind}" for kind in ("main", "ipam", "meta"))
    wrong = [
        f"{module} -> {target}"
        for module, targets in sorted(graph().items())
        for target in sorted(targets)
        if any(_within(target, w) for w in WINGS)
        and not any(_within(module, w) for w in WINGS)
        and not any(_within(module, k) for k in plugin_kinds)
    ]
    assert wrong == []
