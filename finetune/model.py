"""ReID model: backbone -> optional reduction -> BNNeck -> classifier (BoT / SOLIDER-REID / TAO).

::

    images (B, 3, H, W) -> backbone -> (B, C) -> [reduction Linear(C, d, no bias)] -> feat (B, D)
    feat -> BatchNorm1d (bias frozen at 0) -> bn_feat (B, D) -> classifier Linear(D, N, no bias) -> logits

Training uses ``logits`` (ID loss) and ``feat`` (triplet / center loss, pre-BN); the test feature
(:meth:`ReIDModel.embed`) is ``feat`` ("before", SOLIDER-REID) or ``bn_feat`` ("after", BoT, TAO),
optionally L2-normalised. Export and evaluation both call ``embed``.

The backbone contract is all the neck needs (timm's): a module mapping (B, 3, H, W) images to (B, C)
features, with ``num_features = C`` (an int). :func:`build_backbone` gives the SOLIDER Swin or, for
``resnet18 ... resnet152``, a timm ResNet with last stride 1 (:mod:`finetune.resnet`);
:func:`build_model` the whole model a config describes.

State-dict keys: ``backbone.<swin or timm ResNet keys>``, ``reduction.weight``, ``bnneck.{weight,
bias, running_mean, running_var, num_batches_tracked}``, ``classifier.weight``, so
``solider.models.swin_weights.load_backbone_weights`` (Swin) and ``finetune.resnet.load_resnet_weights``
read fine-tuned checkpoints too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from finetune.config import FinetuneConfig
from finetune.resnet import build_resnet, is_resnet
from solider.models.swin import build_swin
from solider.utils.logging import get_logger

logger = get_logger(__name__)

__all__ = ["ReIDOutput", "ReIDModel", "Embedder", "backbone_dim", "build_backbone", "build_model",
           "NECK_FEATS"]

NECK_FEATS = ("before", "after")


class ReIDOutput(NamedTuple):
    feat: Tensor  # (B, D) pre-BN feature (after the reduction, if any): triplet and center losses
    bn_feat: Tensor  # (B, D) BNNeck output
    logits: Tensor | None  # (B, num_classes) in training mode with a classifier, else None


def backbone_dim(backbone: nn.Module) -> int:
    """C of a backbone's (B, C) output: its ``num_features``."""
    dims = getattr(backbone, "num_features", None)
    if isinstance(dims, int) and not isinstance(dims, bool):
        return dims
    raise TypeError(f"{type(backbone).__name__} has no usable num_features ({dims!r}): the backbone "
                    "contract is a module mapping images to (B, C) with num_features = C (an int)")


def build_backbone(arch: str | Mapping[str, Any], img_size: Sequence[int] = (256, 128),
                   semantic_weight: float = 0.2, drop_path_rate: float = 0.1,
                   use_checkpoint: bool = False, last_stride: int = 1) -> nn.Module:
    """The fine-tuning backbone: a SOLIDER Swin with λ fixed and its controller frozen, or a ResNet.

    Swin: as in SOLIDER-REID and TAO, λ is a constructor constant (0.2 for ReID; negative: no
    controller) and ``semantic_embed_*`` is not trained. What the pooled feature never reaches
    (``SwinTransformer.unused_parameters``: norm0..norm{n-2}) is frozen too, which keeps DDP free
    of unused parameters.

    ResNet (``resnet18`` ... ``resnet152``, :func:`finetune.resnet.build_resnet`): timm's, last
    stride ``last_stride``, average pooled. It has no semantic controller: a λ >= 0 is ignored
    with a logged note (-1 says "no controller" and is silent); ``img_size`` is not needed.

    Args:
        arch: "swin_tiny" | "swin_small" | "swin_base" | {embed_dim, depths, num_heads, window_size}
            | "resnet18" | "resnet34" | "resnet50" | "resnet101" | "resnet152".
        img_size: nominal input (H, W) (Swin).
        semantic_weight: λ (Swin).
        drop_path_rate: stochastic depth (SOLIDER-REID 0.1; timm's per-block rate for a ResNet).
        use_checkpoint: gradient checkpointing.
        last_stride: stride of a ResNet's layer4 (BoT 1); a Swin accepts only 1.
    """
    if is_resnet(arch):
        if semantic_weight >= 0:
            logger.info("%s has no semantic controller: model.semantic_weight=%g is ignored (-1 silences "
                        "this note)", arch, semantic_weight)
        return build_resnet(arch, last_stride, drop_path_rate, use_checkpoint)
    if last_stride != 1:
        raise ValueError(f"last_stride={last_stride} applies to ResNets only; a Swin takes 1")
    backbone = build_swin(arch, img_size=img_size, semantic_weight=semantic_weight,
                          drop_path_rate=drop_path_rate, use_checkpoint=use_checkpoint)
    unused = set(backbone.unused_parameters())
    for name, param in backbone.named_parameters():
        if name.startswith("semantic_embed_") or name in unused:
            param.requires_grad_(False)
    return backbone


