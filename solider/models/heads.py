"""DINO projection head, also used as SOLIDER's part-classification head.

The head maps backbone features to ``out_dim`` logits that are cosine similarities with
``out_dim`` unit-norm prototypes::

    x -> MLP (Linear-GELU x (nlayers-1), Linear to bottleneck) -> L2-normalise -> WeightNormLinear

State-dict keys are those of the official DINO / SOLIDER checkpoints (``mlp.0.weight``,
``mlp.2.*``, ``mlp.4.*``, ``last_layer.weight_g`` (out, 1), ``last_layer.weight_v`` (out, 256)),
so our heads load official weights and the other way round.

References: facebookresearch/dino ``vision_transformer.py`` (DINOHead, commit 7c446df5) and
tinyvision/SOLIDER ``main_solider.py`` (``part_classifier = DINOHead(C, parts + 1, nlayers=3)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WeightNormLinear", "DINOHead", "cancel_last_layer_gradients"]


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation, ``weight = g * v / ||v||`` per row.

    Equivalent to the deprecated ``torch.nn.utils.weight_norm(nn.Linear(in, out, bias=False))``
    (``dim=0``: one norm per output row, taken over the input dimension, no epsilon) with the
    same parameter names ``weight_g`` (out, 1) and ``weight_v`` (out, in), which the official
    checkpoints use. The newer parametrisation API would rename them, breaking key parity.

    Args:
        in_features: input width.
        out_features: number of output rows (prototypes).
        fix_norm: keep ``weight_g`` at 1 and out of autograd (DINO's ``norm_last_layer=True``):
            every prototype then has unit norm and the outputs are cosines in [-1, 1].
    """

    def __init__(self, in_features: int, out_features: int, fix_norm: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=not fix_norm)
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        # DINO creates the last layer after its trunc-normal init pass, so ``v`` keeps PyTorch's
        # default Linear init (kaiming-uniform, a=sqrt(5)); the legacy weight_norm then sets
        # g = ||v|| which DINO overwrites with 1.
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))

    @property
    def weight(self) -> torch.Tensor:
        """The effective (out, in) weight ``g * v / ||v||_row``."""
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) -> (..., out)."""
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"fix_norm={not self.weight_g.requires_grad}")


class DINOHead(nn.Module):
    """DINO projection head (also SOLIDER's part classifier with ``out_dim = num_parts + 1``).

    Args:
        in_dim: backbone feature width (768 for Swin-T/S, 1024 for Swin-B).
        out_dim: number of prototypes (65536 for DINO; ``num_parts + 1`` for the part head).
        nlayers: MLP depth (>= 1); 1 means a single ``Linear(in_dim, bottleneck_dim)``.
        hidden_dim: MLP hidden width.
        bottleneck_dim: width of the L2-normalised bottleneck fed to the last layer.
        norm_last_layer: freeze the prototype norms at 1 (see :class:`WeightNormLinear`).
        use_bn: BatchNorm1d after each hidden Linear (off in DINO/SOLIDER; when on, the MLP
            indices shift and the official key names no longer apply).

    Shapes: ``forward(x)`` maps (..., in_dim) to (..., out_dim); any leading dims work, so the
    part head takes token maps permuted to (N, h, w, C) directly (``use_bn`` needs (N, C)).
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, nlayers: int = 3, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, norm_last_layer: bool = True, use_bn: bool = False) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"DINOHead: nlayers must be >= 1, got {nlayers}")
        if min(in_dim, out_dim, hidden_dim, bottleneck_dim) < 1:
            raise ValueError(f"DINOHead: widths must be positive, got in_dim={in_dim}, out_dim={out_dim}, "
                             f"hidden_dim={hidden_dim}, bottleneck_dim={bottleneck_dim}")
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            width = in_dim
            for _ in range(nlayers - 1):
                layers.append(nn.Linear(width, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
                width = hidden_dim
            layers.append(nn.Linear(width, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.mlp.apply(_init_linear)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_norm=norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_dim) -> logits (..., out_dim), cosines in [-1, 1] when the norm is fixed."""
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def cancel_last_layer_gradients(module: nn.Module, epoch: float, freeze_last_layer_epochs: float) -> None:
    """Drop the gradients of every parameter whose name contains ``last_layer`` (DINO's trick).

    DINO freezes the prototypes during the first epoch(s) because updating them while the
    rest of the network is random makes training unstable. Call between ``backward`` (and
    clipping) and ``optimizer.step()``; parameters with ``grad=None`` are skipped by the
    optimizer (and by AdamW's weight decay).

    Pass the DINO head (or the unwrapped student holding it). Note that a module which also
    contains the part head (``part_head.last_layer``) freezes that one as well, which the official
    code does not do (its part head lives outside the student).

    Args:
        module: the module whose ``*last_layer*`` parameters are frozen.
        epoch: current progress; may be fractional (``step / steps_per_epoch``), or a step count
            when ``freeze_last_layer_epochs`` is one too (pretraining passes steps).
        freeze_last_layer_epochs: gradients are cancelled while ``epoch < freeze_last_layer_epochs``.
    """
    if epoch >= freeze_last_layer_epochs:
        return
    for name, param in module.named_parameters():
        if "last_layer" in name:
            param.grad = None
