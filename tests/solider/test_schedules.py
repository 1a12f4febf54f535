"""cosine_schedule against the closed-form DINO formula; lr scaling; teacher temperature."""

from __future__ import annotations

import math

import numpy as np
import pytest

from solider.dino import DINOLoss
from solider.schedules import cosine_schedule, scale_lr


def closed_form(i: int, base: float, final: float, total: int, warmup: int, start: float) -> float:
    """Value at step i, straight from DINO's definition (linspace warmup, cosine over the rest)."""
    if i < warmup:
        return start + (base - start) * (i / (warmup - 1) if warmup > 1 else 0.0)
    j, n = i - warmup, total - warmup
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * j / n))


@pytest.mark.parametrize("base,final,total,warmup,start", [
    (7.5e-4, 1e-6, 1000, 100, 0.0),
    (0.04, 0.4, 57, 0, 0.0),          # weight decay rises
    (0.996, 1.0, 300, 0, 0.0),        # teacher momentum
    (1.0, 0.0, 10, 10, 0.5),          # warmup only
    (1.0, 0.1, 5, 1, 0.2),            # single warmup step = start value
])
def test_cosine_schedule_closed_form(base, final, total, warmup, start):
    sched = cosine_schedule(base, final, total, warmup_steps=warmup, start_warmup_value=start)
    assert sched.shape == (total,) and sched.dtype == np.float64
    checkpoints = {0, max(warmup - 1, 0), warmup, total - 1, total // 2}
    for i in sorted(c for c in checkpoints if c < total):
        expected = closed_form(i, base, final, total, warmup, start)
        assert sched[i] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    if warmup < total:
        assert sched[warmup] == pytest.approx(base)                     # first step after warmup
        if warmup > 1:
            assert sched[warmup - 1] == pytest.approx(base)             # warmup ends at base
        # the cosine index stops one short of n: the last value is not yet `final`
        n = total - warmup
        last = final + 0.5 * (base - final) * (1 + math.cos(math.pi * (n - 1) / n))
        assert sched[-1] == pytest.approx(last)


def test_monotonicity():
    lr = cosine_schedule(1e-3, 1e-6, 500, warmup_steps=50)
    assert np.all(np.diff(lr[:50]) > 0) and np.all(np.diff(lr[50:]) < 0)
    wd = cosine_schedule(0.04, 0.4, 500)
    assert np.all(np.diff(wd) > 0) and wd[0] == pytest.approx(0.04)
    m = cosine_schedule(0.996, 1.0, 500)
    assert np.all(np.diff(m) > 0) and m.max() < 1.0


def test_length_is_epochs_times_steps():
    assert len(cosine_schedule(1.0, 0.0, 100 * 37, warmup_steps=10 * 37)) == 3700


@pytest.mark.parametrize("kwargs,match", [
    (dict(total_steps=0), "total_steps"),
    (dict(total_steps=2.5), "total_steps"),
    (dict(total_steps=10, warmup_steps=11), "warmup_steps"),
    (dict(total_steps=10, warmup_steps=-1), "warmup_steps"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cosine_schedule(1.0, 0.0, **kwargs)


def test_scale_lr_linear_rule():
    assert scale_lr(5e-4, 8 * 48) == pytest.approx(7.5e-4)
    assert scale_lr(5e-4, 256) == 5e-4
    with pytest.raises(ValueError, match="positive"):
        scale_lr(5e-4, 0)


def test_teacher_temperature_per_step():
    loss = DINOLoss(4, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_steps=31)
    expected = np.linspace(0.04, 0.07, 31)
    for step in (0, 1, 15, 30):
        assert loss.teacher_temperature(step) == pytest.approx(expected[step], rel=1e-12)
    assert loss.teacher_temperature(31) == 0.07 and loss.teacher_temperature(10 ** 6) == 0.07
    assert DINOLoss(4).teacher_temperature(0) == 0.04
