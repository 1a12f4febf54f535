"""ResNet backbones for ReID (the Bag-of-Tricks / TAO ResNet baselines) and their ImageNet weights.

The backbone is timm's ResNet (``resnet18/34/50/101/152``, built with ``pretrained=False`` and no
classifier), changed as BoT does: **last stride 1**, i.e. the first block of ``layer4`` and its
downsample shortcut keep the resolution, so a 256x128 image gives a (B, C, 16, 8) map instead of
(B, C, 8, 4) (no dilation: the 3x3 kernels keep dilation 1, unlike timm's ``output_stride=16``).
Global average pooling gives (B, C) (C = 2048 for ResNet-50, 512 for ResNet-18/34): the backbone
contract of :class:`finetune.model.ReIDModel`.

State-dict keys are timm's, which are torchvision's minus the ``fc`` classifier (``conv1.weight``,
``bn1.*``, ``layer{1..4}.{i}.{conv,bn}{1,2,3}.*``, ``layer{1..4}.0.downsample.{0,1}.*``), so
:func:`load_resnet_weights` reads, without conversion:

- a bare timm or torchvision ImageNet state dict (``resnet50-0676ba61.pth``, timm's
  ``pytorch_model.bin`` / safetensors saved with ``torch.save``): ``fc.*`` is ignored by design;
  files from old torchvision releases have no ``num_batches_tracked`` counters, which then keep
  their initial value (reported);
- the same nested under ``state_dict`` or ``model`` and/or prefixed ``module.`` (DDP);
- fine-tuned ReID checkpoints: ours (``backbone.``), BoT (``base.``), TAO (``model.base.``).

The load is strict: every backbone tensor must be matched with its shape, or a
:class:`~solider.checkpoint.CheckpointError` names what is missing, unexpected or mis-shaped and
which ResNet the file looks like. Nothing is ever downloaded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import timm
from timm.models.resnet import ResNet
from torch import Tensor, nn

from solider.checkpoint import CheckpointError
from solider.models.weights import (
    BACKBONE_PREFIXES,
    WRAPPER_PREFIXES,
    LoadReport,
    checkpoint_state_dict,
    clean_state_dict,
    find_prefix,
)
from solider.utils.logging import get_logger

logger = get_logger(__name__)

__all__ = ["RESNET_ARCHS", "is_resnet", "build_resnet", "set_last_stride_one", "resnet_layout",
           "ResNetLoadReport", "load_resnet_weights"]

# Blocks per stage and block type, as torchvision and timm define them (used to name a checkpoint).
RESNET_LAYOUTS = {"resnet18": ((2, 2, 2, 2), "basic"), "resnet34": ((3, 4, 6, 3), "basic"),
                  "resnet50": ((3, 4, 6, 3), "bottleneck"), "resnet101": ((3, 4, 23, 3), "bottleneck"),
                  "resnet152": ((3, 8, 36, 3), "bottleneck")}
RESNET_ARCHS = tuple(RESNET_LAYOUTS)


def is_resnet(arch: Any) -> bool:
    """True for the ResNet names of ``model.arch`` (``resnet18`` ... ``resnet152``)."""
    return isinstance(arch, str) and arch in RESNET_LAYOUTS


def set_last_stride_one(model: ResNet) -> list[str]:
    """Make ``layer4`` keep its input resolution (BoT's last stride 1); returns the changed convs.

    Every strided convolution of ``layer4``'s first block is set to stride 1: ``conv2`` of a
    bottleneck (timm and torchvision put the stride on the 3x3, "ResNet v1.5") or ``conv1`` of a
    basic block, and the 1x1 of the downsample shortcut. Weights are unaffected.
    """
    changed = []
    for name, module in model.layer4[0].named_modules():
        if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
            module.stride = (1, 1)
            changed.append(f"layer4.0.{name}")
    if not changed:
        raise ValueError("layer4.0 has no strided convolution: is this a standard ResNet?")
    for info in getattr(model, "feature_info", []):  # keep timm's metadata truthful
        if info.get("module") == "layer4":
            info["reduction"] //= 2
    return changed


def build_resnet(arch: str, last_stride: int = 1, drop_path_rate: float = 0.0,
                 use_checkpoint: bool = False) -> ResNet:
    """A timm ResNet mapping (B, 3, H, W) images to pooled (B, C) features, random weights.

    Args:
        arch: one of :data:`RESNET_ARCHS`.
        last_stride: 1 (BoT, TAO: a 16x8 final map at 256x128) or 2 (the ImageNet network, 8x4).
        drop_path_rate: timm's stochastic depth over the residual blocks (BoT / TAO: 0).
        use_checkpoint: gradient checkpointing of the stages (less memory, slower).

    Returns:
        The ResNet; ``forward`` gives (B, C), ``forward_features`` the (B, C, H/16, W/16) map with
        last stride 1 (H/32, W/32 with 2); ``num_features`` = C.
    """
    if not is_resnet(arch):
        raise ValueError(f"unknown ResNet {arch!r}; expected one of {RESNET_ARCHS}")
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride={last_stride}: expected 1 (BoT) or 2 (ImageNet ResNet)")
    model = timm.create_model(arch, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate)
    if last_stride == 1:
        set_last_stride_one(model)
    if use_checkpoint:
        model.set_grad_checkpointing(True)
    return model


def resnet_layout(state_dict: Mapping[str, Any]) -> str:
    """The ResNet a backbone state dict looks like ("resnet34", or the block counts when unnamed)."""
    blocks: dict[int, set[int]] = {}
    for key in state_dict:
        if m := re.match(r"layer([1-4])\.(\d+)\.", key):
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    counts = tuple(len(blocks.get(s, ())) for s in (1, 2, 3, 4))
    kind = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
    name = next((n for n, layout in RESNET_LAYOUTS.items() if layout == (counts, kind)), None)
    return name or f"a ResNet with {counts} {kind} blocks"


@dataclass
class ResNetLoadReport(LoadReport):
    """:class:`~solider.models.weights.LoadReport` of a ResNet load; always states the three counts."""

    total: int = 0  # tensors in the model's backbone state dict

    def __str__(self) -> str:
        lines = [f"{self.source}: {self.layout}; loaded {self.loaded} of the model's {self.total} "
                 f"backbone tensors; "
                 f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                 f"{len(self.mismatched)} shape mismatches"]
        if self.ignored:
            lines.append(f"  ignored by design (not backbone): {_examples(self.ignored)}")
        if self.kept_init:
            lines.append(f"  kept at their initial values (absent from the file): "
                         f"{_examples(self.kept_init)}")
        for what, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                lines.append(f"  {what}: {_examples(items, 10)}")
        lines.extend(f"  shape mismatch {k}: checkpoint {a} vs model {b}" for k, a, b in self.mismatched[:10])
        return "\n".join(lines)


def _examples(keys: list[str], show: int = 4) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > show else ""
    return ", ".join(keys[:show]) + more


def _state_dict(obj: Any, source: str, name: str) -> tuple[dict[str, Any], str]:
    """The state dict inside a file (``state_dict`` / ``model`` / bare), wrapper prefixes removed."""
    if isinstance(obj, Mapping) and (source == "student" or "teacher" in obj or "student" in obj):
        raise CheckpointError(f"{name}: a pretraining checkpoint (teacher/student) holds a Swin, not a "
                              "ResNet; start a ResNet from ImageNet weights (timm / torchvision state "
                              "dict) or from a fine-tuned ResNet checkpoint")
    return checkpoint_state_dict(obj, name=name)


def _find_backbone(sd: dict[str, Any], layout: str, name: str) -> tuple[dict[str, Tensor], list[str], str]:
    """(backbone tensors without prefix, ignored keys, layout description)."""
    prefix = find_prefix(sd, "conv1.weight", "layer1.0.conv1.weight")
    if prefix is None:
        swin = "this file holds a Swin; " if any("patch_embed." in k or "stages." in k for k in sd) else ""
        raise CheckpointError(f"{name}: no ResNet backbone found ({layout}): expected 'conv1.weight' and "
                              f"'layer1.0.conv1.weight' under one of the prefixes {BACKBONE_PREFIXES} "
                              f"(after removing {WRAPPER_PREFIXES}); {swin}first keys: {list(sd)[:5]}")
    inside = clean_state_dict(sd, prefix)
    ignored = [k for k in sd if not k.startswith(prefix)]
    ignored += [prefix + k for k in inside if k.startswith("fc.")]  # the ImageNet classifier
    backbone = {k: v for k, v in inside.items() if not k.startswith("fc.") and isinstance(v, Tensor)}
    where = f", backbone under '{prefix}'" if prefix else ""
    return backbone, ignored, f"{resnet_layout(backbone)} ({layout}{where})"


def load_resnet_weights(model: nn.Module, obj: Mapping[str, Any], name: str = "<state dict>",
                        source: str = "teacher", log: bool = True) -> ResNetLoadReport:
    """Load ResNet backbone weights (layouts in the module docstring) into ``model``, strictly.

    Args:
        model: a ResNet from :func:`build_resnet` (the stride change does not touch weights).
        obj: the loaded file (``solider.checkpoint.safe_load``) or a state dict.
        name: the file name, for messages.
        source: ``init.source``; "student" is refused (pretraining checkpoints hold a Swin),
            "teacher" / "imagenet" detect the layout.
        log: log the report (False when the caller reports it inside its own message).

    Returns:
        The report (also logged unless ``log=False``): loaded, ignored (``fc.*`` and non-backbone
        entries), kept at their initial value (``num_batches_tracked`` absent from old torchvision files).

    Raises:
        CheckpointError: not a ResNet file, or missing / unexpected / mis-shaped tensors (the
            message names the ResNet the file looks like).
    """
    sd, layout = _state_dict(obj, source, name)
    backbone, ignored, layout = _find_backbone(sd, layout, name)
    own = model.state_dict()
    report = ResNetLoadReport(source=name, layout=layout, ignored=ignored, total=len(own))
    report.kept_init = [k for k in own if k not in backbone and k.endswith("num_batches_tracked")]
    backbone.update({k: own[k] for k in report.kept_init})
    report.missing = [k for k in own if k not in backbone]
    report.unexpected = [k for k in backbone if k not in own]
    report.mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in backbone.items()
                         if k in own and v.shape != own[k].shape]
    if not report.ok:
        raise CheckpointError(f"{name} does not fit the model: the file looks like "
                              f"{resnet_layout(backbone)}, the model is {resnet_layout(own)}\n{report}")
    model.load_state_dict(backbone)
    report.loaded = len(backbone) - len(report.kept_init)
    if log:
        logger.info("%s", report)
    return report
