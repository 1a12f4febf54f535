"""Strict typed config: YAML + dotted overrides, closest-key suggestions, coercion, round trip."""

from dataclasses import dataclass
from typing import Literal

import pytest
import yaml

from solider.config import (
    ConfigError,
    build_arg_parser,
    config_from_args,
    config_from_dict,
    describe,
    flat_keys,
    load_config,
    opt,
    save_config,
    section,
    to_dict,
)


@dataclass
class OptimSection:
    lr: float = opt(5e-4, "base learning rate per 256 images", gt=0)
    betas: tuple[float, float] = opt((0.9, 0.999), "AdamW betas")
    warmup_epochs: int = opt(10, "linear warmup length", ge=0)


@dataclass
class ModelSection:
    arch: str = opt("swin_tiny", "backbone name")
    img_size: tuple[int, int] = opt((256, 128), "input height, width")
    precision: Literal["no", "bf16", "fp16"] = opt("no", "mixed precision")


@dataclass
class Schema:
    output_dir: str = opt("runs/x", "where outputs go")
    seed: int = opt(0, "random seed")
    resume: str | None = opt(None, "a checkpoint path or 'auto'")
    use_fp16: bool = opt(False, "half precision")
    tags: list[str] = opt([], "free-form tags")
    optim: OptimSection = section(OptimSection, "optimizer")
    model: ModelSection = section(ModelSection)


def test_defaults_and_override_coercion():
    cfg = load_config(Schema, None, ["optim.lr=1e-3", "seed=3", "use_fp16=true",
                                     "model.img_size=384x128", "optim.betas=[0.8,0.9]",
                                     "tags=a,b", "resume=auto", "model.precision=bf16"])
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.seed == 3 and cfg.use_fp16 is True
    assert cfg.model.img_size == (384, 128)
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.tags == ["a", "b"]
    assert cfg.resume == "auto" and cfg.model.precision == "bf16"
    # defaults of mutable fields are not shared between instances
    other = Schema()
    other.tags.append("z")
    assert Schema().tags == []


def test_int_is_accepted_for_float_and_none_for_optional():
    cfg = load_config(Schema, None, ["optim.lr=1", "resume=null"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float) and cfg.resume is None


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 7\noptim:\n  lr: 0.002\nmodel:\n  img_size: [128, 64]\n")
    cfg = load_config(Schema, path, ["optim.lr=0.003"])
    assert cfg.seed == 7 and cfg.optim.lr == 0.003 and cfg.model.img_size == (128, 64)


@pytest.mark.parametrize("override, suggestion", [
    ("optim.lrr=1", "optim.lr"),
    ("optm.lr=1", "optim.lr"),
    ("model.archh=swin_small", "model.arch"),
    ("seeed=1", "seed"),
])
def test_unknown_key_names_the_closest_valid_key(override, suggestion):
    with pytest.raises(ConfigError, match=f"did you mean '{suggestion}'"):
        load_config(Schema, None, [override])


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match=r"optim.learning_rate.*bad.yaml"):
        load_config(Schema, path)


@pytest.mark.parametrize("override, message", [
    ("seed=abc", "seed: expected an int"),
    ("seed=1.5", "seed: expected an int"),
    ("use_fp16=maybe", "use_fp16: expected a bool"),
    ("optim.lr=fast", "optim.lr: expected a float"),
    ("model.img_size=[1,2,3]", "expected 2 values"),
    ("model.precision=fp8", "not one of"),
    ("optim.lr=-0.1", "optim.lr: value -0.1 must be > 0"),
    ("optim.warmup_epochs=-1", "must be >= 0"),
    ("optim=3", "must be a mapping"),
    ("noequals", "key=value"),
])
def test_wrong_values_raise_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Schema, None, [override])


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Schema, tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Schema, bad)


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(Schema, None, ["optim.lr=0.01", "model.img_size=384x128", "tags=[x]"])
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    data = yaml.safe_load(path.read_text())
    assert data["model"]["img_size"] == [384, 128]
    assert load_config(Schema, path) == cfg
    assert config_from_dict(Schema, to_dict(cfg)) == cfg


def test_validate_hook_runs():
    @dataclass
    class WithHook:
        a: int = opt(1, "a")
        b: int = opt(2, "b, must exceed a")

        def validate(self):
            if self.b <= self.a:
                raise ConfigError(f"b ({self.b}) must exceed a ({self.a})")

    assert load_config(WithHook).b == 2
    with pytest.raises(ConfigError, match="must exceed"):
        load_config(WithHook, None, ["b=0"])


def test_flat_keys_describe_and_cli(capsys):
    assert "optim.lr" in flat_keys(Schema) and "optim" not in flat_keys(Schema)
    text = describe(Schema)
    assert "optim.lr = 0.0005" in text and "base learning rate" in text
    parser = build_arg_parser(Schema, "test")
    args = parser.parse_args(["seed=5", "optim.lr=0.1"])
    cfg = config_from_args(Schema, args)
    assert cfg.seed == 5 and cfg.optim.lr == 0.1
    with pytest.raises(SystemExit):
        config_from_args(Schema, parser.parse_args(["--print-config", "seed=9"]))
    assert "seed: 9" in capsys.readouterr().out


def test_a_shared_section_takes_the_schemas_own_defaults():
    @dataclass
    class Other:
        model: ModelSection = section(ModelSection, "backbone", img_size=(384, 128))

    assert Other().model.img_size == (384, 128) and Schema().model.img_size == (256, 128)
    assert load_config(Other, None, ["model.arch=x"]).model.img_size == (384, 128)
    assert "model.img_size = [384, 128]" in describe(Other)
    with pytest.raises(TypeError, match="no keys"):
        section(ModelSection, "backbone", img_sise=(1, 1))
