"""The one key cleaner and checkpoint parser every backbone loader shares (solider.models.weights)."""

from __future__ import annotations

import pytest
import torch

from finetune.checkpoint import _reid_state_dict
from solider.checkpoint import CheckpointError
from solider.models.weights import (
    BACKBONE_PREFIXES,
    checkpoint_state_dict,
    clean_state_dict,
    find_prefix,
    unwrap_model,
)

WRAPPERS = ["", "module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module.", "module.module."]


@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("prefix", BACKBONE_PREFIXES)
def test_clean_state_dict_removes_every_wrapper_and_the_prefix(wrapper, prefix):
    value = torch.ones(2)
    sd = {f"{wrapper}{prefix}patch_embed.projection.weight": value, f"{wrapper}{prefix}norm3.bias": value,
          f"{wrapper}head.last_layer.weight": value}
    cleaned = clean_state_dict(sd)
    assert list(cleaned) == [f"{prefix}patch_embed.projection.weight", f"{prefix}norm3.bias",
                             "head.last_layer.weight"]
    assert cleaned[f"{prefix}norm3.bias"] is value  # the tensors themselves, not copies
    assert find_prefix(cleaned, "patch_embed.projection.weight") == prefix
    outside = [] if prefix else ["head.last_layer.weight"]  # everything is under the empty prefix
    assert list(clean_state_dict(sd, prefix)) == ["patch_embed.projection.weight", "norm3.bias", *outside]


def test_clean_state_dict_keeps_wrapper_names_inside_a_key():
    # Only leading wrappers are wrappers: a module named "module" deeper in the model stays.
    sd = {"module.backbone.module.weight": 1, "module_x.weight": 2}
    assert clean_state_dict(sd) == {"backbone.module.weight": 1, "module_x.weight": 2}
    assert clean_state_dict(sd, "backbone.") == {"module.weight": 1}


def test_find_prefix_needs_every_marker_and_takes_the_first_prefix():
    sd = {"base.conv1.weight": 0, "base.layer1.0.conv1.weight": 0, "backbone.conv1.weight": 0}
    assert find_prefix(sd, "conv1.weight", "layer1.0.conv1.weight") == "base."
    assert find_prefix(sd, "conv1.weight") == "backbone."
    assert find_prefix(sd, "fc.weight") is None


def test_checkpoint_state_dict_finds_the_entry_in_every_container():
    sd = {"module.backbone.w": 1}
    cases = {"teacher of a pretraining checkpoint": {"teacher": sd, "student": {"module.backbone.w": 2}},
             "'state_dict' entry": {"state_dict": sd, "epoch": 3},
             "'model' entry": {"model": sd, "config": {}},
             "bare state dict": sd}
    for layout, obj in cases.items():
        assert checkpoint_state_dict(obj) == ({"backbone.w": 1}, layout)
    pretraining = cases["teacher of a pretraining checkpoint"]
    assert checkpoint_state_dict(pretraining, "student")[0] == {"backbone.w": 2}
    with pytest.raises(CheckpointError, match="no 'student' entry"):
        checkpoint_state_dict({"model": sd}, "student", name="f.pt")
    with pytest.raises(CheckpointError, match="f.pt: expected a dict checkpoint, got list"):
        checkpoint_state_dict([1], name="f.pt")


def test_reid_head_entries_are_cleaned_like_the_backbone():
    obj = {"state_dict": {"module._orig_mod.model.classifier.weight": 1}, "epoch": 2}
    assert _reid_state_dict(obj) == {"model.classifier.weight": 1}
    assert _reid_state_dict({"teacher": {}, "student": {}}) == {}  # pretraining checkpoints have no head


def test_unwrap_model_sees_through_compile_and_ddp_style_wrappers():
    inner = torch.nn.Linear(2, 2)

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert unwrap_model(Wrapper(Wrapper(inner))) is inner
    assert unwrap_model(inner) is inner
