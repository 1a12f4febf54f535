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

Two options the field uses against collapse at small scale, both off by default (official DINO):

- ``centering="sinkhorn"`` replaces the running center by Sinkhorn-Knopp normalisation of the
  teacher's targets over the global batch (SwAV, iBOT, DINOv2): P_t is the exp(teacher_t / tau_t)
  matrix scaled so that every prototype gets the same total mass and every image a distribution.
  Unlike the running center it balances the prototypes within each batch, so it cannot lag behind
  a drifting teacher.
- :func:`koleo_loss` (DINOv2's KoLeo regulariser, Sablayrolles et al. 2019) spreads the student's
  L2-normalised features by pushing each one away from its nearest neighbour in the batch.

Reference: facebookresearch/dino ``main_dino.DINOLoss`` (commit 7c446df5) and Caron et al.,
"Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["DINOLossOutput", "DINOLoss", "std_of_l2_normalized", "all_reduce_sum", "sinkhorn_knopp",
           "koleo_loss", "effective_rank"]


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


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` in place across processes when torch.distributed is initialised (a no-op
    in a single process, so every module runs on one CPU without a process group)."""
    if _distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp targets (N, K) from teacher logits (N, K) over the global batch.

    Starting from ``exp(logits / temp)``, alternately give every prototype (column) the mass 1/K
    and every row the mass 1/N_global, ``iterations`` times, ending on the rows; the result is
    scaled so that each row sums to 1. Sums run over all processes, so sharding the batch does not
    change the targets. The logits are shifted by their global maximum first (a constant factor
    that the first normalisation removes) so ``exp`` cannot overflow at small temperatures.
    """
    if logits.ndim != 2 or iterations < 1:
        raise ValueError(f"sinkhorn_knopp: expected (N, K) logits and iterations >= 1, "
                         f"got {tuple(logits.shape)} and {iterations}")
    x = _upcast(logits) / temp
    peak = x.max().reshape(1)
    if _distributed():
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    q = torch.exp(x - peak)
    rows = all_reduce_sum(q.new_tensor([float(q.shape[0])]))
    k = q.shape[1]
    q = q / all_reduce_sum(q.sum().reshape(1))
    tiny = torch.finfo(q.dtype).tiny  # a prototype no image reaches (exp underflow) keeps mass 0, not NaN
    for _ in range(iterations):
        q = q / all_reduce_sum(q.sum(dim=0, keepdim=True)).clamp_min(tiny) / k  # every prototype: 1/K
        q = q / q.sum(dim=1, keepdim=True).clamp_min(tiny) / rows  # every image: mass 1/N
    return q * rows


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo spread regulariser: ``-mean_i log(min_{j != i} ||x_i - x_j|| + eps)`` on L2-normalised rows.

    features: (N >= 2, D) -> scalar, differentiable. Per process, as in DINOv2 (no gathering).
    """
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"koleo_loss: expected (N >= 2, D), got {tuple(features.shape)}")
    x = F.normalize(_upcast(features), dim=1, eps=eps)
    with torch.no_grad():  # the nearest neighbour by cosine; the distance below carries the gradient
        sim = x @ x.t()
        sim.fill_diagonal_(-2.0)
        nearest = sim.argmax(dim=1)
    distance = (x - x[nearest]).pow(2).sum(dim=1).add(eps * eps).sqrt()
    return -torch.log(distance + eps).mean()


@torch.no_grad()
def effective_rank(features: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of the centred features (Roy & Vetterli 2007).

    features: (N, D). 1 when every row is the same direction up to an offset, min(N-1, D) at most.
    """
    x = _upcast(features) - _upcast(features).mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x.double())
    total = s.sum()
    if total <= 0:
        return 1.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


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
        centering: ``"center"`` (official: subtract the running center) or ``"sinkhorn"``
            (Sinkhorn-Knopp targets, :func:`sinkhorn_knopp`; the center is then left unused).
        sinkhorn_iterations: Sinkhorn-Knopp iterations (DINOv2: 3).

    The ``center`` buffer (1, K) is part of ``state_dict()`` and must be checkpointed.
    """

    def __init__(self, out_dim: int, n_global: int = 2, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 warmup_teacher_temp: float = 0.04, warmup_teacher_temp_steps: int = 0,
                 center_momentum: float = 0.9, centering: str = "center",
                 sinkhorn_iterations: int = 3) -> None:
        super().__init__()
        if out_dim < 1 or n_global < 1:
            raise ValueError(f"DINOLoss: out_dim and n_global must be >= 1, got {out_dim}, {n_global}")
        if min(student_temp, teacher_temp, warmup_teacher_temp) <= 0:
            raise ValueError(f"DINOLoss: temperatures must be > 0, got student_temp={student_temp}, "
                             f"teacher_temp={teacher_temp}, warmup_teacher_temp={warmup_teacher_temp}")
        if warmup_teacher_temp_steps < 0 or not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"DINOLoss: need warmup_teacher_temp_steps >= 0 and center_momentum in [0, 1], "
                             f"got {warmup_teacher_temp_steps}, {center_momentum}")
        if centering not in ("center", "sinkhorn") or sinkhorn_iterations < 1:
            raise ValueError(f"DINOLoss: centering must be 'center' or 'sinkhorn' and sinkhorn_iterations "
                             f">= 1, got {centering!r}, {sinkhorn_iterations}")
        self.centering = centering
        self.sinkhorn_iterations = int(sinkhorn_iterations)
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
            if self.centering == "sinkhorn":
                q = sinkhorn_knopp(teacher_out.detach(), temp, self.sinkhorn_iterations)
                log_q = torch.log(q.clamp_min(torch.finfo(q.dtype).tiny))
            else:
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
        if self.centering == "center":
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
