"""Project hygiene: the library dependency direction eval <- solider <- finetune (and the data readers
never import the data-making tools in solider/datatools), module sizes."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"eval/evaluate.py"}  # entry scripts may import anything


def _imports(path: Path) -> set[str]:
    """Dotted names of the absolute imports (``from a.b import c`` gives a.b and a.b.c)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("package, forbidden", [("eval", {"solider", "finetune"}), ("solider", {"finetune"}),
                                                ("solider/data", {"solider.datatools"})])
def test_library_dependency_direction(package, forbidden):
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ENTRY_POINTS:
            continue
        bad = {name for name in _imports(path) for f in forbidden if name == f or name.startswith(f + ".")}
        if bad:
            offenders.append(f"{rel} imports {sorted(bad)}")
    assert not offenders, "library modules must depend one way (eval <- solider <- finetune; " + \
        "solider.data <- solider.datatools): " + "; ".join(offenders)


def test_no_module_is_a_god_file():
    # ~400 lines is the house rule; a little slack for the few dense modules, none far beyond.
    long = [f"{p.relative_to(ROOT)} ({n} lines)" for p in sorted(ROOT.glob("[sfe]*/**/*.py"))
            if (n := len(p.read_text().splitlines())) > 460 and ".venv" not in p.parts]
    assert not long, long
