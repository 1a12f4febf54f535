"""Outputs of infer.py / export.py that belong together, checked before the work (issue 13, class 6)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import finetune.infer as infer
from finetune.export import main as export_main
from finetune.infer import main, read_embeddings, write_embeddings
from solider.utils.output_dir import OutputPathError

BAD_NAME = b"caf\xe9_\xff.jpg"  # Latin-1 bytes: not UTF-8


@pytest.fixture
def odd_names(tiny_market, tmp_path):
    """Three crops, one of them under a file name that is not UTF-8."""
    root = tmp_path / "crops"
    root.mkdir()
    sources = sorted((tiny_market / "query").glob("*.jpg"))[:3]
    shutil.copy(sources[0], root / "a.jpg")
    shutil.copy(sources[1], os.path.join(os.fsencode(root), BAD_NAME))
    shutil.copy(sources[2], root / "z.jpg")
    return root


@pytest.mark.parametrize("suffix", [".npy", ".json"])
def test_file_names_of_any_bytes_survive_the_round_trip(tiny_resnet_run, odd_names, tmp_path, suffix):
    ckpt = tiny_resnet_run[0] / "checkpoints" / "best.pt"
    out = tmp_path / f"e{suffix}"
    result = main(["--model", str(ckpt), "--images", str(odd_names), "--out", str(out), "--num-workers", "0"])
    assert result["count"] == 3
    paths, feats = read_embeddings(out)
    on_disk = sorted(os.path.join(os.fsencode(odd_names), n) for n in os.listdir(os.fsencode(odd_names)))
    assert sorted(os.fsencode(p) for p in paths) == on_disk  # the exact bytes of every name
    assert feats.shape[0] == 3 and all(os.path.isfile(os.fsencode(p)) for p in paths)


def test_a_pair_interrupted_between_its_renames_is_refused(tmp_path, monkeypatch):
    feats = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    out = tmp_path / "e.npy"
    write_embeddings(out, ["/a.jpg", "/b.jpg", "/c.jpg"], feats)
    assert read_embeddings(out)[0] == ["/a.jpg", "/b.jpg", "/c.jpg"]
    real, calls = os.replace, []

    def dies_on_the_second(src, dst):  # the .paths.txt gets its name, the .npy does not
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(infer.os, "replace", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        write_embeddings(out, ["/x.jpg", "/y.jpg", "/z.jpg"], feats * 2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy", "e.paths.txt"]  # no temporary left
    with pytest.raises(ValueError, match=r"e.npy and .*e.paths.txt were not written together"):
        read_embeddings(out)  # same row count, so a count check alone would have accepted it


def test_a_pair_from_two_runs_is_refused(tmp_path):
    feats = np.ones((2, 4), np.float32)
    write_embeddings(tmp_path / "a.npy", ["/1.jpg", "/2.jpg"], feats)
    write_embeddings(tmp_path / "b.npy", ["/3.jpg", "/4.jpg"], feats * 3)
    shutil.copy(tmp_path / "b.paths.txt", tmp_path / "a.paths.txt")
    with pytest.raises(ValueError, match="not written together"):
        read_embeddings(tmp_path / "a.npy")


def test_bad_output_paths_stop_infer_before_any_work(tiny_resnet_run, odd_names, tmp_path, monkeypatch):
    ckpt = tiny_resnet_run[0] / "checkpoints" / "best.pt"
    monkeypatch.setattr(infer, "open_model", lambda *a, **k: pytest.fail("the model was opened"))
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(OutputPathError, match=r"--out .*dir.json: is a folder"):
        main(["--model", str(ckpt), "--images", str(odd_names), "--out", str(tmp_path / "dir.json")])
    (tmp_path / "x.paths.txt").mkdir()  # the sidecar's name is a folder
    with pytest.raises(OutputPathError, match=r"x.paths.txt: is a folder"):
        main(["--model", str(ckpt), "--images", str(odd_names), "--out", str(tmp_path / "x.npy")])
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputPathError, match=r"--out .*file/e.json: cannot create its folder"):
        main(["--model", str(ckpt), "--images", str(odd_names), "--out", str(tmp_path / "file" / "e.json")])


def test_bad_output_paths_stop_export_before_any_work(tiny_resnet_run, tmp_path, monkeypatch):
    import finetune.export as export

    monkeypatch.setattr(export, "export", lambda *a, **k: pytest.fail("the export ran"))
    ckpt = tiny_resnet_run[0] / "checkpoints" / "best.pt"
    (tmp_path / "m.json").mkdir()
    with pytest.raises(OutputPathError, match=r"--out .*m.json: is a folder"):
        export_main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")])
