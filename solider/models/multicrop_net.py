"""Student / teacher networks of SOLIDER pretraining: Swin backbone + DINO head (+ part head).

State-dict keys are ``backbone.*``, ``head.*`` and, for the student, ``part_head.*``: the layout of
the official teacher checkpoints, so ``solider.checkpoint.load_backbone_weights`` and the official
tools read ours.
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

    def last_map(self, images: Tensor, semantic_weight: float | Tensor | None) -> Tensor:
        """Normalised last-stage map (B, C, h, w) without computing the unused output norms."""
        last = self.backbone.forward_stages(images, semantic_weight)[-1]
        norm = getattr(self.backbone, f"norm{len(self.backbone.stages) - 1}")
        return norm(last).permute(0, 3, 1, 2)

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
            fmap = self.last_map(images, lam)
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

    Only the last stage's output norm is used, and the last controller pair modulates nothing, so
    ``norm0..norm{n-2}`` and ``semantic_embed_{w,b}.{n-1}`` never get a gradient. Freezing them keeps
    DDP free of ``find_unused_parameters`` (the official code pays for it) and leaves them at their
    initial values, as they stay in the official training too.
    """
    n = len(net.backbone.stages)
    prefixes = [f"backbone.norm{i}." for i in range(n - 1)]
    prefixes += [f"backbone.semantic_embed_w.{n - 1}.", f"backbone.semantic_embed_b.{n - 1}."]
    frozen = []
    for name, param in net.named_parameters():
        if any(name.startswith(p) for p in prefixes):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen
