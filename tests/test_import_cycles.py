"""No circular imports between the project's modules.

Python tolerates many cycles at run time (a function-level import, a late `from x import y`), so
the check is static: every import statement of every module, at any depth (a lazy import inside a
function is still a dependency), except those under ``if TYPE_CHECKING:``.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("solider", "finetune", "eval", "datatools")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _targets(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """Known modules an import statement depends on (``from a import b`` is ``a.b`` when b is a module)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    found = []
    for name in names:
        while name and name not in known:  # `import a.b.c` where only a.b is ours
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return found


def import_graph(root: Path, packages=PACKAGES) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}, for the modules of ``packages`` under ``root``."""
    files = {_module_name(p, root): p for pkg in packages if (root / pkg).is_dir()
             for p in sorted((root / pkg).rglob("*.py")) if ".venv" not in p.parts}
    known = set(files)
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _type_checking_nodes(tree)
        edges: dict[str, int] = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
                for target in _targets(node, module, path.name == "__init__.py", known):
                    if target != module:
                        edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    members = set(cycle)
    links = [f"{a} -> {b} (line {line})" for a in cycle for b, line in graph[a].items() if b in members]
    return "; ".join(links)


def test_no_circular_imports():
    graph = import_graph(ROOT)
    assert len(graph) > 50, f"found only {len(graph)} modules: the walk is not seeing the packages"
    cycles = find_cycles(graph)
    assert not cycles, "circular imports: " + " | ".join(_describe(c, graph) for c in cycles)


def test_cycle_finder_sees_lazy_relative_and_from_imports(tmp_path):
    pkg = tmp_path / "solider"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import a\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from solider.sub import b\n    return b\n")
    (pkg / "sub" / "b.py").write_text("from .c import thing\n")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    from solider.sub import d\nimport solider.sub.a\nthing = 1\n")
    (pkg / "sub" / "d.py").write_text("from solider.sub.c import thing\n")
    graph = import_graph(tmp_path, packages=("solider",))
    assert graph["solider.sub.a"] == {"solider.sub.b": 2}
    assert graph["solider.sub.b"] == {"solider.sub.c": 1}
    assert "solider.sub.d" not in graph["solider.sub.c"]  # type-checking only
    assert find_cycles(graph) == [["solider.sub.a", "solider.sub.b", "solider.sub.c"]]
