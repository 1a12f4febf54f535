"""The command line every entry point shares: options and overrides in any order, the base-config
rule (no --config: the demo config, never the GPU recipe's schema defaults), and user errors as one
line without a traceback (SOLIDER_DEBUG=1 shows it)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune.run import main as finetune_main
from solider.pretrain import main as pretrain_main
from solider.utils.cli import USER_ERROR_EXIT

ROOT = Path(__file__).resolve().parents[3]


def _printed_config(main, argv, capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--print-config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_pretrain_takes_options_and_overrides_in_any_order(capsys):
    demo = str(ROOT / "configs" / "pretrain" / "demo.yaml")
    cfg = _printed_config(pretrain_main, ["seed=3", "--config", demo, "train.max_steps=2"], capsys)
    assert cfg["seed"] == 3 and cfg["train"]["max_steps"] == 2 and cfg["model"]["embed_dim"] == 32


def test_overrides_without_config_apply_to_the_demo_config(capsys):
    # one override used to switch to the schema's defaults: Swin-T at 256x128 with 65,536 prototypes
    pre = _printed_config(pretrain_main, ["output_dir=somewhere", "train.max_steps=1"], capsys)
    assert pre["output_dir"] == "somewhere" and pre["train"]["max_steps"] == 1
    assert pre["model"]["arch"] == "custom" and pre["model"]["embed_dim"] == 32
    assert pre["dino"]["out_dim"] == 1024 and pre["model"]["img_size"] == [128, 64]
    official = _printed_config(pretrain_main, ["--config", str(ROOT / "configs/pretrain/swin_tiny.yaml"),
                                               "train.max_steps=1"], capsys)
    assert official["model"]["arch"] == "swin_tiny" and official["dino"]["out_dim"] == 65536

    ft = _printed_config(finetune_main, ["--init", "none", "train.max_steps=5"], capsys)
    assert ft["model"]["arch"] == "custom" and ft["model"]["img_size"] == [64, 32]
    assert ft["train"]["max_steps"] == 5 and ft["init"]["path"] is None


def _entry(args: list[str], cwd: Path = ROOT, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "SOLIDER_DEBUG"}
    environ.update(OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=environ)


@pytest.mark.slow
def test_one_override_without_config_is_a_short_cpu_run(tmp_path):
    # the rule of issue 16: any override without --config finishes a 1-step run on a small CPU in
    # minutes (it used to build the 65,536-prototype Swin-T recipe and be killed for memory)
    done = _entry([str(ROOT / "solider" / "pretrain.py"), "train.max_steps=1",
                   f"output_dir={tmp_path / 'run'}", f"data.cache_dir={ROOT / '.cache' / 'synthetic'}"],
                  cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "configs/pretrain/demo.yaml (the demo: no --config given" in done.stderr
    assert "GPU-sized" not in done.stderr and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_a_config_typo_is_one_line_without_traceback():
    done = _entry(["solider/pretrain.py", "train.max_steps=1", "optim.lrr=1"])
    assert done.returncode == USER_ERROR_EXIT
    assert "Traceback" not in done.stderr
    assert "solider/pretrain.py: error: unknown config key 'optim.lrr'" in done.stderr
    assert "did you mean 'optim.lr'" in done.stderr and "SOLIDER_DEBUG=1" in done.stderr


def test_an_output_folder_with_results_is_one_line_without_traceback(tmp_path):
    """The results rule (issue 13) and the clean-error rule (issue 16) together: a folder that holds a
    finished run is refused in one line naming resume=auto and overwrite=true."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.pt").write_bytes(b"a finished run's checkpoint")
    done = _entry(["solider/pretrain.py", "train.max_steps=1", f"output_dir={tmp_path / 'run'}"])
    assert done.returncode == USER_ERROR_EXIT, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "already holds the results of a run" in done.stderr and "resume=auto" in done.stderr


def test_a_wrong_data_root_is_cut_short_and_the_traceback_is_behind_the_debug_switch(tmp_path):
    images = tmp_path / "bounding_box_train"  # data.root one level too deep
    images.mkdir()
    for i in range(40):
        (images / f"{i:04d}_c1s1_000000_00.jpg").write_bytes(b"")
    args = ["eval/evaluate.py", "--checkpoint", "random", "--out", str(tmp_path / "out"),
            "--data", str(images), "data.num_workers=0"]
    done = _entry(args)
    assert done.returncode == USER_ERROR_EXIT and "Traceback" not in done.stderr
    assert "is neither Market-1501 layout" in done.stderr and "(and 32 more)" in done.stderr
    assert "0039_c1s1" not in done.stderr
    debug = _entry(args, SOLIDER_DEBUG="1")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_export_and_infer_name_what_they_take():
    done = _entry(["finetune/export.py", "--checkpoint", "x.pt", "seed=3", "--out", "m.onnx"])
    assert done.returncode == 2 and "takes no key=value config overrides" in done.stderr
    missing = _entry(["finetune/infer.py", "--out", "e.json", "--model", "nowhere.pt", "--images", "."])
    assert missing.returncode == USER_ERROR_EXIT and "Traceback" not in missing.stderr
    assert "nowhere.pt" in missing.stderr
