"""Every fine-tuning YAML parses; the recipe files hold the published recipes; dataset configs are the
SOLIDER-REID recipe; the demo's backbone is the pretraining demo's (so its checkpoints load)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from finetune.config import FinetuneConfig
from solider.config import load_config, to_dict

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FILES = sorted((CONFIGS / "finetune").glob("*.yaml"))


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_the_expected_files_exist():
    names = {f.name for f in FILES}
    assert {"bot.yaml", "solider_reid.yaml", "tao.yaml", "demo.yaml", "cuhk03_subset.yaml",
            "market1501_swin_tiny.yaml", "market1501_swin_small.yaml", "market1501_swin_base.yaml",
            "msmt17_swin_tiny.yaml"} <= names


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_every_config_parses(path):
    cfg = load_config(FinetuneConfig, path)
    assert cfg.train.batch_size % cfg.train.num_instances == 0


def test_solider_reid_file_spells_out_the_defaults():
    recipe = _flat(to_dict(load_config(FinetuneConfig, CONFIGS / "finetune" / "solider_reid.yaml")))
    defaults = _flat(to_dict(FinetuneConfig()))
    differ = {k for k in defaults if recipe[k] != defaults[k]}
    assert differ == {"output_dir"}
    assert recipe["optim.lr"] == 8e-4 and recipe["model.img_size"] == [384, 128]
    assert recipe["loss.triplet_soft_margin"] and recipe["model.neck_feat"] == "before"


@pytest.mark.parametrize("name", ["market1501_swin_tiny", "market1501_swin_small", "market1501_swin_base",
                                  "msmt17_swin_tiny"])
def test_dataset_configs_are_the_solider_reid_recipe(name):
    cfg = _flat(to_dict(load_config(FinetuneConfig, CONFIGS / "finetune" / f"{name}.yaml")))
    recipe = _flat(to_dict(load_config(FinetuneConfig, CONFIGS / "finetune" / "solider_reid.yaml")))
    differ = {k for k in recipe if cfg[k] != recipe[k]}
    assert differ <= {"output_dir", "data.root", "model.arch"}
    assert cfg["model.arch"] == "swin_" + name.rsplit("_", 1)[1] and cfg["data.root"]


def test_bot_and_tao_recipes():
    bot = load_config(FinetuneConfig, CONFIGS / "finetune" / "bot.yaml")
    o, loss = bot.optim, bot.loss
    assert (o.name, o.lr, o.weight_decay, o.schedule) == ("adam", 3.5e-4, 5e-4, "multistep")
    assert (o.warmup_epochs, o.warmup_factor, o.milestones) == (10, 0.01, (40, 70))
    assert (loss.label_smoothing, loss.center_weight, loss.triplet_soft_margin) == (0.1, 5e-4, False)
    assert bot.augment.mean == (0.485, 0.456, 0.406) and bot.augment.erasing_mode == "mean"
    assert bot.model.img_size == (256, 128) and bot.model.neck_feat == "after" and bot.train.epochs == 120
    tao = load_config(FinetuneConfig, CONFIGS / "finetune" / "tao.yaml")
    assert (tao.model.reduction_dim, tao.model.neck_feat, tao.model.img_size) == (256, "after", (256, 128))


def test_demo_backbone_is_the_pretraining_demo_backbone():
    demo = load_config(FinetuneConfig, CONFIGS / "finetune" / "demo.yaml")
    pretrain = yaml.safe_load((CONFIGS / "pretrain" / "demo.yaml").read_text())["model"]
    for key in ("arch", "embed_dim", "window_size"):
        assert getattr(demo.model, key) == pretrain[key], key
    assert list(demo.model.depths) == pretrain["depths"]
    assert list(demo.model.num_heads) == pretrain["num_heads"]
    assert demo.data.root is None  # the synthetic set
