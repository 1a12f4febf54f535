"""Export of a fine-tuned checkpoint: ONNX run by onnxruntime matches PyTorch at batch 1 and 7
(< 1e-4), the JSON preprocessing and the safetensors weights rebuild the same embedding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finetune.checkpoint import load_finetuned
from finetune.export import export, main
from finetune.model import Embedder, build_model

ort = pytest.importorskip("onnxruntime")


def test_onnx_parity_json_and_safetensors(tiny_run, tmp_path):
    out, _ = tiny_run
    ckpt = out / "checkpoints" / "best.pt"
    result = main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "model.onnx")])
    assert set(result["parity"]) == {1, 7} and max(result["parity"].values()) < 1e-4

    # every output gets the same permissions (safetensors alone used to write its file 0600)
    modes = {name: (tmp_path / name).stat().st_mode & 0o777
             for name in ("model.onnx", "model.json", "model.safetensors")}
    assert len(set(modes.values())) == 1 and modes["model.safetensors"] & 0o044, modes

    model, cfg, _ = load_finetuned(ckpt)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["img_size"] == [64, 32] and meta["feature_dim"] == 32 and meta["normalized"] is True
    assert meta["mean"] == list(cfg.augment.mean) and meta["interpolation"] == "bicubic"
    assert meta["semantic_weight"] == 0.2 and meta["input"] == "input" and meta["output"] == "embedding"

    # an independent check: the ONNX graph against the checkpoint's own embedding, batch 7
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["embedding"]
    x = torch.randn(7, 3, 64, 32, generator=torch.Generator().manual_seed(9))
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = model.embed(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)

    from safetensors import safe_open
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "model.safetensors"))
    assert not any(k.startswith("classifier.") for k in weights)
    rebuilt = build_model(cfg, num_classes=0)
    rebuilt.load_state_dict(weights)
    with torch.no_grad():
        torch.testing.assert_close(Embedder(rebuilt.eval())(x), torch.from_numpy(want))
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["preprocessing"])["feature_dim"] == 32


def test_fp16_export_stays_close_to_fp32(tiny_run, tmp_path):
    out, _ = tiny_run
    result = export(out / "checkpoints" / "best.pt", tmp_path / "half.onnx", fp16=True)
    assert 0 < max(result["parity"].values()) < 2e-2  # float16 inside: small but nonzero differences
    assert json.loads((tmp_path / "half.json").read_text())["precision"] == "fp16"


def test_export_refuses_non_finetuned_checkpoints(tmp_path):
    from solider.checkpoint import CheckpointError

    torch.save({"teacher": {}}, tmp_path / "pre.pth")
    with pytest.raises(CheckpointError, match="not a fine-tuned ReID checkpoint"):
        export(tmp_path / "pre.pth", tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="ending in .onnx"):
        export(tmp_path / "pre.pth", tmp_path / "x.bin")
