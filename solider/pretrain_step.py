"""The math of one SOLIDER pretraining step, free of data loading, optimisers and accelerate.

Order (official ``main_solider.py``, made explicit):

1. λ per image (binary or uniform), shared by all its crops and by the teacher's DINO pass;
2. part labels of the global crops: from keypoints where an image has them, otherwise by
   clustering the teacher's last-stage map computed with λ = 1;
3. the teacher's DINO targets on the global crops with the per-image λ (one teacher forward for
   2 and 3 when clustering is needed);
4. one part k is erased from the labelled global crops ("masked images", official);
5. the student on [masked, global, local] crops; its part head on the tokens of the masked
   images and of their unmasked originals (same labels for both);
6. loss = DINO(student on unmasked crops, teacher) + w · λ-weighted part cross-entropy.

With semantics off this is plain DINO (the controller still gets a fixed λ, 0 by default, as the
official ``main_dino.py`` feeds it).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from solider.dino import DINOLoss, koleo_loss
from solider.models.heads import cancel_last_layer_gradients
from solider.models.multicrop_net import MultiCropNet, token_grid
from solider.optim import clip_gradients, ema_update_
from solider.pretrain_config import SemanticConfig
from solider.semantic_supervision import (
    PartLabels,
    choose_part,
    cluster_part_labels,
    combine_part_labels,
    expand_to_crops,
    keypoint_part_labels,
    mask_part,
    part_classification_loss,
    to_crop_major,
)
from solider.utils.seed import sample_seed


class SemanticSettings(NamedTuple):
    """What the step reads of the ``semantic`` config section, under the same names (a test checks
    that the two stay in step); :meth:`from_config` copies them by name."""

    enabled: bool = True
    weight_mode: str = "binary"  # "binary" {0,1} (official) or "uniform" U[0,1]
    fixed_weight: float | None = None  # overrides sampling (DINO-only runs: 0)
    num_parts: int = 3
    label_source: str = "auto"  # "auto" | "keypoints" | "clustering"
    min_foreground: float = 0.5
    masking: bool = True
    loss_weight: float = 1.0
    static_shapes: bool = True  # mask every global crop, unlabelled ones weigh 0 (see METHOD.md)

    @classmethod
    def from_config(cls, semantic: SemanticConfig, static_shapes: bool) -> SemanticSettings:
        """The section's values by name; ``static_shapes`` as resolved for the device (the section may
        leave it None: decided by the device)."""
        shared = {name: getattr(semantic, name) for name in cls._fields if name != "static_shapes"}
        return cls(**shared, static_shapes=static_shapes)


HOST_KEYS = ("index", "has_keypoints")  # batch entries the step reads on the host: keep them on the CPU


class StepResult(NamedTuple):
    loss: Tensor  # scalar, differentiable
    metrics: dict[str, float | Tensor]  # detached scalars for logging
    parts: PartLabels | None  # labels of the global crops (crop-major), for visualisation


def semantic_weights(indices: Tensor, step: int, seed: int, settings: SemanticSettings,
                     device: torch.device | None = None) -> Tensor:
    """(B,) λ per image for this step, on ``device`` (default: that of ``indices``).

    Drawn from (seed, step, dataset index) rather than from a per-process generator, so an image
    gets the same λ however the batch is sharded over processes (a 2-process run then equals a
    1-process run at the same global batch). ``binary`` gives {0, 1} with probability 1/2 each
    (official), ``uniform`` U[0, 1). Pass the indices on the CPU (the loop keeps
    :data:`HOST_KEYS` there): reading them from an accelerator would cost a host sync per step.
    """
    return _on(_semantic_weights(indices, step, seed, settings), device or indices.device)


def _on(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``; a CPU -> CUDA copy goes through pinned memory, without a host sync."""
    if t.device == torch.device(device):
        return t
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _semantic_weights(indices: Tensor, step: int, seed: int, settings: SemanticSettings) -> Tensor:
    device = indices.device
    if settings.fixed_weight is not None:
        return torch.full(indices.shape, float(settings.fixed_weight), device=device)
    if not settings.enabled:
        return torch.zeros(indices.shape, device=device)
    if settings.weight_mode not in ("binary", "uniform"):
        raise ValueError(f"weight_mode must be 'binary' or 'uniform', got {settings.weight_mode!r}")
    u = torch.tensor([sample_seed(seed, step, int(i)) / 2**63 for i in indices.tolist()], device=device)
    return (u < 0.5).float() if settings.weight_mode == "binary" else u


