"""Tables of the study (launch/study.py) from whatever runs finished: results.md and results.json.

Every comparison is paired by seed (a seed fixes the initial network and the data order in every
arm, so the per-seed difference removes most of the seed-to-seed spread). A paired difference is
reported as mean ± sample std over seeds with the paired t statistic, and called *clear* when its
mean exceeds twice its spread (the study's criterion; with three seeds that is t > 3.5, two-sided
p < 0.08).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

ARMS = ("solider", "dino")
STARTS = ("solider_teacher", "solider_student", "dino_teacher", "dino_student", "scratch")
START_NAMES = {"solider_teacher": "SOLIDER teacher", "solider_student": "SOLIDER student",
               "dino_teacher": "DINO-only teacher", "dino_student": "DINO-only student",
               "scratch": "no pretraining"}
FRACTIONS = (0.1, 0.25, 1.0)
LAMBDAS = (0.0, 0.2, 0.5, 1.0)


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _pct(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def paired(values: dict[int, float], reference: dict[int, float]) -> dict | None:
    """Per-seed differences ``values - reference`` over the seeds both have: mean, std, t, clear."""
    diffs = [values[s] - reference[s] for s in sorted(values) if s in reference]
    if not diffs:
        return None
    mean = statistics.mean(diffs)
    std = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    t = mean / (std / math.sqrt(len(diffs))) if len(diffs) > 1 and std > 0 else float("nan")
    return {"n": len(diffs), "mean": mean, "std": std, "t": t,
            "clear": len(diffs) > 1 and abs(mean) > 2 * std}


def _delta(d: dict | None) -> str:
    if d is None:
        return "–"
    if d["n"] == 1:
        return f"{100 * d['mean']:+.2f} (1 seed)"
    verdict = "clear" if d["clear"] else "within spread"
    return f"{100 * d['mean']:+.2f} ± {100 * d['std']:.2f} (t {d['t']:.1f}, {verdict})"


def monitor_history(run: Path) -> list[dict]:
    """The monitor's records of a pretraining run (the last one per step: a resumed run re-logs)."""
    log = run / "log.jsonl"
    if not log.is_file():
        return []
    by_step: dict[int, dict] = {}
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if "eval/teacher/mAP" in record:
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def frozen_features(out: Path, seeds: list[int]) -> dict:
    """Final frozen-feature scores per arm and network, and the shared start, by seed."""
    table: dict[str, dict[int, dict]] = {}
    for arm in ARMS:
        for seed in seeds:
            run = out / f"pretrain/{arm}_s{seed}"
            history = monitor_history(run)
            if not (run / "study.json").is_file() or not history:
                continue
            last = history[-1]
            for net in ("teacher", "student", "start"):  # each arm against its own step-0 networks
                scores = {m: last[f"eval/{net}/{m}"] for m in ("mAP", "rank1")}
                table.setdefault(f"{arm}_{net}", {})[seed] = scores
            table.setdefault(f"{arm}_curve", {})[seed] = [
                (r["step"], r["eval/teacher/mAP"], r["eval/student/mAP"]) for r in history]
    return table


def _baselines(out: Path) -> dict[str, dict]:
    found = {}
    for name in ("histogram", "pixels"):
        metrics = _read(out / f"baselines/{name}/metrics.json")
        if metrics:
            scores = next(iter(metrics["models"].values()))
            found[name] = {"mAP": scores["mAP"], "rank1": scores["Rank-1"]}
    return found


def _finetuned(out: Path, start: str, fraction: float, seeds: list[int], lam: float = 0.2) -> dict[int, dict]:
    suffix = "" if lam == 0.2 else f"_l{lam:g}"
    runs = {}
    for seed in seeds:
        folder = out / f"finetune/{start}_f{fraction:g}_s{seed}{suffix}"
        metrics, study = _read(folder / "metrics.json"), _read(folder / "study.json")
        if metrics and study:
            runs[seed] = {**metrics["final"], "seconds": study["seconds"]}
    return runs


