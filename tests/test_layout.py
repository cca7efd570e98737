"""The package's import graph: nothing below ``cli`` imports it, and subpackages form no cycle.

Every import counts, including those made inside functions. Reads the source with ``ast``; imports nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "transcoderbench"
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ``transcoderbench`` module ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def unit(module: str) -> str:
    """The unit of layering: ``transcoderbench.X`` for a subpackage X, or the root module itself."""
    parts = module.split(".")
    if len(parts) == 1:
        return module
    top = ROOT / parts[1]
    return ".".join(parts[:2]) if top.is_dir() or (ROOT / f"{parts[1]}.py").is_file() else module


def graph() -> dict[str, set[str]]:
    """Unit -> units it imports (self-imports dropped)."""
    edges: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        src = unit(module_name(path))
        targets = {unit(m) for m in imports_of(path)} - {src, PACKAGE}
        edges.setdefault(src, set()).update(targets)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_nothing_below_cli_imports_it():
    offenders = {
        module_name(path)
        for path in ROOT.rglob("*.py")
        if not module_name(path).startswith(f"{PACKAGE}.cli")
        and module_name(path) != f"{PACKAGE}.__main__"
        and any(m == f"{PACKAGE}.cli" or m.startswith(f"{PACKAGE}.cli.") for m in imports_of(path))
    }
    assert not offenders, f"modules below cli import it: {sorted(offenders)}"


def test_no_import_cycles_between_subpackages():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_importlib_tricks_for_our_own_modules():
    """``importlib`` may load the standard library's modules (the docstring corpus), never ours by name."""
    users = []
    for path in ROOT.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        uses = any(isinstance(n, ast.Attribute) and n.attr == "import_module" for n in ast.walk(tree))
        ours = any(
            isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.startswith(PACKAGE + ".")
            for n in ast.walk(tree)
        )
        if uses and ours:
            users.append(module_name(path))
    assert not users, users


def module_graph() -> dict[str, set[str]]:
    """Module -> modules it imports (names that are not modules, such as imported classes, dropped)."""
    edges: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        targets = set()
        for name in imports_of(path):
            where = ROOT.parent.joinpath(*name.split("."))
            if where.with_suffix(".py").is_file() or (where / "__init__.py").is_file():
                targets.add(name)
        edges[module_name(path)] = targets - {module_name(path)}
    return edges


if __name__ == "__main__":  # a report: cycles between subpackages, then between single modules
    for component in cycles(graph()):
        print("subpackage cycle:", " <-> ".join(component))
    for component in cycles(module_graph()):
        print("module cycle:", " <-> ".join(component))