class ReIDModel(nn.Module):
    """Backbone + optional reduction + BNNeck + classifier; see the module docstring.

    Args:
        backbone: images (B, 3, H, W) -> (B, C), with ``num_features``.
        num_classes: training identities; 0 builds no classifier (inference only).
        reduction_dim: output of the bias-free reduction Linear (TAO: 256); 0 = no reduction.
        neck_feat: test feature, "before" (pre-BN) or "after" (BNNeck output).
        test_norm: L2-normalise the test feature.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, reduction_dim: int = 0,
                 neck_feat: str = "before", test_norm: bool = True):
        super().__init__()
        if neck_feat not in NECK_FEATS:
            raise ValueError(f"neck_feat={neck_feat!r}: expected one of {NECK_FEATS}")
        self.backbone = backbone
        in_dim = backbone_dim(backbone)
        self.reduction = nn.Linear(in_dim, reduction_dim, bias=False) if reduction_dim > 0 else None
        self.feat_dim = reduction_dim if reduction_dim > 0 else in_dim
        self.bnneck = nn.BatchNorm1d(self.feat_dim)
        self.bnneck.bias.requires_grad_(False)  # BNNeck: no shift (BoT)
        self.classifier = nn.Linear(self.feat_dim, num_classes, bias=False) if num_classes > 0 else None
        self.num_classes, self.neck_feat, self.test_norm = num_classes, neck_feat, test_norm
        self.reset_head()

    def reset_head(self) -> None:
        """Initialise the layers after the backbone (TAO / BoT): xavier reduction, BN 1/0, N(0, 0.001)."""
        if self.reduction is not None:
            nn.init.xavier_uniform_(self.reduction.weight)
        self.bnneck.reset_parameters()
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, images: Tensor) -> ReIDOutput:
        """(B, 3, H, W) -> :class:`ReIDOutput`; ``logits`` only in training mode."""
        feat = self.backbone(images)
        if self.reduction is not None:
            feat = self.reduction(feat)
        bn_feat = self.bnneck(feat)
        logits = self.classifier(bn_feat) if self.training and self.classifier is not None else None
        return ReIDOutput(feat, bn_feat, logits)

    def embed(self, images: Tensor) -> Tensor:
        """The test feature (B, D): what evaluation and export use. Call in eval mode."""
        out = self.forward(images)
        feat = out.bn_feat if self.neck_feat == "after" else out.feat
        return F.normalize(feat, dim=1) if self.test_norm else feat


def build_model(cfg: FinetuneConfig, num_classes: int) -> ReIDModel:
    """The ReID model a config describes (random weights)."""
    m = cfg.model
    backbone = build_backbone(m.arch_spec(), img_size=m.img_size, semantic_weight=m.semantic_weight,
                              drop_path_rate=m.drop_path_rate, use_checkpoint=m.use_checkpoint,
                              last_stride=m.last_stride)
    return ReIDModel(backbone, num_classes, reduction_dim=m.reduction_dim, neck_feat=m.neck_feat,
                     test_norm=m.test_norm)


class Embedder(nn.Module):
    """``forward = model.embed``: the module given to feature extraction and ONNX export."""

    def __init__(self, model: ReIDModel):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model.embed(images)
