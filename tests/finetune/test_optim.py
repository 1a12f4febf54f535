"""Parameter groups and the two per-epoch lr schedules against the reference values and formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from finetune.optim import LRSchedule, build_optimizer, cosine_lr, multistep_lr, param_groups, set_epoch_lr
from tests.reference.naive_reid_losses import naive_bot_lr, naive_timm_cosine_lr

# docs/reference/solider.md §5: BASE 8e-4, rounded as printed there (3 digits; 1.7e-6: 2)
SOLIDER_REID_VALUES = {1: 8.00e-6, 2: 4.76e-5, 20: 7.60e-4, 21: 7.47e-4, 60: 4.11e-4, 120: 1.7e-6}
# docs/reference/dino-tao-bot.md §3.1
BOT_VALUES = {1: 3.815e-5, 2: 7.28e-5, 3: 1.0745e-4, 9: 3.1535e-4}


def _solider_reid(base: float = 8e-4) -> LRSchedule:
    return LRSchedule("cosine", base, total_epochs=120, warmup_epochs=20, warmup_factor=0.01,
                      min_factor=0.002)


def _bot(base: float = 3.5e-4) -> LRSchedule:
    return LRSchedule("multistep", base, total_epochs=120, warmup_epochs=10, warmup_factor=0.01,
                      milestones=(40, 70), gamma=0.1)


@pytest.mark.parametrize("epoch,value", SOLIDER_REID_VALUES.items())
def test_solider_reid_schedule_reference_values(epoch, value):
    half_unit = 0.05e-6 if epoch == 120 else 0.005 * 10 ** math.floor(math.log10(value))
    assert _solider_reid().lr(epoch) == pytest.approx(value, abs=half_unit)


def test_bot_schedule_reference_values():
    s = _bot()
    for epoch, value in BOT_VALUES.items():
        assert s.lr(epoch) == pytest.approx(value, rel=1e-9)
    for epochs, value in ((range(10, 40), 3.5e-4), (range(40, 70), 3.5e-5), (range(70, 121), 3.5e-6)):
        assert all(s.lr(e) == pytest.approx(value, rel=1e-9) for e in epochs)


@pytest.mark.parametrize("base,scale", [(8e-4, 1.0), (8e-4, 2.0), (2e-4, 2.0), (1e-2, 0.5)])
def test_schedules_match_the_naive_formulas_per_group(base, scale):
    cos, step = _solider_reid(base), _bot(base)
    for epoch in range(1, 131):
        ref = naive_timm_cosine_lr(min(epoch, 120), base * scale, base) if epoch <= 120 else 0.002 * base
        assert cos.lr(epoch, scale) == pytest.approx(ref, rel=1e-12)
        assert step.lr(epoch, scale) == pytest.approx(naive_bot_lr(epoch, base * scale), rel=1e-12)


def test_cosine_warmup_starts_every_group_at_the_same_value():
    # timm: warmup_lr_init is absolute, so the bias group (x2) also starts at 0.01 x base in epoch 1
    s = _solider_reid()
    assert s.lr(1, 2.0) == s.lr(1, 1.0) == pytest.approx(8e-6)
    floor = 0.002 * 8e-4
    assert s.lr(21, 2.0) == pytest.approx(floor + 0.5 * (1.6e-3 - floor) * (1 + math.cos(math.pi / 6)))
    assert cosine_lr(200, 1.0, 1.0, 120) == pytest.approx(0.002)  # after the cycle: the floor


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="1-based"):
        multistep_lr(0, 1.0)
    with pytest.raises(ValueError, match="1-based"):
        cosine_lr(0, 1.0, 1.0, 10)
    with pytest.raises(ValueError, match="expected 'cosine' or 'multistep'"):
        LRSchedule("linear", 1.0, 10)
    with pytest.raises(ValueError, match="'sgd', 'adam' or 'adamw'"):
        build_optimizer([{"params": [nn.Parameter(torch.zeros(1))]}], "lamb", 1.0)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.table = nn.Parameter(torch.zeros(5))
        self.relative_position_bias_table = nn.Parameter(torch.zeros(4))
        self.frozen = nn.Parameter(torch.zeros(2), requires_grad=False)


def test_param_groups_bias_rule_and_set_epoch_lr():
    net = _Net()
    groups = param_groups(net, weight_decay=1e-4, weight_decay_bias=0.0, bias_lr_factor=2.0)
    names = {id(p): n for n, p in net.named_parameters()}
    by_name = {g["name"]: sorted(names[id(p)] for p in g["params"]) for g in groups}
    # the reference's substring rule: "bias" anywhere in the name (Swin's bias table included)
    assert by_name == {"weights": ["fc.weight", "table"],
                       "biases": ["fc.bias", "relative_position_bias_table"]}
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    opt = build_optimizer(groups, "sgd", lr=8e-4, momentum=0.9)
    schedule = _solider_reid()
    assert set_epoch_lr(opt, schedule, 30) == pytest.approx(schedule.lr(30))
    assert opt.param_groups[1]["lr"] == pytest.approx(schedule.lr(30, 2.0))
    assert opt.param_groups[0]["momentum"] == 0.9
    assert isinstance(build_optimizer(groups, "adam", 3.5e-4), torch.optim.Adam)
