"""How well do part pseudo-labels agree with true body-part masks?

    python -m solider.part_agreement --data SYNTHETIC_ROOT (--checkpoint CKPT | --config PRETRAIN_YAML)
                                     [--split bounding_box_train] [--max-images N] [--out agreement.json]
                                     [key=value ...   with --config]

On a synthetic Market-layout set (``solider.datatools.synthetic``: ``keypoints.jsonl`` and the renderer's
``masks/``), every image is taken whole at the model's global-crop size — the geometry of a global
crop without augmentation — and labelled on the last-stage token grid in two ways, as pretraining
labels it: from its keypoints (``keypoint_part_labels``) and by clustering the teacher's λ = 1
tokens (``cluster_part_labels``). The renderer's mask gives the truth on the same grid by the rule
the keypoint rasteriser uses (the part covering the largest share of a token's cell if that share
is at least ``min_fraction``, else background). Reported per source, over the images the source
labels: the share of images labelled, token accuracy and the IoU of each class (background,
upper body, legs, feet) pooled over tokens, and the mean IoU over the parts.

The teacher comes from a pretraining checkpoint (its config gives the architecture and sizes), or
is the random initialisation of ``--config`` (a baseline: how much clustering gets from an untrained
network). Three parts only: the renderer's masks have three.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from solider.checkpoint import safe_load
from solider.config import config_from_dict, load_config
from solider.data.images import load_image
from solider.data.keypoint_files import read_keypoints
from solider.keypoint_part_labels import keypoint_part_labels
from solider.models.multicrop_net import MultiCropNet, token_grid
from solider.pretrain import build_networks
from solider.pretrain_config import PretrainConfig
from solider.semantic_supervision import cluster_part_labels
from solider.utils.cli import parse_args, run_entry
from solider.utils.seed import seed_everything

NUM_CLASSES = 4  # background + the renderer's three parts


def mask_to_grid(mask: np.ndarray, grid: tuple[int, int], min_fraction: float = 0.25) -> np.ndarray:
    """(H, W) part mask (0 = background, 1..3) -> (h, w) token labels: per cell the part with the
    largest share if that share >= ``min_fraction``, else 0. Cells split the image evenly."""
    gh, gw = grid
    rows = np.linspace(0, mask.shape[0], gh + 1)
    cols = np.linspace(0, mask.shape[1], gw + 1)
    out = np.zeros(grid, dtype=np.int64)
    for i in range(gh):
        for j in range(gw):
            r0, r1, c0, c1 = (int(round(v)) for v in (rows[i], rows[i + 1], cols[j], cols[j + 1]))
            cell = mask[r0:r1, c0:c1]
            share = np.bincount(cell.ravel(), minlength=NUM_CLASSES)[1:NUM_CLASSES] / max(cell.size, 1)
            out[i, j] = int(share.argmax()) + 1 if share.max() >= min_fraction else 0
    return out


def agreement(pred: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor) -> dict:
    """Token accuracy, per-class IoU and part mIoU over the valid images ((N, h, w) labels)."""
    p, t = pred[valid].reshape(-1), truth[valid].reshape(-1)
    iou = []
    for c in range(NUM_CLASSES):
        union = ((p == c) | (t == c)).sum().item()
        iou.append(((p == c) & (t == c)).sum().item() / union if union else float("nan"))
    return {"valid_share": valid.float().mean().item(), "images": int(valid.sum()),
            "accuracy": (p == t).float().mean().item() if p.numel() else float("nan"),
            "iou": iou, "miou_parts": float(np.nanmean(iou[1:]))}


def load_teacher(checkpoint: str | None, config: str | None,
                 overrides: list[str] = ()) -> tuple[MultiCropNet, PretrainConfig]:
    if checkpoint:
        state = safe_load(checkpoint)
        if not isinstance(state, dict) or state.get("kind") != "solider_pretrain":
            raise ValueError(f"{checkpoint}: not a pretraining checkpoint of this codebase "
                             f"(kind={state.get('kind') if isinstance(state, dict) else type(state)})")
        cfg = config_from_dict(PretrainConfig, state["config"], where=f"{checkpoint}:config")
    else:
        cfg = load_config(PretrainConfig, config, overrides)
    seed_everything(cfg.seed)  # the random initialisation pretraining starts from
    _, teacher = build_networks(cfg)
    if checkpoint:
        teacher.load_state_dict(state["teacher"])
    return teacher.eval(), cfg


@torch.no_grad()
def measure(root: Path, teacher: MultiCropNet, cfg: PretrainConfig, split: str = "bounding_box_train",
            max_images: int | None = None, batch_size: int = 64) -> dict:
    table = read_keypoints(root / "keypoints.jsonl")
    names = sorted(k for k in table.entries if k.startswith(f"{split}/"))[:max_images]
    if not names:
        raise ValueError(f"{root / 'keypoints.jsonl'} lists no image of {split}/")
    h, w = cfg.model.img_size
    grid = token_grid((h, w), num_stages=len(teacher.backbone.stages))
    mean, std = torch.tensor(cfg.augment.mean).view(3, 1, 1), torch.tensor(cfg.augment.std).view(3, 1, 1)
    images, kpts, truth = [], [], []
    for name in names:
        img = load_image(root / name)
        mask_path = root / "masks" / split / (Path(name).stem + ".png")
        if not mask_path.is_file():
            raise FileNotFoundError(f"{mask_path}: no part mask for {name} (is {root} a set made by "
                                    "solider.datatools.synthetic?)")
        truth.append(mask_to_grid(np.asarray(Image.open(mask_path)), grid))
        scale = np.array([w / img.width, h / img.height, 1.0], dtype=np.float32)
        kpts.append(table.entries[name] * scale)
        pixels = torch.from_numpy(np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255)
        images.append((pixels.permute(2, 0, 1) - mean) / std)
    truth_t = torch.from_numpy(np.stack(truth))
    kp_labels, kp_valid = keypoint_part_labels(torch.from_numpy(np.stack(kpts)), (h, w), grid=grid,
                                               num_parts=3)
    cl_labels, cl_valid = [], []
    for i in range(0, len(images), batch_size):
        fmap = teacher.backbone.forward_features(torch.stack(images[i:i + batch_size]), 1.0).float()
        labels, valid = cluster_part_labels(fmap, num_parts=3, min_foreground=cfg.semantic.min_foreground)
        cl_labels.append(labels)
        cl_valid.append(valid)
    return {"images": len(names), "grid": list(grid), "img_size": [h, w],
            "sources": {"keypoints": agreement(kp_labels, truth_t, kp_valid),
                        "clustering": agreement(torch.cat(cl_labels), truth_t, torch.cat(cl_valid))}}


def _percent(value: float) -> str:
    """A percentage, or 'absent' for a part that occurs in neither labelling (its IoU is undefined)."""
    return f"{100 * value:.1f}" if math.isfinite(value) else "absent"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m solider.part_agreement", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="synthetic Market-layout root")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="pretraining checkpoint (its teacher clusters)")
    source.add_argument("--config", help="pretraining YAML: its random initialisation clusters")
    parser.add_argument("--split", default="bounding_box_train")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="with --config: dotted overrides, e.g. model.img_size=[256,128]")
    args = parse_args(parser, argv)
    if args.overrides and args.checkpoint:
        parser.error("key=value overrides go with --config (a checkpoint brings its own config)")
    teacher, cfg = load_teacher(args.checkpoint, args.config, args.overrides)
    result = measure(args.data, teacher, cfg, args.split, args.max_images)
    result["teacher"] = args.checkpoint or f"random init of {args.config}"
    for name, r in result["sources"].items():
        print(f"{name:>10}: {100 * r['valid_share']:5.1f} % of {result['images']} images labelled, "
              f"token accuracy {100 * r['accuracy']:5.1f} %, mIoU (parts) {_percent(r['miou_parts']):>5} %, "
              "IoU bg/upper/legs/feet " + " / ".join(_percent(v) for v in r["iou"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    run_entry(main, "python -m solider.part_agreement")
