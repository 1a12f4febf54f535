"""DINO self-distillation loss with teacher centering and sharpening, plus collapse monitors.

Layout of the outputs (what DINO's multi-crop wrapper produces, and what this loss assumes):
rows are **crop-major**, ``[crop 0 of every image, crop 1 of every image, ...]``:

- ``teacher_out`` (G*B, K): the G global crops (G = ``n_global`` = 2) of the B images;
- ``student_out`` (V*B, K): the same G global crops first, in the same order, then the local
  crops. SOLIDER also feeds the masked images through the student; slice them off before this
  loss (``student_out[n_masked:]``), as the official code does.

For teacher view t and student view v != t (same-view pairs are skipped)::

    P_t = softmax((teacher_t - center) / tau_t(step)),   log P_s = log_softmax(student_v / tau_s)
    loss = mean over the G*V - G pairs of  mean over images of  sum_k -P_t[k] log P_s[k]

then ``center <- m * center + (1 - m) * mean(teacher_out)``, the mean of the raw teacher logits
over the *global* batch (all processes). The current batch uses the previous center.

Reference: facebookresearch/dino ``main_dino.DINOLoss`` (commit 7c446df5) and Caron et al.,
"Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["DINOLossOutput", "DINOLoss", "std_of_l2_normalized", "all_reduce_sum"]


class DINOLossOutput(NamedTuple):
    """Result of :meth:`DINOLoss.forward`; every field but ``loss`` is detached.

    Attributes:
        loss: scalar, differentiable w.r.t. the student outputs.
        teacher_entropy: mean entropy H(P_t) of the teacher distributions (nats). Near 0 means
            one-hot collapse, near ln(K) uniform collapse.
        kl: mean over pairs and images of KL(P_t || P_s) (= loss - teacher_entropy). Near 0 with
            a high entropy is the uniform-collapse signature.
        student_std: :func:`std_of_l2_normalized` of the student outputs (0 when collapsed,
            about 1/sqrt(K) for well-spread outputs).
        teacher_temp: the teacher temperature used at this step.
    """

    loss: torch.Tensor
    teacher_entropy: torch.Tensor
    kl: torch.Tensor
    student_std: torch.Tensor
    teacher_temp: float


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32/float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` in place across processes when torch.distributed is initialised (a no-op
    in a single process, so every module runs on one CPU without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
def std_of_l2_normalized(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the per-dimension std (over samples) of L2-normalised rows.

    z: (N, K) -> scalar. A collapse monitor: 0 when every output is the same vector.
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"std_of_l2_normalized: expected (N >= 2, K), got {tuple(z.shape)}")
    return F.normalize(_upcast(z), dim=1).std(dim=0).mean()


class DINOLoss(nn.Module):
    """Cross-entropy between centered, sharpened teacher and student distributions.

    Args:
        out_dim: K, the width of the head outputs.
        n_global: G, the number of global crops seen by the teacher (2 in DINO/SOLIDER).
        student_temp: tau_s.
        teacher_temp: tau_t after warmup (0.04 in SOLIDER; above 0.07 is unstable per DINO).
        warmup_teacher_temp: tau_t at step 0.
        warmup_teacher_temp_steps: tau_t rises linearly from ``warmup_teacher_temp`` to
            ``teacher_temp`` over this many **optimizer steps** (``linspace`` semantics, as DINO's
            per-epoch array), then stays. Steps rather than epochs, like every other schedule;
            pass ``epochs * steps_per_epoch``. 0 = no warmup (SOLIDER).
        center_momentum: m of the center EMA.

    The ``center`` buffer (1, K) is part of ``state_dict()`` and must be checkpointed.
    """

    def __init__(self, out_dim: int, n_global: int = 2, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 warmup_teacher_temp: float = 0.04, warmup_teacher_temp_steps: int = 0,
                 center_momentum: float = 0.9) -> None:
        super().__init__()
        if out_dim < 1 or n_global < 1:
            raise ValueError(f"DINOLoss: out_dim and n_global must be >= 1, got {out_dim}, {n_global}")
        if min(student_temp, teacher_temp, warmup_teacher_temp) <= 0:
            raise ValueError(f"DINOLoss: temperatures must be > 0, got student_temp={student_temp}, "
                             f"teacher_temp={teacher_temp}, warmup_teacher_temp={warmup_teacher_temp}")
        if warmup_teacher_temp_steps < 0 or not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"DINOLoss: need warmup_teacher_temp_steps >= 0 and center_momentum in [0, 1], "
                             f"got {warmup_teacher_temp_steps}, {center_momentum}")
        self.out_dim = out_dim
        self.n_global = n_global
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_steps = int(warmup_teacher_temp_steps)
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temperature(self, step: int) -> float:
        """tau_t at ``step``: ``linspace(warmup, final, W)[step]`` for step < W, else final."""
        w = self.warmup_teacher_temp_steps
        if step < 0:
            raise ValueError(f"DINOLoss: step must be >= 0, got {step}")
        if step >= w:
            return self.teacher_temp
        if w == 1:
            return self.warmup_teacher_temp
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * step / (w - 1)

    def _check(self, student_out: torch.Tensor, teacher_out: torch.Tensor) -> tuple[int, int]:
        """Validate the shapes; return (B images, V student views)."""
        k = self.out_dim
        widths = {student_out.shape[-1], teacher_out.shape[-1]}
        if student_out.ndim != 2 or teacher_out.ndim != 2 or widths != {k}:
            raise ValueError(f"DINOLoss: expected student_out (V*B, {k}) and teacher_out (G*B, {k}), "
                             f"got {tuple(student_out.shape)} and {tuple(teacher_out.shape)}")
        n_t, n_s = teacher_out.shape[0], student_out.shape[0]
        if n_t == 0 or n_t % self.n_global:
            raise ValueError(f"DINOLoss: teacher_out has {n_t} rows, not a positive multiple of "
                             f"n_global={self.n_global}")
        batch = n_t // self.n_global
        if n_s % batch or n_s // batch < self.n_global:
            raise ValueError(f"DINOLoss: student_out has {n_s} rows; expected a multiple of the batch size "
                             f"{batch} with the {self.n_global} global crops first (chunks of equal size)")
        views = n_s // batch
        if self.n_global * views - self.n_global == 0:
            raise ValueError(f"DINOLoss: no teacher/student pair of different views "
                             f"(n_global={self.n_global}, {views} student view(s)); "
                             "add local crops or a second global crop")
        return batch, views

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, step: int) -> DINOLossOutput:
        """Loss for one step; updates ``center`` afterwards.

        Args:
            student_out: (V*B, K) student head outputs, crop-major, global crops first.
            teacher_out: (G*B, K) teacher head outputs on the G global crops, crop-major.
            step: global optimizer step (selects the teacher temperature).

        Returns:
            :class:`DINOLossOutput`.
        """
        batch, views = self._check(student_out, teacher_out)
        g, k = self.n_global, self.out_dim
        temp = self.teacher_temperature(step)
        # Work in (at least) float32 whatever the autocast dtype: the softmax over 65536 logits at
        # tau = 0.04 is sensitive, and DINO's autocast also runs softmax in float32.
        log_p_s = F.log_softmax(_upcast(student_out) / self.student_temp, dim=-1).view(views, batch, k)
        with torch.no_grad():
            t_logits = (_upcast(teacher_out.detach()) - self.center) / temp
            q = F.softmax(t_logits, dim=-1)
            log_q = F.log_softmax(t_logits, dim=-1)
            q = q.view(g, batch, k)
        # sum over pairs t != v of <q_t, log p_v> = <sum_t q_t, sum_v log p_v> - sum_t <q_t, log p_t>:
        # elementwise float32 work only (no matmul that TF32 could round, no (G, V, B, K) tensor).
        n_pairs = g * views - g
        cross = (q.sum(0) * log_p_s.sum(0)).sum() - (q * log_p_s[:g]).sum()
        loss = -cross / (batch * n_pairs)
        with torch.no_grad():
            entropy = -(q.reshape(g * batch, k) * log_q).sum(-1).mean()
            # every teacher view pairs with V - 1 student views, so the mean entropy over pairs is
            # the plain mean over teacher rows and KL = CE - H exactly.
            kl = loss.detach() - entropy
            student_std = std_of_l2_normalized(student_out.detach())
        self.update_center(teacher_out)
        return DINOLossOutput(loss, entropy, kl, student_std, temp)

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """``center <- m * center + (1 - m) * global batch mean of teacher_out`` (all processes).

        Sum and row count are all-reduced together, so uneven per-process batches still give
        the exact global mean.
        """
        t = teacher_out.detach().to(self.center.dtype)
        stats = torch.cat([t.sum(dim=0), t.new_tensor([t.shape[0]])])
        all_reduce_sum(stats)
        batch_center = (stats[:-1] / stats[-1]).unsqueeze(0)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)
