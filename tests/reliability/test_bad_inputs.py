"""Bad inputs through the training entry points: a pretraining and a fine-tuning run over data with
broken and unusual files (and a keypoint file with bad lines) must finish, report every skip and
replacement with a count and the paths, and lose no good image; bad configs and bad dataset layouts
stop the entry points with errors that name the key, value, folder or file.

The unit-level checks of each reader (messages, counts) live next to the readers
(tests/solider/data/, tests/solider/test_config.py); docs/RELIABILITY.md lists them all.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import solider.data.datasets as datasets_module
from finetune.run import main as finetune_main
from solider.config import ConfigError
from solider.data.images import ImageDecodeError
from solider.pretrain import main as pretrain_main
from tests.reliability.runs import finetune_args, pretrain_args

# ----------------------------------------------------------------------------- the bad files


def _jpeg(width: int = 32, height: int = 64, mode: str = "RGB", seed: int = 0, **kw) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _corrupt_header() -> bytes:
    data = bytearray(_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof : sof + 10] = b"\x00" * 10  # frame header (size, components) destroyed
    return bytes(data)


def _corrupt_data() -> bytes:
    data = bytearray(_jpeg())
    sos = data.index(b"\xff\xda")
    data[sos + 20 : sos + 220] = b"\xff\x9e" * 100  # entropy-coded data full of invalid markers
    return bytes(data)


def _palette_with_transparency() -> bytes:
    img = Image.new("P", (16, 32), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.paste(1, (0, 16, 16, 32))
    return _png(img, transparency=0)


def _png_with_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims width x height."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    pixels = zlib.compress(b"\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _bad_files() -> dict[str, tuple[str, bytes]]:
    """name -> (extension, bytes) of files that cannot be decoded. ``H``: the header is unreadable
    too (pretraining's indexing skips them); ``L``: the header reads, decoding fails at load time."""
    good_png = _png(Image.new("RGB", (32, 64), (10, 20, 30)))
    return {
        "H_corrupt_header": (".jpg", _corrupt_header()),
        "H_empty": (".jpg", b""),
        "H_text_named_jpg": (".jpg", b"this is a text file with an image extension\n"),
        "H_decompression_bomb": (".png", _png_with_size(20000, 10000)),  # 200 MP: PIL refuses it
        "L_corrupt_data": (".jpg", _corrupt_data()),
        "L_truncated_jpeg": (".jpg", _jpeg()[: len(_jpeg()) // 2]),
        "L_truncated_png": (".png", good_png[: len(good_png) // 2]),
        "H_header_only_jpeg": (".jpg", _jpeg()[: _jpeg().index(b"\xff\xda") + 12]),
    }


def _unusual_files() -> dict[str, tuple[str, bytes]]:
    """name -> (extension, bytes) of valid images in unusual formats: all must be decoded and used."""
    huge = io.BytesIO()
    Image.new("L", (10000, 10000), 128).save(huge, "JPEG", quality=50)  # uniform: a small file
    return {
        "cmyk_jpeg": (".jpg", _jpeg(mode="CMYK", seed=1)),
        "gray_jpeg": (".jpg", _jpeg(mode="L", seed=2)),
        "png_16bit": (".png", _png(Image.fromarray(np.full((64, 32), 40000, dtype=np.uint16)))),
        "palette_transparent": (".png", _palette_with_transparency()),
        "rgba_png": (".png", _png(Image.new("RGBA", (32, 64), (200, 10, 10, 128)))),
        "bilevel_png": (".png", _png(Image.new("1", (32, 64), 1))),
        "one_pixel": (".jpg", _jpeg(1, 1, seed=3)),
        "huge_10000x10000": (".jpg", huge.getvalue()),
    }


def add_bad_and_unusual_files(root: Path) -> dict[str, Path]:
    """Give each training identity of the Market-format ``root`` one bad and one unusual image (in
    turn), named like its other images; returns name -> path."""
    folder = root / "bounding_box_train"
    pids = sorted({p.name[:4] for p in folder.iterdir()})
    files = {**_bad_files(), **_unusual_files()}
    added = {}
    ordered = sorted(files.items(), key=lambda item: item[0].startswith(("H_", "L_")))  # unusual ones first
    for i, (name, (ext, data)) in enumerate(ordered):
        pid = pids[i % len(pids)]
        path = folder / f"{pid}_c1s9_{900000 + i:06d}_00{ext}"
        path.write_bytes(data)
        added[name] = path
    return added


def add_bad_keypoint_lines(root: Path) -> None:
    """Keypoint lines for images that do not exist, with wrong joint counts, NaN, and not JSON."""
    good = [[10.0, 20.0, 2.0]] * 17
    some_image = sorted((root / "bounding_box_train").iterdir())[0].name
    lines = [{"image": "bounding_box_train/9999_c1s1_000001_00.jpg", "keypoints": good},
             {"image": "bounding_box_train/9998_c1s1_000001_00.jpg", "keypoints": good},
             {"image": f"bounding_box_train/{some_image}", "keypoints": good[:16]},
             {"image": f"bounding_box_train/{some_image}", "format": "ora16", "keypoints": good}]
    nan = [[float("nan"), 20.0, 2.0]] + good[1:]
    with open(root / "keypoints.jsonl", "a") as f:
        f.writelines(json.dumps(x) + "\n" for x in lines)
        f.write(json.dumps({"image": f"bounding_box_train/{some_image}", "keypoints": nan}) + "\n")
        f.write("{this is not json\n")


@pytest.fixture(scope="module")
def bad_pretrain_market(pretrain_market, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("bad_pretrain") / "market"
    shutil.copytree(pretrain_market, root)
    added = add_bad_and_unusual_files(root)
    add_bad_keypoint_lines(root)
    return root, added


@pytest.fixture(scope="module")
def bad_finetune_market(finetune_market, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("bad_finetune") / "market"
    shutil.copytree(finetune_market, root)
    added = add_bad_and_unusual_files(root)
    assert len({p.name[:4] for p in added.values()}) == 8  # one bad and one unusual image per identity
    return root, added


@pytest.fixture
def loaded_paths(monkeypatch) -> set[str]:
    """Every image path the datasets decode successfully during the test."""
    seen: set[str] = set()
    real = datasets_module.load_image_tensor

    def recording(path, *args, **kwargs):
        out = real(path, *args, **kwargs)
        seen.add(str(path))
        return out

    monkeypatch.setattr(datasets_module, "load_image_tensor", recording)
    return seen


def _report(what: str, good: list[Path], bad: dict[str, Path], seen: set[str]) -> dict:
    lost = [p for p in good if str(p) not in seen]
    figures = {"run": what, "bad_files": len(bad), "good_images": len(good),
               "good_images_used": len(good) - len(lost), "bytes_lost": sum(p.stat().st_size for p in lost)}
    print(json.dumps(figures))
    return figures


# ----------------------------------------------------------------------------- through the entry points


def test_pretraining_over_bad_files_finishes_reports_them_and_loses_no_image(bad_pretrain_market,
                                                                             loaded_paths, tmp_path, caplog):
    root, added = bad_pretrain_market
    bad = {k: v for k, v in added.items() if k.startswith(("H_", "L_"))}
    good = [p for p in (root / "bounding_box_train").iterdir() if p not in bad.values()]
    # squares (the 1x1 and the 10000x10000 image) pass the aspect filter; 27 crops after indexing
    # (16 + 8 unusual + 3 that fail at load time): 9 steps of 3 see every index once
    with caplog.at_level(logging.INFO):
        result = pretrain_main(pretrain_args(root, tmp_path / "run", "data.max_aspect=1.01",
                                             "train.epochs=1", "train.batch_size=3"))
    assert result["step"] == 9
    header_bad = sorted(str(p) for k, p in bad.items() if k.startswith("H_"))
    load_bad = sorted(str(p) for k, p in bad.items() if k.startswith("L_"))
    text = caplog.text
    assert "skipped 5 images whose header cannot be read" in text
    assert all(p in text for p in header_bad)
    assert "3 unreadable images were replaced during training" in text
    assert all(f"cannot read image {p}" in text for p in load_bad)
    assert "skipped 3 lines of" in text and "without valid keypoints" in text  # 16 joints, 17 ora16, not JSON
    assert "skipped 2 keypoint entries" in text and "that match no dataset image" in text
    assert not loaded_paths & set(header_bad + load_bad)
    assert _report("pretraining", good, bad, loaded_paths)["bytes_lost"] == 0


def test_finetuning_over_bad_files_finishes_reports_them_and_loses_no_image(bad_finetune_market, loaded_paths,
                                                                            tmp_path, caplog):
    root, added = bad_finetune_market
    bad = {k: v for k, v in added.items() if k.startswith(("H_", "L_"))}
    good = [p for p in (root / "bounding_box_train").iterdir() if p not in bad.values()]
    # 8 identities x (8 + 1 bad + 1 unusual) images, K = 2: 5 chunks each, one epoch uses them all
    with caplog.at_level(logging.WARNING):
        result = finetune_main(finetune_args(root, tmp_path / "run", "train.epochs=1", "eval.every_epochs=0"))
    assert result["step"] == 10 and result["metrics"]["num_query"] == 16
    text = caplog.text
    assert "8 unreadable images were replaced during training" in text
    assert all(f"cannot read image {p}" in text for p in bad.values())  # the first 10 are named
    assert not loaded_paths & {str(p) for p in bad.values()}
    assert _report("fine-tuning", good, bad, loaded_paths)["bytes_lost"] == 0


def test_a_bad_query_image_stops_evaluation_naming_it(finetune_market, tmp_path):
    # Evaluation never replaces an image (a replaced gallery image would silently change the metric).
    root = tmp_path / "market"
    shutil.copytree(finetune_market, root)
    victim = sorted((root / "query").iterdir())[3]
    victim.write_bytes(_corrupt_data())
    with pytest.raises(ImageDecodeError, match=f"cannot read image {victim}"):
        finetune_main(finetune_args(root, tmp_path / "run", "eval.at_start=true", "train.max_steps=1"))


# ----------------------------------------------------------------------------- bad configs and layouts


@pytest.mark.parametrize("entry", ["pretrain", "finetune"])
@pytest.mark.parametrize("override, message", [
    ("optim.lrr=0.1", "unknown config key 'optim.lrr' in command-line overrides; did you mean 'optim.lr'"),
    ("train.batch_size=eight", "train.batch_size: expected an int, got 'eight'"),
    ("optim.lr=-0.001", "optim.lr: value -0.001 must be > 0"),
    ("train.epochs=0", "train.epochs: value 0 must be > 0"),
])
def test_bad_config_values_stop_before_anything_is_written(entry, override, message, pretrain_market,
                                                           tmp_path):
    out = tmp_path / "run"
    args = pretrain_args(pretrain_market, out) if entry == "pretrain" else finetune_args(pretrain_market, out)
    with pytest.raises(ConfigError, match=message):
        (pretrain_main if entry == "pretrain" else finetune_main)([*args, override])
    assert not out.exists()


def _remove(root: Path, what: str) -> str:
    """Break a Market-format copy in one way; returns the expected error message (regex)."""
    if what == "missing split folder":
        shutil.rmtree(root / "query")
        return r"split folder .*query is missing; expected \['bounding_box_test'"
    if what == "empty split":
        for p in (root / "bounding_box_test").iterdir():
            p.unlink()
        return r"split folder .*bounding_box_test contains no images"
    if what == "unparseable file name":
        shutil.copy(next((root / "query").iterdir()), root / "query" / "IMG_0001.jpg")
        return r"1 file names in .*query do not follow the Market-1501 grammar .*\['IMG_0001.jpg'\]"
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["missing split folder", "empty split", "unparseable file name"])
def test_bad_dataset_layouts_stop_finetuning_naming_the_folder(what, finetune_market, tmp_path):
    root = tmp_path / "market"
    shutil.copytree(finetune_market, root)
    message = _remove(root, what)
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        finetune_main(finetune_args(root, tmp_path / "run", "train.max_steps=1"))


@pytest.mark.parametrize("what, message", [
    pytest.param("missing root", r"data.root=.*nowhere: no such folder or list file", id="missing root"),
    pytest.param("missing split folder", r"image source .*bounding_box_train is neither a folder nor a list "
                 "file", id="missing split folder"),
    pytest.param("empty split", r"no images \(.jpg/.jpeg/.png/.bmp, any case\) found in .*bounding_box_train",
                 id="empty split"),
])
def test_bad_dataset_layouts_stop_pretraining_naming_the_folder(what, message, pretrain_market, tmp_path):
    # Pretraining indexes a Market root's bounding_box_train as unlabeled crops (other code than
    # fine-tuning's Market reader): a missing or empty training folder must stop it just as clearly.
    root = tmp_path / "market"
    shutil.copytree(pretrain_market, root)
    train = root / "bounding_box_train"
    if what == "missing split folder":
        shutil.rmtree(train)
    elif what == "empty split":
        for p in train.iterdir():
            p.unlink()
    data = tmp_path / "nowhere" if what == "missing root" else root
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        pretrain_main(pretrain_args(data, tmp_path / "run", "train.max_steps=1"))


def test_query_identities_missing_from_the_gallery_are_counted_and_the_run_goes_on(finetune_market, tmp_path,
                                                                                    caplog):
    root = tmp_path / "market"
    shutil.copytree(finetune_market, root)
    pid = sorted(p.name[:4] for p in (root / "query").iterdir())[0]
    removed = [p for p in (root / "bounding_box_test").iterdir() if p.name.startswith(pid)]
    for p in removed:
        p.unlink()
    with caplog.at_level(logging.WARNING):
        result = finetune_main(finetune_args(root, tmp_path / "run", "train.max_steps=1", "train.epochs=1"))
    expected = "1 query identities (2 images) have no image in the gallery and can never be matched"
    assert f"{expected}, e.g. pids [{int(pid)}]" in caplog.text
    assert result["metrics"]["num_query"] == 16 and result["metrics"]["num_gallery"] == 48 - len(removed)

