"""The shared Swin keys of the pretraining and fine-tuning model sections."""

from __future__ import annotations

import pytest

from finetune.config import FinetuneConfig
from solider.config import ConfigError, load_config
from solider.pretrain_config import PretrainConfig

CUSTOM = ["model.arch=custom", "model.embed_dim=32", "model.depths=[2,2,2]", "model.num_heads=[2,4,8]"]


@pytest.mark.parametrize("schema", [PretrainConfig, FinetuneConfig])
def test_both_schemas_share_the_arch_keys_and_their_checks(schema):
    assert load_config(schema).model.arch_spec() == "swin_tiny"
    cfg = load_config(schema, overrides=CUSTOM)
    assert cfg.model.arch_spec() == {"embed_dim": 32, "depths": (2, 2, 2), "num_heads": (2, 4, 8),
                                     "window_size": 7}
    with pytest.raises(ConfigError, match=r"model.depths \(2, 2, 2\) and model.num_heads \(2, 4\) must have"):
        load_config(schema, overrides=[*CUSTOM, "model.num_heads=[2,4]"])


def test_finetuning_adds_resnets_and_keeps_its_own_checks():
    assert load_config(FinetuneConfig, overrides=["model.arch=resnet50"]).model.arch_spec() == "resnet50"
    with pytest.raises(ConfigError, match="model.arch='resnet50'"):
        load_config(PretrainConfig, overrides=["model.arch=resnet50"])  # pretraining is Swin only
    with pytest.raises(ConfigError, match="expected one of"):
        load_config(FinetuneConfig, overrides=["model.arch=vit"])
