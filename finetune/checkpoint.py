"""Fine-tuning weights: ``--init`` loading, and rebuilding a fine-tuned model from its checkpoint file
alone (for evaluation, export and inference). The model a config describes is
:func:`finetune.model.build_model`.

A fine-tuned checkpoint (``checkpoints/{last,best}.pt``) is a dict of tensors and plain values:
``model`` (state dict: ``backbone.*``, ``reduction.weight``, ``bnneck.*``, ``classifier.weight``),
``config`` (the resolved config as plain data), ``num_classes``, ``kind = "reid_finetune"``,
``step``, ``epoch`` and, in ``last.pt``, everything a bit-exact resume needs (``optimizer``,
``center``, ``center_optimizer``, ``scaler``, ``rng``, ``history``, ``best``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.models.resnet import ResNet

from finetune.config import FinetuneConfig
from finetune.model import ReIDModel, build_model
from finetune.resnet import is_resnet, load_resnet_weights
from solider.checkpoint import CheckpointError, safe_load
from solider.checkpoint_bounds import check_declared_size
from solider.config import config_from_dict
from solider.models.swin_weights import load_backbone_weights
from solider.models.weights import LoadReport, checkpoint_state_dict
from solider.utils.logging import get_logger

logger = get_logger(__name__)

__all__ = ["KIND", "InitReport", "initialize_model", "load_finetuned", "preprocessing"]

KIND = "reid_finetune"
# Our head modules and the names other ReID code bases give them (SOLIDER-REID, TAO), in order.
HEAD_ALIASES = {"reduction": ("reduction", "fcneck", "model.fcneck"),
                "bnneck": ("bnneck", "bottleneck", "model.bottleneck"),
                "classifier": ("classifier", "model.classifier")}


@dataclass
class InitReport:
    """What ``--init`` loaded: the backbone report and, for ReID checkpoints, the head modules."""

    path: str
    backbone: LoadReport
    head_loaded: list[str] = field(default_factory=list)
    head_skipped: list[str] = field(default_factory=list)  # "<module>: <reason>"

    def __str__(self) -> str:
        lines = [f"init from {self.path}", f"  backbone: {self.backbone}".replace("\n", "\n  ")]
        if self.head_loaded:
            lines.append(f"  head modules loaded: {', '.join(self.head_loaded)}")
        lines.extend(f"  head module kept at its initial value: {s}" for s in self.head_skipped)
        return "\n".join(lines)


def _reid_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The model state dict of a ReID checkpoint (ours: ``model``; TAO: ``state_dict``; SOLIDER-REID:
    the file itself), wrapper prefixes removed; empty for pretraining checkpoints."""
    if not isinstance(obj, dict) or "teacher" in obj or "student" in obj:
        return {}
    return checkpoint_state_dict(obj)[0]


def _load_head(model: ReIDModel, sd: dict[str, torch.Tensor], report: InitReport) -> None:
    """Copy reduction / BNNeck / classifier when the checkpoint has them with the same shapes."""
    for name, aliases in HEAD_ALIASES.items():
        module = getattr(model, name)
        if module is None:
            continue
        own = module.state_dict()
        prefix = next((a for a in aliases if f"{a}.weight" in sd), None)
        if prefix is None:
            report.head_skipped.append(f"{name}: not in the checkpoint")
            continue
        theirs = {k: sd[f"{prefix}.{k}"] for k in own if f"{prefix}.{k}" in sd}
        bad = [f"{k} {tuple(theirs[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
               if k in theirs and theirs[k].shape != v.shape]
        if bad or len(theirs) != len(own):
            why = f"shape {bad[0]}" if bad else f"missing {sorted(set(own) - set(theirs))}"
            if name == "classifier" and bad:
                why += " (a different number of identities: the classifier starts anew)"
            report.head_skipped.append(f"{name}: {why}")
            continue
        module.load_state_dict(theirs)
        report.head_loaded.append(name if prefix == name else f"{name} (from '{prefix}')")


def initialize_model(model: ReIDModel, path: str | os.PathLike, source: str = "teacher") -> InitReport:
    """Load ``--init`` weights into ``model`` and return (and log) what was loaded.

    The backbone goes through :func:`solider.models.swin_weights.load_backbone_weights` (Swin) or
    :func:`finetune.resnet.load_resnet_weights` (ResNet: timm / torchvision ImageNet state dicts,
    ``fc`` ignored), both strict: an architecture mismatch raises a clear error. From ReID
    checkpoints (ours, SOLIDER-REID, BoT, TAO) the reduction, BNNeck and classifier are loaded too
    when their shapes fit; the classifier of a model trained on other identities is skipped and
    reported.
    """
    obj = safe_load(path)
    if isinstance(model.backbone, ResNet):
        backbone = load_resnet_weights(model.backbone, obj, name=str(path), source=source, log=False)
    else:  # the backbone's report is logged once, inside the init report
        backbone = load_backbone_weights(model.backbone, obj, source=source, name=str(path), log=False)
    report = InitReport(str(path), backbone)
    sd = _reid_state_dict(obj) if source != "student" else {}
    if any(f"{a}.weight" in sd for aliases in HEAD_ALIASES.values() for a in aliases):
        _load_head(model, sd, report)
    logger.info("%s", report)
    return report


def load_finetuned(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                   ) -> tuple[ReIDModel, FinetuneConfig, dict]:
    """Rebuild a fine-tuned model from its checkpoint alone: ``(model in eval mode, config, state)``.

    Raises:
        CheckpointError: the file is not a fine-tuned checkpoint of ours (names what it holds).
    """
    state = safe_load(path, map_location=map_location)
    if not isinstance(state, dict) or not {"model", "config", "num_classes"} <= set(state):
        keys = sorted(state)[:10] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a fine-tuned ReID checkpoint (expected the entries 'model', "
                              f"'config', 'num_classes'; found {keys}); for pretraining or official "
                              "checkpoints fine-tune first, or evaluate the backbone with --init")
    cfg = config_from_dict(FinetuneConfig, state["config"], where=f"config stored in {path}")
    num_classes = state["num_classes"]
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise CheckpointError(f"{path}: num_classes={num_classes!r} is not a count of identities")
    if not isinstance(state["model"], Mapping):
        raise CheckpointError(f"{path}: the 'model' entry is not a state dict")
    # a declared 2,000,000 identities would allocate about 1 GB before the load failed
    check_declared_size(lambda: build_model(cfg, num_classes), state["model"], path,
                        f"its config with num_classes={num_classes}")
    model = build_model(cfg, num_classes)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: the stored weights do not fit the model its config describes: "
                              f"{str(exc).strip().splitlines()[0]}") from exc
    return model.eval(), cfg, state


def preprocessing(cfg: FinetuneConfig, feature_dim: int) -> dict:
    """What a deployment needs to feed the exported model (written next to the ONNX file)."""
    return {"input": "input", "output": "embedding", "layout": "NCHW", "color": "RGB",
            "img_size": list(cfg.model.img_size), "resize": "exact (no aspect-preserving crop)",
            "interpolation": cfg.augment.interpolation, "scale": 1 / 255, "mean": list(cfg.augment.mean),
            "std": list(cfg.augment.std), "feature_dim": feature_dim, "normalized": cfg.model.test_norm,
            "neck_feat": cfg.model.neck_feat,
            "semantic_weight": None if is_resnet(cfg.model.arch) else cfg.model.semantic_weight,
            "distance": cfg.eval.metric, "arch": cfg.model.arch if cfg.model.arch != "custom"
            else cfg.model.arch_spec()}