def report(out: Path, seeds: list[int], processor: str = "", cpus: int | None = None) -> str:
    """Markdown tables (and results.json) from whatever finished."""
    raw: dict = {"frozen": frozen_features(out, seeds), "baselines": _baselines(out), "finetune": {}}
    text = [f"Hardware: {processor}, {cpus} CPUs. mAP and Rank-1 in %, mean ± sample std over seeds; "
            "Δ paired by seed (t: paired t statistic; clear: |mean| > 2 × its spread).", ""]
    frozen, base = raw["frozen"], raw["baselines"]
    if frozen or base:
        text += ["### (a) Frozen features on the test split (no fine-tuning)", "",
                 "| features | seeds | mAP | Δ mAP vs its random initialisation | Rank-1 | mAP per seed |",
                 "|---|---|---|---|---|---|"]
        for key in ("solider_teacher", "solider_student", "solider_start", "dino_teacher", "dino_student",
                    "dino_start"):
            if key not in frozen:
                continue
            arm, net = key.split("_")
            maps = {s: v["mAP"] for s, v in frozen[key].items()}
            start = {s: v["mAP"] for s, v in frozen.get(f"{arm}_start", {}).items()}
            name = START_NAMES[key] if net != "start" else f"{START_NAMES[arm + '_teacher'].split()[0]}: " \
                "random initialisation (step 0)"
            delta = "–" if net == "start" else _delta(paired(maps, start))
            ranks = [v["rank1"] for v in frozen[key].values()]
            text.append(f"| {name} | {len(maps)} | {_pct(list(maps.values()))} | {delta} | {_pct(ranks)} | "
                        + " / ".join(f"{100 * maps[s]:.2f}" for s in sorted(maps)) + " |")
        for name, label in (("histogram", "hue-saturation histograms, 6 stripes (hand-crafted)"),
                            ("pixels", "raw pixels, 16x8 (hand-crafted)")):
            if name in base:
                b = base[name]
                text.append(f"| {label} | – | {100 * b['mAP']:.2f} | – | {100 * b['rank1']:.2f} | – |")
        if "solider_teacher" in frozen and "dino_teacher" in frozen:
            diff = paired({s: v["mAP"] for s, v in frozen["solider_teacher"].items()},
                          {s: v["mAP"] for s, v in frozen["dino_teacher"].items()})
            text += ["", f"SOLIDER teacher − DINO-only teacher (frozen mAP): {_delta(diff)}."]
        text.append("")
    for fraction in FRACTIONS:
        rows = {start: _finetuned(out, start, fraction, seeds) for start in STARTS}
        rows = {k: v for k, v in rows.items() if v}
        if not rows:
            continue
        raw["finetune"][f"{fraction:g}"] = rows
        title = "(c) Full fine-tuning" if fraction == 1.0 else \
            f"(b) Low-label fine-tuning: {100 * fraction:g} % of the training identities"
        scratch = {s: r["mAP"] for s, r in rows.get("scratch", {}).items()}
        text += [f"### {title}", "", "| start | seeds | mAP | Δ mAP vs no pretraining | Rank-1 | mINP "
                 "| mAP per seed | minutes per run |", "|---|---|---|---|---|---|---|---|"]
        for start, runs in rows.items():
            maps = {s: r["mAP"] for s, r in runs.items()}
            delta = "–" if start == "scratch" else _delta(paired(maps, scratch))
            minutes = statistics.mean(r["seconds"] for r in runs.values()) / 60
            per_seed = " / ".join(f"{100 * maps[s]:.2f}" for s in sorted(maps))
            rank1, minp = ([r[k] for r in runs.values()] for k in ("rank1", "mINP"))
            text.append(f"| {START_NAMES[start]} | {len(runs)} | {_pct(list(maps.values()))} | {delta} "
                        f"| {_pct(rank1)} | {_pct(minp)} | {per_seed} | {minutes:.1f} |")
        text.append("")
    lam_rows = {lam: _finetuned(out, "solider_teacher", 1.0, seeds, lam) for lam in LAMBDAS}
    if any(lam_rows[lam] for lam in LAMBDAS if lam != 0.2):
        text += ["### (d) λ at fine-tuning time (SOLIDER teacher, all identities)", "",
                 "| λ | seeds | mAP | Rank-1 |", "|---|---|---|---|"]
        text += [f"| {lam:g} | {len(r)} | {_pct([x['mAP'] for x in r.values()])} | "
                 f"{_pct([x['rank1'] for x in r.values()])} |" for lam, r in lam_rows.items() if r]
        raw["lambda"] = {f"{lam:g}": r for lam, r in lam_rows.items() if r}
        text.append("")
    text += _agreement(out, raw)
    (out / "results.json").write_text(json.dumps(raw, indent=1))
    (out / "results.md").write_text("\n".join(text).rstrip() + "\n")
    return "\n".join(text)


def _agreement(out: Path, raw: dict) -> list[str]:
    names = ("keypoints", "clustering", "random_init")  # the synthetic pretraining runs' label sources
    agreement = {n: a for n in names if (a := _read(out / f"agreement/{n}/agreement.json"))}
    if not agreement:
        return []
    pct = lambda values: " / ".join("–" if v != v else f"{100 * v:.1f}" for v in values)  # noqa: E731
    rows = [("keypoints (any network)", next(iter(agreement.values()))["sources"]["keypoints"])]
    teacher = {"keypoints": "pretrained with keypoint labels", "clustering": "pretrained with clustered "
               "labels", "random_init": "randomly initialised"}
    rows += [(f"clustering, teacher {teacher[name]}", a["sources"]["clustering"])
             for name, a in agreement.items()]
    raw["agreement"] = agreement
    return ["### Part labels against the synthetic renderer's masks", "",
            "| part labels | images labelled | token accuracy | mIoU (parts) "
            "| IoU background / upper / legs / feet |",
            "|---|---|---|---|---|"] + [
        f"| {label} | {100 * r['valid_share']:.0f} % | {100 * r['accuracy']:.1f} "
        f"| {100 * r['miou_parts']:.1f} | {pct(r['iou'])} |" for label, r in rows] + [""]
