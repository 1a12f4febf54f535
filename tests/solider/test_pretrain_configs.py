"""Every shipped pretraining config parses into the schema; the official recipe is the default."""

from pathlib import Path

import pytest

from solider.config import load_config
from solider.pretrain_config import PretrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "pretrain").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses(path):
    load_config(PretrainConfig, path)


def test_official_recipe_values():
    cfg = load_config(PretrainConfig, Path(CONFIGS[0]).parent / "swin_tiny.yaml")
    assert cfg.train.batch_size == 48 and cfg.train.epochs == 100
    assert cfg.model.img_size == (256, 128) and cfg.model.local_size == (128, 64)
    assert cfg.augment.n_local == 8 and cfg.augment.global_scale == (0.8, 1.0)
    assert cfg.dino.out_dim == 65536 and cfg.dino.teacher_temp == 0.04
    assert cfg.optim.lr * 384 / 256 == pytest.approx(7.5e-4)
    assert load_config(PretrainConfig) == load_config(PretrainConfig, None, ["model.arch=swin_tiny"])
