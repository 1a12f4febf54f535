"""Folder walking (issue 13, class 1): each real folder once, loops and unreadable folders reported."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from finetune.infer import list_inputs
from solider.data.unlabeled import index_unlabeled_images
from solider.data.walk import walk_files


def _tree(tmp_path: Path) -> Path:
    """4 real images in a/, a/b/ and c/, plus `self -> .`, a/loop -> .. and a/b/up -> ../.. links."""
    root = tmp_path / "crops"
    for rel in ("a/1.jpg", "a/b/2.jpg", "c/3.png", "4.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 16), (100, 50, 25)).save(root / rel)
    os.symlink(".", root / "self")
    os.symlink("..", root / "a" / "loop")
    os.symlink("../..", root / "a" / "b" / "up")
    return root


def test_links_back_into_the_tree_are_skipped_and_reported(tmp_path, caplog):
    root = _tree(tmp_path)
    caplog.set_level(logging.WARNING)
    result = walk_files(root, lambda n: n.endswith((".jpg", ".png")))
    found = sorted(os.path.relpath(p, root) for p in result.files)
    assert found == ["4.jpg", "a/1.jpg", "a/b/2.jpg", "c/3.png"]
    assert sorted(os.path.relpath(p.split(" ")[0], root) for p in result.repeated_links) == \
        ["a/b/up", "a/loop", "self"]
    assert "skipped 3 folder links below" in caplog.text and "self" in caplog.text


def test_pretraining_index_and_infer_listing_see_each_image_once(tmp_path, caplog):
    root = _tree(tmp_path)
    caplog.set_level(logging.WARNING)
    index = index_unlabeled_images(root, read_headers=True)
    assert len(index) == 4
    assert len(list_inputs(root)) == 4
    assert caplog.text.count("skipped 3 folder links") == 2


def test_an_unreadable_folder_is_reported(tmp_path, caplog, monkeypatch):
    root = _tree(tmp_path)
    real_scandir = os.scandir
    blocked = str(root / "c")

    def scandir(path="."):
        if os.fspath(path) == blocked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    caplog.set_level(logging.WARNING)
    index = index_unlabeled_images(root, read_headers=True)
    assert sorted(os.path.basename(p) for p in index.paths) == ["1.jpg", "2.jpg", "4.jpg"]
    expected = f"skipped 1 folders below {root} that cannot be listed: {blocked} (Permission denied)"
    assert expected in caplog.text


def test_the_top_folder_unreadable_is_an_error_naming_it(tmp_path, monkeypatch):
    root = _tree(tmp_path)
    def refuse(path="."):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(PermissionError, match=f"cannot list the folder {root}"):
        walk_files(root)


def _nobody():
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


@pytest.mark.skipif(os.geteuid() != 0 or _nobody() is None, reason="needs root to drop to the user nobody")
def test_a_chmod_000_folder_as_an_unprivileged_user():
    """The real permission check: root reads any folder, so the walk drops to `nobody` (after its
    imports: nobody may not be able to read the interpreter's files) in a folder nobody can reach."""
    base = Path(tempfile.mkdtemp(prefix="walk_nobody_"))
    try:
        base.chmod(0o755)
        root = _tree(base)
        for p in [root, *root.rglob("*")]:
            if not p.is_symlink():
                p.chmod(0o755 if p.is_dir() else 0o644)
        (root / "a" / "b").chmod(0o000)
        user = _nobody()
        code = ("import os, sys; from solider.data.walk import walk_files; "
                f"os.setgid({user.pw_gid}); os.setuid({user.pw_uid}); "
                "r = walk_files(sys.argv[1], report=False); "
                "print(len(r.files), len(r.unreadable), r.unreadable[0])")
        out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True,
                             timeout=60)
        (root / "a" / "b").chmod(0o755)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert out.returncode == 0, out.stderr
    count, unreadable, first = out.stdout.split(" ", 2)
    assert (count, unreadable) == ("3", "1") and first.startswith(str(root / "a" / "b"))
