"""The study driver (launch/study.py): its plan of runs and its tables."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("study", ROOT / "launch" / "study.py")
study = importlib.util.module_from_spec(_spec)
sys.modules["study"] = study  # dataclasses look the module up while the file runs
_spec.loader.exec_module(study)


def test_plan_has_every_arm_seed_and_lambda_with_dependencies(tmp_path):
    tasks = {t.name: t for t in study.plan(tmp_path, [0, 1, 2], ["cuhk03", "lambda", "synthetic"], False,
                                           tmp_path / "data")}
    for seed in (0, 1, 2):
        assert "semantic.enabled=false" in tasks[f"pretrain/dino_s{seed}"].cmd
        assert "semantic.enabled=false" not in tasks[f"pretrain/solider_s{seed}"].cmd
        for arm in ("solider", "dino", "scratch"):
            ft = tasks[f"finetune/{arm}_s{seed}_l0.2"]
            assert f"seed={seed}" in ft.cmd and "model.semantic_weight=0.2" in ft.cmd
            init = ft.cmd[ft.cmd.index("--init") + 1]
            if arm == "scratch":
                assert init == "none" and ft.deps == []
            else:
                assert init == str(tmp_path / f"pretrain/{arm}_s{seed}/checkpoints/last.pt")
                assert ft.deps == [f"pretrain/{arm}_s{seed}"]
        for lam in ("0", "0.5", "1"):
            assert f"finetune/solider_s{seed}_l{lam}" in tasks
    # every arm: the same fine-tuning config; only the init and the seed differ
    configs = {t.cmd[t.cmd.index("--config") + 1] for n, t in tasks.items() if n.startswith("finetune/")}
    assert configs == {study.FINETUNE}
    assert {"synthetic_data", "pretrain/synthetic_keypoints", "pretrain/synthetic_clustering",
            "agreement/keypoints", "agreement/clustering", "agreement/random_init"} <= set(tasks)
    assert all(d in tasks for t in tasks.values() for d in t.deps)


def _fake_finetune(out: Path, name: str, maps: tuple[float, float], seconds: float) -> None:
    folder = out / name
    folder.mkdir(parents=True)
    entry = lambda m: {"step": 0, "mAP": m, "rank1": m, "mINP": m}  # noqa: E731
    final = {**entry(maps[1]), "step": 10}
    metrics = {"final": final, "history": [entry(maps[0]), final]}
    folder.joinpath("metrics.json").write_text(json.dumps(metrics))
    folder.joinpath("study.json").write_text(json.dumps({"cmd": [], "seconds": seconds}))


def test_report_gives_mean_and_sample_std_over_the_finished_seeds(tmp_path):
    _fake_finetune(tmp_path, "finetune/scratch_s0_l0.2", (0.01, 0.10), 60)
    _fake_finetune(tmp_path, "finetune/scratch_s1_l0.2", (0.01, 0.20), 120)
    _fake_finetune(tmp_path, "finetune/dino_s0_l0.2", (0.05, 0.30), 60)
    (tmp_path / "finetune/dino_s1_l0.2").mkdir(parents=True)  # unfinished: no study.json, left out
    (tmp_path / "pretrain/dino_s0").mkdir(parents=True)
    (tmp_path / "pretrain/dino_s0/study.json").write_text(json.dumps({"cmd": [], "seconds": 600}))
    text = study.report(tmp_path, [0, 1])
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["scratch"][2:7] == ["2", "15.0 ± 7.1", "–", "15.0 ± 7.1", "15.0 ± 7.1"]
    assert rows["scratch"][7:] == ["1.0 ± 0.0", "10.0 / 20.0", "0.0", "1.5"]
    # seed 0 only: 30 % against scratch's 10 % with the same seed
    assert rows["dino"][2:5] == ["1", "30.0", "+20.0"] and rows["dino"][-2:] == ["10.0", "1.0"]
    assert "solider" not in rows
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["scratch_l0.2"]["seeds"] == [0, 1] and saved["dino_l0.2"]["seeds"] == [0]
    assert (tmp_path / "results.md").read_text().strip() == text.strip()


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
    lines = study.report(tmp_path, [0]).splitlines()
    assert "| keypoints (any network) | 50 % | 90.0 | 90.0 | 90.0 / 90.0 / 90.0 / – |" in lines
    cells = " | 50 % | {0} | {0} | {0} / {0} / {0} / – |"
    assert "| clustering, teacher pretrained with keypoint labels" + cells.format("30.0") in lines
    assert "| clustering, teacher randomly initialised" + cells.format("20.0") in lines
