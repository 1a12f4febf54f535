"""cosine_schedule against the closed-form DINO formula; lr scaling; teacher temperature."""

from __future__ import annotations

import math

import numpy as np
import pytest

from solider.dino import DINOLoss
from solider.schedules import (
    auto_momentum,
    cosine_schedule,
    parse_span,
    scale_lr,
    span_steps,
    teacher_movement,
)


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


# ------------------------------------------------------------- spans and the momentum rule

@pytest.mark.parametrize("value,spe,total,expected", [
    (10, 113, 452, 452),          # a number is epochs, capped at the run
    (1, 113, 452, 113),
    (0.5, 113, 452, 56),          # fractional epochs round to the nearest step (56.5 -> 56, banker's)
    ("1.5ep", 10, 100, 15),
    ("2 epochs", 10, 100, 20),
    ("300 steps", 10, 1000, 300),
    ("40st", 10, 1000, 40),
    ("10%", 113, 452, 45),        # 45.2
    ("25 %", 4, 10, 2),           # 2.5 -> 2
    ("100%", 7, 30, 30),
    (0, 5, 50, 0),
])
def test_span_steps(value, spe, total, expected):
    assert span_steps(value, spe, total) == expected


@pytest.mark.parametrize("bad", ["ten", "5 minutes", "-1 steps", "150%", "2.5 steps", True, float("nan")])
def test_bad_spans_are_refused_naming_the_key(bad):
    with pytest.raises(ValueError, match="optim.warmup_epochs"):
        parse_span(bad, "optim.warmup_epochs")


def test_span_keys_are_checked_at_config_time():
    from solider.config import ConfigError, load_config
    from solider.pretrain_config import PretrainConfig

    cfg = load_config(PretrainConfig, None, ["optim.warmup_epochs=5%",
                                             "dino.freeze_last_layer_epochs=30 steps"])
    assert cfg.optim.warmup_epochs == "5%" and cfg.dino.freeze_last_layer_epochs == "30 steps"
    assert load_config(PretrainConfig, None, ["optim.warmup_epochs=2.5"]).optim.warmup_epochs == 2.5
    with pytest.raises(ConfigError, match="dino.warmup_teacher_temp_epochs"):
        load_config(PretrainConfig, None, ["dino.warmup_teacher_temp_epochs=soon"])
    assert load_config(PretrainConfig, None, ["dino.momentum_teacher=auto"]).dino.momentum_teacher == "auto"
    with pytest.raises(ConfigError, match="dino.momentum_teacher"):
        load_config(PretrainConfig, None, ["dino.momentum_teacher=1.5"])


@pytest.mark.parametrize("total,target", [(452, 5.0), (226, 3.0), (10_000, 5.0), (1000, 1.0)])
def test_auto_momentum_moves_the_teacher_by_the_target(total, target):
    m0 = auto_momentum(total, target)
    movement = teacher_movement(cosine_schedule(m0, 1.0, total))
    # by definition: the sum over the schedule of (1 - m), straight from the array
    assert movement[-1] == pytest.approx(sum(1.0 - m for m in cosine_schedule(m0, 1.0, total)), rel=1e-12)
    assert movement[-1] == pytest.approx(target, rel=1e-9)
    assert np.all(np.diff(movement) >= 0)


def test_auto_momentum_floor_for_runs_too_short_for_the_target():
    assert auto_momentum(20, 5.0) == 0.9  # 1 - 10/21 would be 0.52
    with pytest.raises(ValueError):
        auto_momentum(0, 5.0)


def test_the_study_v1_schedule_moved_the_teacher_about_one():
    """The figure that motivated the rule: 0.99 -> 1 over 226 steps moves the teacher ~1.1 in all."""
    assert teacher_movement(cosine_schedule(0.99, 1.0, 226))[-1] == pytest.approx(1.135, abs=1e-3)
