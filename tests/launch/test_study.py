"""The study driver (launch/study.py): its plan of runs, its commands against the real config
schemas (both presets), and its tables (launch/study_report.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from finetune.config import FinetuneConfig
from solider.config import load_config
from solider.pretrain_config import PretrainConfig

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("study", ROOT / "launch" / "study.py")
study = importlib.util.module_from_spec(_spec)
sys.modules["study"] = study  # dataclasses look the module up while the file runs
_spec.loader.exec_module(study)
report = sys.modules["study_report"].report


def _plan(tmp_path, stages=study.DEFAULT_STAGES, preset="cpu", quick=False):
    tasks = study.plan(tmp_path, [0, 1, 2], list(stages), quick, tmp_path / "data", preset)
    return {t.name: t for t in tasks}


def test_plan_has_every_arm_start_fraction_and_seed_with_dependencies(tmp_path):
    tasks = _plan(tmp_path, study.STAGES)
    for seed in (0, 1, 2):
        assert "semantic.enabled=false" in tasks[f"pretrain/dino_s{seed}"].cmd
        assert "semantic.enabled=false" not in tasks[f"pretrain/solider_s{seed}"].cmd
        for fraction in (0.1, 0.25, 1.0):
            starts = study.STARTS if fraction < 1 else study.FULL_STARTS
            for start in starts:
                ft = tasks[study.finetune_name(start, fraction, seed)]
                assert f"seed={seed}" in ft.cmd and f"data.id_fraction={fraction}" in ft.cmd
                # the same number of steps as the full run (its config: 6 epochs)
                assert ("train.epochs=60" in ft.cmd) == (fraction == 0.1)
                assert ("train.epochs=24" in ft.cmd) == (fraction == 0.25)
                init = ft.cmd[ft.cmd.index("--init") + 1]
                if start == "scratch":
                    assert init == "none" and ft.deps == []
                else:
                    arm, network = start.split("_")
                    assert init == str(tmp_path / f"pretrain/{arm}_s{seed}/checkpoints/last.pt")
                    assert f"init.source={network}" in ft.cmd and ft.deps == [f"pretrain/{arm}_s{seed}"]
        for lam in (0.0, 0.5, 1.0):
            name = f"finetune/solider_teacher_f1_s{seed}_l{lam:g}"
            assert f"model.semantic_weight={lam}" in tasks[name].cmd
    # every arm: the same fine-tuning config; only the init, the seed and the fraction differ
    configs = {t.cmd[t.cmd.index("--config") + 1] for n, t in tasks.items() if n.startswith("finetune/")}
    assert configs == {study.PRESETS["cpu"][1]}
    assert {"baselines/histogram", "baselines/pixels", "plots/solider_teacher", "plots/scratch",
            "agreement/keypoints", "agreement/random_init"} <= set(tasks)
    assert all(d in tasks for t in tasks.values() for d in t.deps)
    assert not any("lambda" in n or "_l" in n for n in _plan(tmp_path))  # λ sweep only on request


@pytest.mark.parametrize("preset,quick", [("cpu", False), ("gpu", False), ("gpu", True)])
def test_every_planned_command_resolves_against_the_real_config_schemas(tmp_path, preset, quick):
    for task in _plan(tmp_path, study.STAGES, preset, quick).values():
        script = Path(task.cmd[1]).name
        if script not in ("pretrain.py", "run.py"):
            continue
        schema = PretrainConfig if script == "pretrain.py" else FinetuneConfig
        overrides = [a for a in task.cmd[2:] if "=" in a and not a.startswith("--")]
        cfg = load_config(schema, ROOT / task.cmd[task.cmd.index("--config") + 1], overrides)
        if quick:
            assert cfg.model.arch == "custom" and cfg.train.max_steps is not None


def _fake_pretrain(out: Path, name: str, seed: int, start: float, teacher: float, student: float) -> None:
    folder = out / f"pretrain/{name}_s{seed}"
    folder.mkdir(parents=True)
    rec = lambda step, t, s: {"step": step, "eval/teacher/mAP": t, "eval/teacher/rank1": t,  # noqa: E731
                              "eval/student/mAP": s, "eval/student/rank1": s, "eval/start/mAP": start,
                              "eval/start/rank1": start}
    lines = [rec(0, start, start), {"step": 5, "train/loss": 1.0}, rec(10, 0.9, 0.9),
             rec(10, teacher, student)]  # a resumed run logged step 10 twice: the later one counts
    folder.joinpath("log.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    folder.joinpath("study.json").write_text(json.dumps({"cmd": [], "seconds": 60}))


def _fake_finetune(out: Path, name: str, final: float, seconds: float) -> None:
    folder = out / name
    folder.mkdir(parents=True)
    entry = {"step": 10, "mAP": final, "rank1": final, "mINP": final}
    folder.joinpath("metrics.json").write_text(json.dumps({"final": entry, "history": [entry]}))
    folder.joinpath("study.json").write_text(json.dumps({"cmd": [], "seconds": seconds}))


def test_frozen_feature_table_pairs_each_network_with_its_own_start(tmp_path):
    for seed, (start, teacher, student) in enumerate([(0.010, 0.020, 0.030), (0.012, 0.021, 0.033),
                                                      (0.011, 0.021, 0.032)]):
        _fake_pretrain(tmp_path, "solider", seed, start, teacher, student)
    (tmp_path / "baselines/histogram").mkdir(parents=True)
    (tmp_path / "baselines/histogram/metrics.json").write_text(json.dumps(
        {"models": {"histogram (hand-crafted)": {"mAP": 0.066, "Rank-1": 0.055}}}))
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]]
            for r in report(tmp_path, [0, 1, 2]).splitlines() if r.startswith("| ") and "---" not in r}
    # teacher - start per seed: 1.0, 0.9, 1.0 points -> mean 0.97, std 0.06: clear; the later record wins
    assert rows["SOLIDER teacher"][:2] == ["3", "2.07 ± 0.06"]
    assert rows["SOLIDER teacher"][2].startswith("+0.97 ± 0.06 (t 29.0, clear)")
    assert rows["SOLIDER student"][1] == "3.17 ± 0.15"
    assert rows["SOLIDER: random initialisation (step 0)"][1:3] == ["1.10 ± 0.10", "–"]
    assert rows["hue-saturation histograms, 6 stripes (hand-crafted)"][1] == "6.60"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["frozen"]["solider_teacher"]["0"]["mAP"] == 0.020


def test_finetune_tables_give_paired_differences_per_fraction(tmp_path):
    for seed, (scratch, pre) in enumerate([(0.10, 0.15), (0.20, 0.22)]):
        _fake_finetune(tmp_path, f"finetune/scratch_f0.1_s{seed}", scratch, 60)
        _fake_finetune(tmp_path, f"finetune/solider_student_f0.1_s{seed}", pre, 120)
    _fake_finetune(tmp_path, "finetune/scratch_f1_s0", 0.3, 60)
    (tmp_path / "finetune/dino_teacher_f1_s0").mkdir(parents=True)  # unfinished: no study.json, left out
    text = report(tmp_path, [0, 1])
    low = text[text.index("(b) Low-label"):text.index("(c) Full")]
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]]
            for r in low.splitlines() if r.startswith("| ") and "---" not in r}
    assert rows["SOLIDER student"][:3] == ["2", "18.50 ± 4.95", "+3.50 ± 2.12 (t 2.3, within spread)"]
    assert rows["SOLIDER student"][-2:] == ["15.00 / 22.00", "2.0"]
    assert rows["no pretraining"][2] == "–"
    assert "DINO-only teacher" not in text
    assert "10 % of the training identities" in text and "(c) Full fine-tuning" in text


def test_a_missing_dataset_is_named(tmp_path):
    with pytest.raises(SystemExit, match="has no bounding_box_train"):
        study.main(["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--dry-run"])


def test_report_lists_keypoint_labels_once_and_clustering_per_teacher(tmp_path):
    def source(acc: float) -> dict:
        return {"valid_share": 0.5, "accuracy": acc, "miou_parts": acc, "iou": [acc, acc, acc, float("nan")]}

    for name, acc in (("keypoints", 0.3), ("random_init", 0.2)):
        folder = tmp_path / "agreement" / name
        folder.mkdir(parents=True)
        (folder / "agreement.json").write_text(json.dumps(
            {"sources": {"keypoints": source(0.9), "clustering": source(acc)}}))
    lines = report(tmp_path, [0]).splitlines()
    assert "| keypoints (any network) | 50 % | 90.0 | 90.0 | 90.0 / 90.0 / 90.0 / – |" in lines
    cells = " | 50 % | {0} | {0} | {0} / {0} / {0} / – |"
    assert "| clustering, teacher pretrained with keypoint labels" + cells.format("30.0") in lines
    assert "| clustering, teacher randomly initialised" + cells.format("20.0") in lines