@torch.no_grad()
def teacher_pass(batch: dict, globals_: Tensor, lam_g: Tensor, teacher: MultiCropNet,
                 settings: SemanticSettings) -> tuple[Tensor, PartLabels | None]:
    """The teacher's DINO outputs on the crop-major global crops (2B, 3, Hg, Wg) with their λ, and
    (semantics on) the part labels of those crops, with their source per crop.

    Labels come from keypoints where an image has them, otherwise from clustering the teacher's
    last-stage map computed with λ = 1. When clustering is needed, that map and the DINO pass share
    one forward over [crops at λ = 1, crops at their λ]: half the kernel launches of two passes,
    and larger matrix products.
    """
    if not settings.enabled:
        return teacher([globals_], [lam_g]).head, None
    n = globals_.shape[0]
    grid = token_grid(globals_.shape[-2:], num_stages=len(teacher.backbone.stages))
    from_kpts = None
    if settings.label_source != "clustering" and bool(batch["has_keypoints"].any()):  # host tensor
        kpts = to_crop_major(batch["global_keypoints"]).to(globals_.device)
        from_kpts = keypoint_part_labels(kpts, tuple(globals_.shape[-2:]), grid=grid,
                                         num_parts=settings.num_parts)
    need_clusters = from_kpts is None or not bool(from_kpts[1].all())
    from_clusters = None
    if settings.label_source != "keypoints" and need_clusters:
        fmap = teacher.backbone.forward_features(torch.cat([globals_, globals_]),
                                                 torch.cat([torch.ones_like(lam_g), lam_g]))
        from_clusters = cluster_part_labels(fmap[:n].float(), num_parts=settings.num_parts,
                                            min_foreground=settings.min_foreground)
        teacher_out = teacher.head(fmap[n:].mean(dim=(2, 3)))  # pooled as MultiCropNet.forward pools
    else:
        teacher_out = teacher([globals_], [lam_g]).head
    if from_kpts is None and from_clusters is None:  # label_source="keypoints" and none in the batch
        empty = torch.zeros(n, *grid, dtype=torch.long, device=globals_.device)
        from_kpts = (empty, torch.zeros(n, dtype=torch.bool, device=globals_.device))
    return teacher_out, combine_part_labels(from_kpts, from_clusters)


