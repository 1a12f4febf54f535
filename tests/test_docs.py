"""The docs are true: every relative link in README.md and docs/*.md resolves inside the repository,
every docs/*.md path named in docs, code or configs exists, and every command README lists prints
its --help."""

import contextlib
import io
import re
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _relative_links(page: Path) -> list[str]:
    links = [m.group(1) for m in LINK.finditer(page.read_text())]
    return [link for link in links if not re.match(r"^[a-z]+:", link) and not link.startswith("#")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves_inside_the_repository(page):
    broken = []
    assert page.name != "README.md" or len(_relative_links(page)) >= 5  # the parser finds README's links
    for link in _relative_links(page):
        target = (page.parent / link.split("#", 1)[0]).resolve()
        if not target.exists() or not target.is_relative_to(ROOT):
            broken.append(link)
    assert not broken, f"{page.name}: links that do not resolve inside the repository: {broken}"


def test_every_docs_page_named_anywhere_exists():
    # docs/reference/*.md once stood in docstrings and configs; a reader of the repository has no such page
    named = re.compile(r"\bdocs/[\w./-]+\.(?:md|txt)")
    missing = set()
    files = [*PAGES, *ROOT.glob("*.toml"), *ROOT.glob("configs/**/*.yaml")]
    for folder in ("solider", "finetune", "eval", "launch", "benchmarks"):
        files += (ROOT / folder).rglob("*.py")
    for path in files:
        for name in named.findall(path.read_text()):
            if not (ROOT / name).is_file():
                missing.add(f"{path.relative_to(ROOT)}: {name}")
    assert not missing, sorted(missing)


def _readme_commands() -> list[list[str]]:
    """The entry points README's code blocks run: ``python X.py`` / ``accelerate launch ... X.py`` /
    ``python -m module``."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    scripts, modules = set(), set()
    for block in blocks:
        scripts.update(re.findall(r"(?:^|\s)((?:solider|finetune|eval|launch)/[\w/]+\.py)\b", block))
        modules.update(re.findall(r"python -m ([\w.]+)", block))
    modules.discard("pytest")
    return [["script", s] for s in sorted(scripts)] + [["module", m] for m in sorted(modules)]


def test_readme_lists_the_entry_points():
    names = {name for _, name in _readme_commands()}
    assert {"solider/pretrain.py", "finetune/run.py", "eval/evaluate.py", "finetune/export.py",
            "finetune/infer.py", "launch/study.py", "solider.part_agreement"} <= names, names


@pytest.mark.parametrize("kind, name", _readme_commands(), ids=lambda v: str(v))
def test_every_readme_command_prints_its_help(kind, name, monkeypatch):
    # in this process (as `python X.py --help` runs it, without a new interpreter per command)
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    monkeypatch.syspath_prepend(str(ROOT))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        if kind == "script":
            runpy.run_path(str(ROOT / name), run_name="__main__")
        else:
            monkeypatch.delitem(sys.modules, name, raising=False)  # run fresh, as `python -m` does
            runpy.run_module(name, run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 0 and "usage:" in out.getvalue(), out.getvalue()[-500:]
