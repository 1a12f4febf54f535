"""The research study of docs/RESULTS.md, with the project's own commands only.

    python launch/study.py [--out runs/study] [--seeds 0 1 2] [--jobs 2] [--stages cuhk03 lambda synthetic]
    python launch/study.py --report            # tables from the runs that finished
    python launch/study.py --dry-run           # print every command, run nothing

Stages (each a set of commands of the entry points, run as separate processes):

* ``cuhk03`` — three arms on the CUHK03 subset (``../shared/data/cuhk03-detected-subset``):
  SOLIDER pretraining (``configs/study/pretrain_cuhk03.yaml``), DINO-only pretraining (the same
  with ``semantic.enabled=false``) and no pretraining, each fine-tuned with the same recipe
  (``configs/study/finetune_cuhk03.yaml``, lambda 0.2) per seed; then ``eval/evaluate.py`` of one
  seed per arm beside its starting point (the before / after distance plots).
* ``lambda`` — the SOLIDER arm fine-tuned at lambda 0, 0.5 and 1 as well (0.2 is in ``cuhk03``).
* ``synthetic`` — the synthetic Market set (with keypoints and the renderer's part masks),
  pretrained with keypoint part labels and with clustered ones; ``solider.part_agreement``
  scores both label sources against the masks.

Runs are independent processes scheduled on ``--jobs`` workers with one intra-op thread each (tiny
models on a 2-core CPU run fastest that way). A finished run leaves ``study.json`` (command,
seconds) in its folder and is not run again, so an interrupted study continues where it stopped.
The tables (mean ± std over seeds) go to ``<out>/results.md`` and ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUHK03 = ROOT.parent / "shared" / "data" / "cuhk03-detected-subset"
PRETRAIN = "configs/study/pretrain_cuhk03.yaml"
FINETUNE = "configs/study/finetune_cuhk03.yaml"
ARMS = ("solider", "dino", "scratch")
DEFAULT_LAMBDA = 0.2


@dataclass
class Task:
    name: str
    cmd: list[str]
    out: Path
    deps: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return (self.out / "study.json").is_file()


def _py(script: str, *args: str) -> list[str]:
    return [sys.executable, script, *args]


def _ft_name(arm: str, seed: int, lam: float) -> str:
    return f"finetune/{arm}_s{seed}_l{lam:g}"


def plan(out: Path, seeds: list[int], stages: list[str], quick: bool, data: Path) -> list[Task]:
    """Every run of the study, with its dependencies."""
    pt_extra = ["train.max_steps=4", "train.log_every=2"] if quick else []
    ft_extra = ["train.max_steps=6", "train.log_every=3"] if quick else []
    tasks: list[Task] = []

    def pretrain(name: str, *overrides: str, config: str = PRETRAIN) -> None:
        o = out / name
        tasks.append(Task(name, _py("solider/pretrain.py", "--config", config, f"output_dir={o}",
                                    "resume=auto", *overrides, *pt_extra), o))

    def finetune(arm: str, seed: int, lam: float) -> None:
        name, ckpt = _ft_name(arm, seed, lam), out / f"pretrain/{arm}_s{seed}/checkpoints/last.pt"
        o = out / name
        tasks.append(Task(name, _py("finetune/run.py", "--config", FINETUNE, "--init",
                                    "none" if arm == "scratch" else str(ckpt), f"output_dir={o}",
                                    f"data.root={data}", f"seed={seed}", f"model.semantic_weight={lam}",
                                    "resume=auto", *ft_extra), o,
                          [] if arm == "scratch" else [f"pretrain/{arm}_s{seed}"]))

    if "cuhk03" in stages or "lambda" in stages:
        for seed in seeds:
            root = [f"data.root={data / 'bounding_box_train'}", f"monitor.data_root={data}", f"seed={seed}"]
            pretrain(f"pretrain/solider_s{seed}", *root)
            pretrain(f"pretrain/dino_s{seed}", *root, "semantic.enabled=false")
    if "cuhk03" in stages:
        for seed in seeds:
            for arm in ARMS:
                finetune(arm, seed, DEFAULT_LAMBDA)
        for arm in ARMS:  # before / after fine-tuning, first seed
            seed, o = seeds[0], out / f"plots/{arm}"
            before = ["--compare", str(out / f"pretrain/{arm}_s{seed}/checkpoints/last.pt")] \
                if arm != "scratch" else []
            tasks.append(Task(f"plots/{arm}", _py(
                "eval/evaluate.py", "--checkpoint", str(out / _ft_name(arm, seed, DEFAULT_LAMBDA) /
                                                         "checkpoints/last.pt"),
                *before, "--data", str(data), "--out", str(o), "data.num_workers=0",
                "overwrite=true"), o,  # an evaluation that stopped half-way is simply redone
                [_ft_name(arm, seed, DEFAULT_LAMBDA)] + ([f"pretrain/{arm}_s{seed}"] if before else [])))
    if "lambda" in stages:
        for seed in seeds:
            for lam in (0.0, 0.5, 1.0):
                finetune("solider", seed, lam)
    if "synthetic" in stages:
        synth = out / "synthetic_data"
        tasks.append(Task("synthetic_data", [
            sys.executable, "-m", "solider.data.synthetic", "--out", str(synth), "--ids", "60",
            "--cameras", "4", "--images-per-camera", "4", "--seed", "0"], synth))
        for source in ("keypoints", "clustering"):
            pretrain(f"pretrain/synthetic_{source}", f"data.root={synth}", f"semantic.label_source={source}",
                     "train.epochs=10", "monitor.data_root=null", "checkpoint.every_steps=1000")
            tasks[-1].deps.append("synthetic_data")
            tasks.append(Task(f"agreement/{source}", [
                sys.executable, "-m", "solider.part_agreement", "--data", str(synth), "--checkpoint",
                str(out / f"pretrain/synthetic_{source}/checkpoints/last.pt"), "--out",
                str(out / f"agreement/{source}/agreement.json")], out / f"agreement/{source}",
                [f"pretrain/synthetic_{source}"]))
        tasks.append(Task("agreement/random_init", [
            sys.executable, "-m", "solider.part_agreement", "--data", str(synth), "--config", PRETRAIN,
            "--out", str(out / "agreement/random_init/agreement.json")], out / "agreement/random_init",
            ["synthetic_data"]))
    return tasks


def execute(task: Task) -> tuple[Task, int, float]:
    task.out.mkdir(parents=True, exist_ok=True)
    log = task.out.with_name(task.out.name + ".log")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    with open(log, "ab") as handle:
        rc = subprocess.run(task.cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if rc == 0:
        (task.out / "study.json").write_text(json.dumps({"cmd": task.cmd, "seconds": seconds}, indent=1))
    return task, rc, seconds


def run_all(tasks: list[Task], jobs: int) -> list[str]:
    """Run the tasks not done yet, each once its dependencies are; returns the names that failed."""
    pending = {t.name: t for t in tasks if not t.done}
    finished = {t.name for t in tasks if t.done}
    failed: list[str] = []
    running: dict = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            ready = [t for t in pending.values() if all(d in finished for d in t.deps)]
            blocked = [t for t in pending.values() if any(d in failed for d in t.deps)]
            for t in blocked:
                print(f"skip {t.name}: a dependency failed", flush=True)
                failed.append(pending.pop(t.name).name)
            for t in ready[:max(0, jobs - len(running))]:
                print(f"start {t.name}: {' '.join(t.cmd)}", flush=True)
                running[pool.submit(execute, pending.pop(t.name))] = t.name
            if not running:
                if pending:
                    raise SystemExit(f"study: unknown dependencies in {sorted(pending)}")
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                task, rc, seconds = future.result()
                del running[future]
                if rc == 0:
                    finished.add(task.name)
                    print(f"done  {task.name} in {seconds:.0f} s", flush=True)
                else:
                    failed.append(task.name)
                    print(f"FAIL  {task.name} (exit {rc}); log: {task.out}.log", flush=True)
    return failed


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _pct(values: list[float]) -> str:
    return " / ".join("–" if v != v else f"{100 * v:.1f}" for v in values)  # NaN: the class occurs nowhere


def _arm_runs(out: Path, arm: str, lam: float, seeds: list[int]) -> dict | None:
    """The finished fine-tuning runs of one arm and λ: per seed final / initial metrics and times."""
    runs = [(s, _read(out / _ft_name(arm, s, lam) / "metrics.json"), _read(out / _ft_name(arm, s, lam) /
                                                                            "study.json")) for s in seeds]
    runs = [(s, m, w) for s, m, w in runs if m and w]
    if not runs:
        return None
    pre = [_read(out / f"pretrain/{arm}_s{s}/study.json") for s, _, _ in runs] if arm != "scratch" else []
    return {"seeds": [s for s, _, _ in runs], "final": [m["final"] for _, m, _ in runs],
            "start": [m["history"][0] for _, m, _ in runs if m["history"] and m["history"][0]["step"] == 0],
            "finetune_s": [w["seconds"] for _, _, w in runs], "pretrain_s": [p["seconds"] for p in pre if p]}


def _row(arm: str, lam: float, r: dict, scratch: dict[int, float]) -> str:
    maps = [f["mAP"] for f in r["final"]]
    # Paired by seed: a seed fixes the initial network and the data order in every arm, so the
    # per-seed difference to no pretraining removes most of the seed-to-seed spread.
    paired = [m - scratch[s] for s, m in zip(r["seeds"], maps) if s in scratch]
    delta = "–" if arm == "scratch" or not paired else (
        f"{100 * paired[0]:+.1f}" if len(paired) == 1 else
        f"{100 * statistics.mean(paired):+.1f} ± {100 * statistics.stdev(paired):.1f}")
    minutes = [statistics.mean(r[k]) / 60 if r[k] else 0.0 for k in ("pretrain_s", "finetune_s")]
    rank1, minp = ([f[k] for f in r["final"]] for k in ("rank1", "mINP"))
    return (f"| {arm} | {lam:g} | {len(maps)} | {_mean_std(maps)} | {delta} | {_mean_std(rank1)} "
            f"| {_mean_std(minp)} | {_mean_std([x['mAP'] for x in r['start']])} | {_pct(maps)} "
            f"| {minutes[0]:.1f} | {minutes[1]:.1f} |")


def report(out: Path, seeds: list[int]) -> str:
    """Markdown tables (and results.json) from whatever finished."""
    raw = {}
    for arm, lam in [(a, DEFAULT_LAMBDA) for a in ARMS] + [("solider", x) for x in (0.0, 0.5, 1.0)]:
        found = _arm_runs(out, arm, lam, seeds)
        if found:
            raw[f"{arm}_l{lam:g}"] = found
    base = raw.get(f"scratch_l{DEFAULT_LAMBDA:g}", {"seeds": [], "final": []})
    scratch = {s: f["mAP"] for s, f in zip(base["seeds"], base["final"])}
    rows = []
    for key, r in raw.items():
        arm, lam = key.rsplit("_l", 1)
        rows.append(_row(arm, float(lam), r, scratch))
    text = [f"Hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
            "mean ± sample std over seeds, in %.", "",
            "| arm | λ (fine-tune) | seeds | mAP | Δ mAP vs no pretraining, paired by seed | Rank-1 | mINP "
            "| mAP before fine-tuning | mAP per seed | pretrain min | fine-tune min |",
            "|---|---|---|---|---|---|---|---|---|---|---|", *rows]
    names = ("keypoints", "clustering", "random_init")  # the synthetic pretraining runs' label sources
    agreement = {n: a for n in names if (a := _read(out / f"agreement/{n}/agreement.json"))}
    if agreement:  # keypoint labels do not depend on the network: one row
        rows = [("keypoints (any network)", next(iter(agreement.values()))["sources"]["keypoints"])]
        teacher = {"keypoints": "pretrained with keypoint labels", "clustering": "pretrained with clustered "
                   "labels", "random_init": "randomly initialised"}
        rows += [(f"clustering, teacher {teacher[name]}", a["sources"]["clustering"])
                 for name, a in agreement.items()]
        text += ["", "| part labels | images labelled | token accuracy | mIoU (parts) "
                 "| IoU background / upper / legs / feet |", "|---|---|---|---|---|"]
        text += [f"| {label} | {100 * r['valid_share']:.0f} % | {100 * r['accuracy']:.1f} "
                 f"| {100 * r['miou_parts']:.1f} | {_pct(r['iou'])} |" for label, r in rows]
        raw["agreement"] = agreement
    (out / "results.json").write_text(json.dumps(raw, indent=1))
    (out / "results.md").write_text("\n".join(text) + "\n")
    return "\n".join(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--stages", nargs="+", default=["cuhk03", "lambda", "synthetic"],
                        choices=["cuhk03", "lambda", "synthetic"])
    parser.add_argument("--data", type=Path, default=CUHK03, help="Market-layout dataset of the arms")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    parser.add_argument("--quick", action="store_true", help="a few steps per run (smoke test)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and stop")
    parser.add_argument("--report", action="store_true", help="only write the tables")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if not args.report:
        if not (args.data / "bounding_box_train").is_dir() and {"cuhk03", "lambda"} & set(args.stages):
            raise SystemExit(f"study: {args.data} has no bounding_box_train/ (see ../shared/data/README.md)")
        tasks = plan(out, args.seeds, args.stages, args.quick, args.data.resolve())
        if args.dry_run:
            for t in tasks:
                print(f"[{t.name}] after {t.deps or '-'}\n  {' '.join(t.cmd)}")
            return
        start = time.perf_counter()
        failed = run_all(tasks, args.jobs)
        print(f"study: {len(tasks) - len(failed)} of {len(tasks)} runs done "
              f"({(time.perf_counter() - start) / 60:.1f} min this time)")
        if failed:
            print(f"failed: {failed}")
    print(report(out, args.seeds))


if __name__ == "__main__":
    main()
