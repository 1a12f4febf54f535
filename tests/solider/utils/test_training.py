"""The deferred finiteness check: device-side record, host read only when asked."""

import pytest
import torch

from solider.utils.distributed import build_accelerator
from solider.utils.training import (
    FiniteWatch,
    NonFiniteLossError,
    RNGStates,
    check_finite,
    mean_over_processes,
)


def test_finite_watch_reports_the_first_bad_step_when_checked():
    acc = build_accelerator("no", log_with=None)
    watch = FiniteWatch(torch.device("cpu"))
    for step in range(3):
        watch.observe(torch.tensor(1.5), step)
    watch.check(acc, 3, {"loss": 1.5}, "advice")  # all finite: passes
    watch.observe(torch.tensor(float("nan")), 3)
    watch.observe(torch.tensor(2.0), 4)
    watch.observe(torch.tensor(float("inf")), 5)
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite loss at step 3 \(checked at step 6; latest terms: "
        r"loss=inf\); the run stops .* Try this",
    ):
        watch.check(acc, 6, {"loss": torch.tensor(float("inf"))}, "Try this.")


def test_check_finite_stops_on_a_bad_loss():
    acc = build_accelerator("no", log_with=None)
    check_finite(acc, torch.tensor(0.3), 1, {"loss": 0.3}, "")
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 2"):
        check_finite(acc, torch.tensor(float("nan")), 2, {"loss": float("nan")}, "")


def test_rng_states_round_trip_as_a_checkpoint_entry():
    acc = build_accelerator("no", log_with=None)
    entry = RNGStates(acc)
    torch.manual_seed(5)
    saved = entry.state_dict()
    expected = torch.rand(3)
    torch.manual_seed(6)
    entry.load_state_dict(saved)
    assert len(saved) == 1 and torch.equal(torch.rand(3), expected)


def test_mean_over_processes_one_process():
    acc = build_accelerator("no", log_with=None)
    assert mean_over_processes(acc, {"b": torch.tensor(2.0), "a": 0.5}) == {"a": 0.5, "b": 2.0}
