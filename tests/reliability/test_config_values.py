"""Config values (issue 13, class 9): duplicate YAML keys and out-of-domain values stop both training
entry points at config time, naming the user's key, before ``output_dir`` exists."""

from __future__ import annotations

import pytest

from finetune.run import main as finetune_main
from solider.config import ConfigError
from solider.pretrain import main as pretrain_main
from tests.reliability.runs import finetune_args, pretrain_args

BAD_VALUES = [
    ("optim.lr=nan", r"optim.lr: value nan is not a finite number"),
    ("optim.weight_decay=inf", r"optim.weight_decay: value inf is not a finite number"),
    ("augment.std=[0.5,0.0,0.5]", r"augment.std\[1\]: value 0.0 must be > 0"),
    ("augment.std=[0.5,-1,0.5]", r"augment.std\[1\]: value -1.0 must be > 0"),
    ("model.img_size=[0,32]", r"model.img_size\[0\]: value 0 must be > 0"),
    ("model.img_size=[64,-32]", r"model.img_size\[1\]: value -32 must be > 0"),
    ("seed=-1", r"seed: value -1 must be in \[0, 2\*\*32\)"),
    (f"seed={2**32}", r"seed: value 4294967296 must be in \[0, 2\*\*32\)"),
    ("output_dir=", r"output_dir: must not be empty"),
]


@pytest.mark.parametrize("entry", ["pretrain", "finetune"])
@pytest.mark.parametrize("override,message", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_out_of_domain_values_are_refused_naming_the_key(entry, override, message, pretrain_market, tmp_path):
    out = tmp_path / "run"
    args = pretrain_args(pretrain_market, out) if entry == "pretrain" else finetune_args(pretrain_market, out)
    with pytest.raises(ConfigError, match=message):
        (pretrain_main if entry == "pretrain" else finetune_main)([*args, override])
    assert not out.exists()


@pytest.mark.parametrize("entry", ["pretrain", "finetune"])
def test_a_duplicated_yaml_key_is_an_error_naming_the_file_and_lines(entry, pretrain_market, tmp_path):
    """A second ``train:`` section used to replace the first whole (2 steps became 120 epochs)."""
    config = tmp_path / "dup.yaml"
    config.write_text("train:\n  max_steps: 2\nseed: 3\ntrain:\n  epochs: 120\n")
    out = tmp_path / "run"
    args = pretrain_args(pretrain_market, out) if entry == "pretrain" else finetune_args(pretrain_market, out)
    with pytest.raises(ConfigError, match=r"dup.yaml is not valid YAML: duplicate key 'train' at line 1 "
                                          r"and again at line 4"):
        (pretrain_main if entry == "pretrain" else finetune_main)([*args, "--config", str(config)])
    assert not out.exists()


def test_duplicates_in_nested_sections_and_defaults_that_stay_valid(tmp_path):
    from solider.config import load_config
    from solider.pretrain_config import PretrainConfig

    config = tmp_path / "nested.yaml"
    config.write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        load_config(PretrainConfig, config)
    config.write_text("optim:\n  lr: 0.1\ntrain:\n  epochs: 2\nseed: 4294967295\n")
    cfg = load_config(PretrainConfig, config)
    assert (cfg.optim.lr, cfg.train.epochs, cfg.seed) == (0.1, 2, 2**32 - 1)


def test_errors_about_keys_set_by_a_flag_name_the_flag(finetune_market, tmp_path):
    from eval.evaluate import main as evaluate_main

    with pytest.raises(ConfigError, match=r"^--out \(output_dir\): must not be empty"):
        evaluate_main(["--data", str(finetune_market), "--checkpoint", "random", "--out", ""])
    with pytest.raises(ConfigError, match=r"^optim.lr: value nan"):  # other keys keep their name
        finetune_main([*finetune_args(finetune_market, tmp_path / "run"), "optim.lr=nan"])
