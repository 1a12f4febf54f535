"""Student / teacher networks of SOLIDER pretraining: Swin backbone + DINO head (+ part head).

State-dict keys are ``backbone.*``, ``head.*`` and, for the student, ``part_head.*``: the layout of
the official teacher checkpoints, so ``solider.models.swin_weights.load_backbone_weights`` and the
official tools read ours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from solider.models.heads import DINOHead
from solider.models.swin import SwinTransformer


class MultiCropOutput(NamedTuple):
    head: Tensor  # (N_total, out_dim): DINO head outputs of all crops, groups concatenated in order
    part_logits: Tensor | None  # (N_part, h*w, parts+1) for the requested images of the first group
    pooled: Tensor  # (N_total, C): pooled backbone features (the head's input), same row order


def token_grid(img_size: Sequence[int], num_stages: int = 4, patch_size: int = 4) -> tuple[int, int]:
    """Last-stage map size for an input size: patch embedding and 2x merges, each padding up."""
    h, w = (math.ceil(s / patch_size) for s in img_size)
    for _ in range(num_stages - 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h, w


class MultiCropNet(nn.Module):
    """Runs the backbone once per resolution group and the heads once on everything.

    Args:
        backbone: a :class:`SwinTransformer`.
        head: the DINO head on pooled last-stage features.
        part_head: optional head classifying each last-stage token into background + parts.
    """

    def __init__(self, backbone: SwinTransformer, head: DINOHead, part_head: DINOHead | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.part_head = part_head

    def compile_backbone(self, **options) -> None:
        """``torch.compile`` the backbone where this network calls it: ``forward_features`` (the
        final map feeds the part head). ``nn.Module.compile`` would wrap the backbone's
        ``__call__``, which this network never calls. State-dict keys are unchanged."""
        self.backbone.forward_features = torch.compile(self.backbone.forward_features, **options)

    def forward(self, crops: Sequence[Tensor], semantic_weights: Sequence[Tensor | float],
                part_index: Tensor | None = None) -> MultiCropOutput:
        """
        Args:
            crops: groups of same-size crops, e.g. ``[global-size crops (N1, 3, Hg, Wg),
                local crops (N2, 3, Hl, Wl)]``; empty groups are skipped.
            semantic_weights: λ per group: a float or an (N_i,) tensor.
            part_index: (N_part,) indices into the first group whose tokens go to the part head.
        """
        pooled, first_map = [], None
        for images, lam in zip(crops, semantic_weights):
            if images.shape[0] == 0:
                continue
            fmap = self.backbone.forward_features(images, lam)  # (N_i, C, h, w)
            if first_map is None:
                first_map = fmap
            pooled.append(fmap.mean(dim=(2, 3)))
        features = torch.cat(pooled)
        out = self.head(features)
        logits = None
        if part_index is not None and self.part_head is not None:
            tokens = first_map[part_index].flatten(2).transpose(1, 2)  # (N_part, h*w, C)
            logits = self.part_head(tokens)
        return MultiCropOutput(out, logits, features)


def freeze_unused_parameters(net: MultiCropNet) -> list[str]:
    """Freeze parameters that cannot affect the pretraining losses; returns their names.

    The heads see only the final map, so what the backbone does not use for it
    (:meth:`~solider.models.swin.SwinTransformer.unused_parameters`) never gets a gradient.
    Freezing keeps DDP free of ``find_unused_parameters`` (the official code pays for it) and leaves
    those parameters at their initial values, as they stay in the official training too.
    """
    frozen = [f"backbone.{name}" for name in net.backbone.unused_parameters()]
    params = dict(net.named_parameters())
    for name in frozen:
        params[name].requires_grad_(False)
    return frozen
