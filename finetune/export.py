"""Export a fine-tuned ReID model for inference: ONNX (checked with onnxruntime), the preprocessing as
JSON, and the weights as safetensors.

    python finetune/export.py --checkpoint runs/finetune/checkpoints/best.pt --out model.onnx [--fp16]

Swin and ResNet checkpoints alike (the model is rebuilt from the checkpoint alone).

Writes, next to each other (``<stem>`` from ``--out``):

- ``<stem>.onnx``: input ``input`` (N, 3, H, W) float32, output ``embedding`` (N, D) float32, the
  test feature exactly as evaluation computes it (``ReIDModel.embed``: before/after the BNNeck,
  L2-normalised when the config says so); dynamic batch. ``--fp16`` computes in float16 inside
  the graph (input and output stay float32).
- ``<stem>.json``: the preprocessing (image size, resize filter, 1/255 scale, mean, std, RGB, NCHW),
  the feature size, whether it is normalised, the test feature, λ (null for a ResNet), the
  architecture and the distance to use; ``finetune/infer.py`` reads it to run the ONNX file.
- ``<stem>.safetensors``: the inference model's state dict (no classifier), with the JSON in the
  file's metadata under ``"preprocessing"``.

The ONNX file is run by onnxruntime on random batches of 1 and 7 images and compared with PyTorch;
the maximum absolute difference is printed and must stay below ``--atol`` (default 1e-4 in fp32;
with ``--fp16`` the graph is compared with the float32 PyTorch model at 2e-2: float16 keeps 11
significant bits, about 3 decimal digits, and the error of a unit-norm embedding of a deep network
accumulates over its layers to the order of 1e-3 per component, so 2e-2 leaves a margin while still
catching a wrong graph, whose differences are of the order of the features themselves, ~0.1).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from finetune.checkpoint import load_finetuned, preprocessing
from finetune.model import Embedder
from solider.utils.atomic import atomic_write
from solider.utils.cli import UserError, reject_overrides, run_entry
from solider.utils.logging import get_logger, setup_logging
from solider.utils.output_dir import check_output_files

logger = get_logger("finetune.export")

__all__ = ["export_onnx", "onnx_parity", "save_inference_weights", "export", "main"]

FP32_ATOL, FP16_ATOL = 1e-4, 2e-2
PARITY_BATCHES = (1, 7)


class _HalfCompute(nn.Module):
    """float32 in and out, float16 inside (what ``--fp16`` exports)."""

    def __init__(self, embedder: nn.Module):
        super().__init__()
        self.embedder = embedder.half()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedder(images.half()).float()


def export_onnx(embedder: nn.Module, path: str | os.PathLike, img_size: tuple[int, int],
                opset: int = 17, fp16: bool = False) -> Path:
    """Export ``embedder`` (eval mode, CPU) to ONNX with a dynamic batch axis.

    Uses the TorchScript-based exporter (``dynamo=False``): same graph quality for this model and
    about 8x faster to export than ``dynamo=True`` (docs/BACKBONE.md).
    """
    path = Path(path)
    module = _HalfCompute(embedder) if fp16 else embedder
    dummy = torch.randn(2, 3, *img_size)
    with atomic_write(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        # The tracer warns that the padding amounts become constants: they depend on H and W only,
        # which the graph fixes by design (only the batch axis is dynamic).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is chosen on purpose
        torch.onnx.export(module.eval(), (dummy,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["embedding"],
                          dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}})
    return path


def onnx_parity(path: str | os.PathLike, reference: nn.Module, img_size: tuple[int, int],
                batches: tuple[int, ...] = PARITY_BATCHES, seed: int = 0) -> dict[int, float]:
    """Max |onnxruntime - PyTorch| of the embedding for random batches of each size in ``batches``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    diffs = {}
    for b in batches:
        x = torch.randn(b, 3, *img_size, generator=gen)
        (got,) = session.run(["embedding"], {"input": x.numpy()})
        with torch.no_grad():
            want = reference(x).float().numpy()
        if got.shape != want.shape:
            raise RuntimeError(f"{path}: ONNX output {got.shape} for a batch of {b}, "
                               f"PyTorch gives {want.shape}")
        diffs[b] = float(np.abs(got - want).max())
    return diffs


def save_inference_weights(embedder: Embedder, path: str | os.PathLike, meta: dict) -> Path:
    """The state dict without the classifier as safetensors, the preprocessing JSON as metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in embedder.model.state_dict().items()
             if not k.startswith("classifier.")}
    path = Path(path)
    with atomic_write(path) as tmp:
        save_file(state, str(tmp), metadata={"preprocessing": json.dumps(meta), "format": "pt"})
        # safetensors creates its file private (0600); give it the mode every other output has
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    return path


def export(checkpoint: str | os.PathLike, out: str | os.PathLike, fp16: bool = False, opset: int = 17,
           atol: float | None = None) -> dict:
    """Export a fine-tuned checkpoint (see the module docstring); returns the written paths and the
    parity figures. Raises RuntimeError when the ONNX output differs by more than ``atol``."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise UserError(f"--out {out}: expected a path ending in .onnx")
    model, cfg, _ = load_finetuned(checkpoint)
    embedder = Embedder(model).eval()
    img_size = tuple(cfg.model.img_size)
    logger.info("export: %s (%s at %dx%d, %d-d embedding, %.2f M parameters) -> %s, opset %d, %s", checkpoint,
                cfg.model.arch, *img_size, model.feat_dim, sum(p.numel() for p in model.parameters()) / 1e6,
                out, opset, "float16" if fp16 else "float32")
    meta = preprocessing(cfg, model.feat_dim)
    meta.update(precision="fp16" if fp16 else "fp32", checkpoint=str(checkpoint))
    # The float32 model stays the reference (and the saved weights); --fp16 casts a copy.
    onnx_path = export_onnx(copy.deepcopy(embedder) if fp16 else embedder, out, img_size, opset, fp16)
    diffs = onnx_parity(onnx_path, embedder, img_size)
    limit = atol if atol is not None else (FP16_ATOL if fp16 else FP32_ATOL)
    for b, d in diffs.items():
        print(f"onnxruntime vs PyTorch (fp32), batch {b}: max abs difference {d:.3g} (limit {limit:g})")
    meta["parity_max_abs_diff"] = {str(b): d for b, d in diffs.items()}
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    weights = save_inference_weights(embedder, out.with_suffix(".safetensors"), meta)
    worst = max(diffs.values())
    if not math.isfinite(worst) or worst > limit:
        raise RuntimeError(f"{onnx_path}: onnxruntime output differs from PyTorch by {worst:.3g} > {limit:g}")
    return {"onnx": str(onnx_path), "json": str(json_path), "safetensors": str(weights), "parity": diffs}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="finetune/export.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="fine-tuned checkpoint (best.pt or last.pt)")
    parser.add_argument("--out", required=True,
                        help="ONNX file to write (the .json and .safetensors go beside it)")
    parser.add_argument("--fp16", action="store_true", help="float16 computation inside the graph")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--atol", type=float, default=None,
                        help=f"parity limit (default {FP32_ATOL:g} fp32, {FP16_ATOL:g} fp16)")
    args = reject_overrides(parser, argv)  # flags only, in any order: there is no config schema here
    setup_logging()
    out = Path(args.out)
    check_output_files([out, out.with_suffix(".json"), out.with_suffix(".safetensors")], "--out")
    result = export(args.checkpoint, args.out, args.fp16, args.opset, args.atol)
    print(f"wrote {result['onnx']}, {result['json']}, {result['safetensors']}")
    return result


if __name__ == "__main__":
    run_entry(main, "finetune/export.py")
