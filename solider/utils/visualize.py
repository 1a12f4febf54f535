"""Small image helpers for TensorBoard: crops with their part-label overlay."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# background transparent; parts red, green, blue, yellow, magenta
PART_COLOURS = torch.tensor([[0, 0, 0], [230, 60, 60], [60, 200, 60], [60, 110, 240], [240, 220, 40],
                             [220, 60, 220]], dtype=torch.float32) / 255


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, 3, H, W) normalised -> [0, 1]."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * s + m).clamp(0, 1)


def part_overlay_grid(images: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                      mean: Sequence[float], std: Sequence[float], alpha: float = 0.45,
                      max_images: int = 8) -> torch.Tensor:
    """A (3, H, W*2n) strip: each crop, then the crop with its part labels blended in.

    Unlabelled crops get no overlay. Args: images (N, 3, H, W) normalised; labels (N, h, w);
    valid (N,) bool.
    """
    n = min(max_images, images.shape[0])
    rgb = denormalize(images[:n].detach().float().cpu(), mean, std)
    lab = F.interpolate(labels[:n, None].float().cpu(), size=rgb.shape[-2:], mode="nearest")[:, 0].long()
    colours = PART_COLOURS[lab.clamp(max=len(PART_COLOURS) - 1)].permute(0, 3, 1, 2)
    on = ((lab > 0) & valid[:n, None, None].cpu())[:, None].float() * alpha
    blended = rgb * (1 - on) + colours * on
    pairs = torch.stack([rgb, blended], dim=1).flatten(0, 1)  # (2n, 3, H, W)
    return torch.cat(list(pairs), dim=2)
