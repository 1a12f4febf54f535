"""A small static scan for unsafe code patterns, used by tests/reliability/test_security.py.

Python files are parsed with :mod:`ast` and only *calls* are judged, after resolving the names the
module imported (``import pickle as p`` makes ``p.loads`` ``pickle.loads``; ``from os import
system`` makes ``system`` ``os.system``). Comments never reach the AST and a string is a constant,
not a call, so neither can trigger a finding; a method that merely shares a name (``model.eval()``)
is not the builtin. What the scan cannot see: code built at run time (``getattr(builtins, name)``),
which is why ``getattr`` on the dangerous modules is flagged too.

Shell scripts are scanned line by line with comments removed, for ``eval`` and for the user's
arguments (``$*`` / ``$@``) spliced into a command string that a second shell parses again.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.detail}"


# Calls that run code from data (or a string) or unpickle arbitrary objects: always refused.
FORBIDDEN_CALLS = {
    "eval": "eval of a string", "exec": "exec of a string", "compile": "compiling a string to code",
    "__import__": "import by a computed name", "os.system": "a shell command", "os.popen": "a shell command",
    "subprocess.getoutput": "a shell command", "subprocess.getstatusoutput": "a shell command",
    "pickle.load": "unpickling (runs code)", "pickle.loads": "unpickling (runs code)",
    "pickle.Unpickler": "unpickling (runs code)", "marshal.loads": "unmarshalling code objects",
    "shelve.open": "unpickling (runs code)", "dill.load": "unpickling", "dill.loads": "unpickling",
    "joblib.load": "unpickling", "yaml.unsafe_load": "YAML that builds objects",
    "yaml.full_load": "YAML that builds objects", "torch.jit.load": "TorchScript (code) from a file",
    "pandas.read_pickle": "unpickling",
}
DANGEROUS_MODULES = ("builtins", "os", "pickle", "subprocess", "marshal", "yaml", "torch")
SAFE_YAML_LOADERS = ("SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader")
SUBPROCESS_CALLS = ("subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output",
                    "subprocess.Popen")


def _import_map(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted name it refers to, from the module's import statements."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    names[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST, imports: dict[str, str]) -> str | None:
    """``a.b.c`` of a Name/Attribute chain, its first part resolved through the imports."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(imports.get(node.id, node.id))
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _judge(call: ast.Call, name: str | None, imports: dict[str, str]) -> tuple[str, str] | None:
    """(rule, detail) when ``call`` is unsafe, else None."""
    if name in FORBIDDEN_CALLS:
        return "forbidden-call", f"{name}(): {FORBIDDEN_CALLS[name]}"
    weights_only = _keyword(call, "weights_only")
    if weights_only is not None and not _is_const(weights_only, True):
        return "weights-only", f"{name}(weights_only=...) must be the constant True"
    if name in ("torch.load", "torch.serialization.load") and weights_only is None:
        return "weights-only", f"{name}() without weights_only=True"
    shell = _keyword(call, "shell")
    if shell is not None and not _is_const(shell, False):
        return "shell", f"{name}(shell=...): a command string parsed by a shell"
    if name in ("yaml.load", "yaml.load_all"):
        loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
        loader_name = _dotted(loader, imports) if loader is not None else None
        if loader_name is None or not loader_name.endswith(SAFE_YAML_LOADERS):
            return "yaml", f"{name}() without a safe Loader (use yaml.safe_load)"
    if name in ("numpy.load", "numpy.lib.npyio.load"):
        allow = _keyword(call, "allow_pickle")
        if allow is not None and not _is_const(allow, False):
            return "pickle", f"{name}(allow_pickle=...): unpickling (runs code)"
    if name == "getattr" and call.args:
        target = _dotted(call.args[0], imports)
        if target in DANGEROUS_MODULES and not isinstance(call.args[1] if len(call.args) > 1 else None,
                                                          ast.Constant):
            return "dynamic-lookup", f"getattr({target}, <computed name>) hides which function runs"
    if name in SUBPROCESS_CALLS and call.args and isinstance(call.args[0], ast.List):
        items = call.args[0].elts
        for first, second in zip(items, items[1:]):
            if _is_const_str(first, "-c") and not isinstance(second, ast.Constant):
                return "python-c", f"{name}([..., '-c', <computed code>]): code built at run time"
    return None


def _is_const_str(node: ast.expr, value: str) -> bool:
    return isinstance(node, ast.Constant) and node.value == value


def scan_python(source: str, path: str) -> list[Finding]:
    """Findings of one Python source file."""
    tree = ast.parse(source, filename=path)
    imports = _import_map(tree)
    findings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            verdict = _judge(node, _dotted(node.func, imports), imports)
            if verdict is not None:
                findings.append(Finding(path, node.lineno, *verdict))
    return sorted(findings, key=lambda f: (f.line, f.rule))


_SHELL_EVAL = re.compile(r"(^|[;&|({`\s])eval(\s|$)")
_SPLICED_ARGS = re.compile(r"""\b(bash|sh|zsh)\s+-c\s+"[^"]*\$(\*|@|\{\*\}|\{@\})""")


def _strip_shell_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a ``#`` inside quotes or ``${#x}`` is kept)."""
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote == ch else ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def scan_shell(text: str, path: str) -> list[Finding]:
    """Findings of one shell script (continuation lines are joined first)."""
    findings = []
    joined, start = "", 1
    for number, raw in enumerate(text.splitlines(), 1):
        if not joined:
            start = number
        line = _strip_shell_comment(raw)
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        command, joined = joined + line, ""
        if _SHELL_EVAL.search(command):
            findings.append(Finding(path, start, "shell-eval", "eval re-parses its arguments as code"))
        if _SPLICED_ARGS.search(command):
            findings.append(Finding(path, start, "shell-splice", "the script's arguments are spliced into "
                                    "a command string that a second shell parses again (pass them as "
                                    "arguments: bash -c '... \"$@\"' _ \"$@\")"))
    return findings


def scan_tree(root: Path, folders: tuple[str, ...]) -> tuple[list[Finding], int]:
    """(findings, number of files scanned) for the ``.py`` and ``.sh`` files below ``folders``."""
    findings, count = [], 0
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            if path.suffix not in (".py", ".sh") or not path.is_file():
                continue
            count += 1
            rel = str(path.relative_to(root))
            text = path.read_text()
            findings += scan_python(text, rel) if path.suffix == ".py" else scan_shell(text, rel)
    return findings, count