def solider_step(batch: dict, student: nn.Module, teacher: MultiCropNet, dino_loss: DINOLoss, step: int,
                 settings: SemanticSettings, seed: int = 0, koleo_weight: float = 0.0) -> StepResult:
    """Forward both networks and compute the loss of one step (see the module docstring).

    Args:
        batch: collated multi-crop items on the device: ``global_crops`` (B, 2, 3, Hg, Wg),
            ``local_crops`` (B, L, 3, Hl, Wl), ``global_keypoints`` (B, 2, 17, 3), ``has_keypoints`` (B,),
            ``index`` (B,) dataset indices.
        student: the (possibly DDP-wrapped) student :class:`MultiCropNet`; called exactly once.
        teacher: the teacher :class:`MultiCropNet` (no part head, no gradients).
        dino_loss: updates its centre as a side effect.
        step: global step (teacher-temperature schedule).
        seed: run seed; λ and the erased part are functions of (seed, step, image), the same on
            every process.
        koleo_weight: weight of the KoLeo regulariser on the student's pooled features of each
            unmasked global crop view (DINOv2); 0 skips it.
    """
    globals_ = to_crop_major(batch["global_crops"])  # (2B, 3, Hg, Wg)
    locals_ = to_crop_major(batch["local_crops"])  # (L*B, 3, Hl, Wl)
    n_global = batch["global_crops"].shape[1]
    n_local = batch["local_crops"].shape[1]
    device = globals_.device
    lam = semantic_weights(batch["index"], step, seed, settings, device)
    generator = torch.Generator().manual_seed(sample_seed(seed, step, -1))  # the erased part
    lam_g, lam_l = expand_to_crops(lam, n_global), expand_to_crops(lam, n_local)

    teacher_out, parts = teacher_pass(batch, globals_, lam_g, teacher, settings)

    part_index = masked = None
    labels = weights = part_valid = None
    n_masked_images: float | Tensor = 0.0
    if parts is not None and settings.static_shapes:
        # Every global crop gets a masked copy and goes to the part head; crops without labels
        # weigh 0 in the loss. Same loss and gradients as the official subset, fixed shapes.
        part_valid, labels, weights = parts.valid, parts.labels, lam_g
        if settings.masking:
            masked = mask_part(globals_, labels, choose_part(settings.num_parts, generator))
            part_index = torch.arange(2 * globals_.shape[0], device=device)
            labels, weights, part_valid = labels.repeat(2, 1, 1), weights.repeat(2), part_valid.repeat(2)
            n_masked_images = parts.valid.sum().float()
        else:
            part_index = torch.arange(globals_.shape[0], device=device)
    elif parts is not None:
        selected = parts.valid.nonzero().squeeze(1)  # labelled global crops
        labels, weights = parts.labels[selected], lam_g[selected]
        if settings.masking:
            masked = mask_part(globals_[selected], labels, choose_part(settings.num_parts, generator))
            part_index = torch.cat([torch.arange(len(selected), device=device), len(selected) + selected])
            labels, weights = labels.repeat(2, 1, 1), weights.repeat(2)
        else:
            part_index = selected
    n_masked = 0 if masked is None else masked.shape[0]
    if masked is not None and not settings.static_shapes:
        n_masked_images = float(n_masked)
    first = globals_ if masked is None else torch.cat([masked, globals_])
    masked_lam = None if masked is None else lam_g if settings.static_shapes else lam_g[parts.valid]
    first_lam = lam_g if masked is None else torch.cat([masked_lam, lam_g])
    out = student([first, locals_], [first_lam, lam_l], part_index=part_index)

    dino = dino_loss(out.head[n_masked:], teacher_out, step)
    loss = dino.loss
    metrics: dict[str, float | Tensor] = {
        "dino_loss": dino.loss.detach(), "teacher_entropy": dino.teacher_entropy,
        "teacher_entropy_ratio": dino.teacher_entropy / math.log(dino_loss.out_dim) if dino_loss.out_dim > 1
        else dino.teacher_entropy, "kl": dino.kl,
        "student_std": dino.student_std, "teacher_temp": dino.teacher_temp,
        "semantic_weight_mean": lam.mean(),
    }
    if koleo_weight > 0:
        batch_size = globals_.shape[0] // n_global
        views = out.pooled[n_masked:n_masked + globals_.shape[0]].split(batch_size)
        koleo = sum(koleo_loss(v) for v in views)
        loss = loss + koleo_weight * koleo
        metrics["koleo_loss"] = koleo.detach()
    if parts is not None:
        part_loss, part_acc = part_classification_loss(out.part_logits, labels, weights, valid=part_valid)
        loss = loss + settings.loss_weight * part_loss
        n = float(parts.valid.numel())
        metrics.update({
            "semantic_loss": part_loss.detach(), "part_accuracy": part_acc,
            "labelled_share": parts.valid.float().sum() / n,
            "keypoint_label_share": (parts.source == 1).float().sum() / n,
            "cluster_label_share": (parts.source == 2).float().sum() / n,
            "masked_images": n_masked_images,
        })
    metrics["loss"] = loss.detach()
    return StepResult(loss, metrics, parts)


def update_networks(student: MultiCropNet, teacher: MultiCropNet, optimizer: torch.optim.Optimizer, step: int,
                    momentum: float, freeze_last_layer: float, clip_grad: float = 0.0,
                    clip_mode: str = "per_param") -> None:
    """After the backward (and a mixed-precision unscale): clip (when ``clip_grad`` > 0), keep the
    head's last layer frozen for its first ``freeze_last_layer`` steps, optimizer step, then the
    teacher's EMA of the *unwrapped* student (backbone and head: the teacher has no part head)."""
    if clip_grad > 0:
        clip_gradients(student, clip_grad, clip_mode)
    cancel_last_layer_gradients(student.head, step, freeze_last_layer)
    optimizer.step()
    for name in ("backbone", "head"):
        ema_update_(getattr(teacher, name), getattr(student, name), momentum)
