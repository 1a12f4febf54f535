"""The op-count benchmark's "before" step is the same math as today's step, and costs more ops."""

from __future__ import annotations

import contextlib
import copy

import torch

from benchmarks.bench_step_ops import OpCounter, build, make_step
from benchmarks.earlier_step import check_same_backbone, earlier_model
from solider.dino import DINOLoss
from solider.pretrain_step import SemanticSettings, solider_step


def test_earlier_step_computes_todays_loss_with_more_ops(one_thread):
    cfg, student, teacher, raw, transform = build(2)
    check_same_backbone(copy.deepcopy(student.backbone), raw["global_crops"][:, 0].float() / 255)
    batch = transform.device_photometric()(raw)
    losses = []
    for earlier in (True, False):
        torch.manual_seed(1)  # the same drop-path draws
        with earlier_model() if earlier else contextlib.nullcontext():
            result = solider_step(batch, student, teacher, DINOLoss(cfg.dino.out_dim), 0,
                                  SemanticSettings(static_shapes=False), seed=0)
        losses.append(result.loss.detach())
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)

    counts = {}
    for lean in (False, True):
        step = make_step(cfg, student, teacher, raw, transform, lean=lean, photometric=False)
        step()  # warm-up
        with OpCounter() as counter:
            step()
        counts[lean] = sum(counter.ops.values()), counter.views
    (before, before_views), (after, after_views) = counts[False], counts[True]
    assert 0 < after_views < after < before
    assert after - after_views < (before - before_views) / 1.5
