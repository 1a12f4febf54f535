"""The research study of docs/RESULTS.md (v2), with the project's own commands only.

    python launch/study.py [--out runs/study] [--seeds 0 1 2] [--jobs 2] [--stages ...] [--preset cpu|gpu]
    python launch/study.py --report            # tables from the runs that finished
    python launch/study.py --dry-run           # print every command, run nothing

Does pretraining on unlabeled person crops give a better backbone? On the CUHK03 subset
(``../shared/data/cuhk03-detected-subset``), per seed, SOLIDER and DINO-only pretraining of the same
network from the same random initialisation, then (stages):

* ``pretrain`` — the two pretrainings; their monitor scores the *frozen* teacher and student on the
  test split at every epoch, against the random initialisation they started from;
* ``baselines`` — hand-crafted features for scale (``eval/evaluate.py --checkpoint histogram`` and
  ``pixels``);
* ``lowlabel`` — the same fine-tuning recipe on 10 % and 25 % of the training identities (subsets
  fixed by the seed) and the same number of optimizer steps (epochs x 1 / fraction), from the
  teacher and the student of each pretraining and from scratch;
* ``full`` — fine-tuning on every training identity, from each teacher and from scratch, and the
  before / after distance plots of the first seed;
* ``lambda`` — the SOLIDER teacher fine-tuned at λ 0, 0.5 and 1 as well (run it where the frozen
  features show SOLIDER and DINO-only differ);
* ``synthetic`` — keypoint vs clustered part labels against the synthetic renderer's masks.

A seed fixes the initial network and the data order in every arm, so differences are paired by
seed. ``--preset gpu`` runs the same plan with Swin-T at 128x64 (+ 64x32 local crops) for one GPU
(``configs/study/*_gpu.yaml``). Runs are independent processes on ``--jobs`` workers with one
intra-op thread each on CPU. A finished run leaves ``study.json`` (command, seconds) in its folder
and is not run again, so an interrupted study continues where it stopped. Tables go to
``<out>/results.md`` and ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_report import report  # noqa: E402  (a sibling script, not a package)

ROOT = Path(__file__).resolve().parents[1]
CUHK03 = ROOT.parent / "shared" / "data" / "cuhk03-detected-subset"
PRESETS = {"cpu": ("configs/study/pretrain_cuhk03.yaml", "configs/study/finetune_cuhk03.yaml", "64x32"),
           "gpu": ("configs/study/pretrain_cuhk03_gpu.yaml", "configs/study/finetune_cuhk03_gpu.yaml",
                   "128x64")}
ARMS = ("solider", "dino")
STARTS = ("solider_teacher", "solider_student", "dino_teacher", "dino_student", "scratch")
FULL_STARTS = ("solider_teacher", "dino_teacher", "scratch")
# scratch first: a pretrained low-label run says nothing until its scratch pair has finished
LOWLABEL_ORDER = ("scratch", "dino_student", "solider_student", "dino_teacher", "solider_teacher")
FRACTIONS = (0.1, 0.25)
STAGES = ("pretrain", "baselines", "lowlabel", "full", "lambda", "synthetic")
DEFAULT_STAGES = ("pretrain", "baselines", "lowlabel", "full", "synthetic")
DEFAULT_LAMBDA = 0.2
# --quick: a few steps of a tiny network, whatever the preset (a smoke test of the plan on a CPU)
QUICK_MODEL = ["model.arch=custom", "model.embed_dim=16", "model.depths=[2,2,2]", "model.num_heads=[1,2,4]",
               "model.window_size=7"]


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


def finetune_name(start: str, fraction: float, seed: int, lam: float = DEFAULT_LAMBDA) -> str:
    return f"finetune/{start}_f{fraction:g}_s{seed}" + ("" if lam == DEFAULT_LAMBDA else f"_l{lam:g}")


def plan(out: Path, seeds: list[int], stages: list[str], quick: bool, data: Path, preset: str = "cpu"
         ) -> list[Task]:
    """Every run of the study, with its dependencies."""
    pretrain_cfg, finetune_cfg, size = PRESETS[preset]
    tiny = ["train.batch_size=8", "data.num_workers=0", *QUICK_MODEL]
    pt_extra = ["train.max_steps=4", "train.log_every=2", *tiny] if quick else []
    ft_extra = ["train.max_steps=6", "train.log_every=3", *tiny] if quick else []
    tasks: list[Task] = []

    def pretrain(name: str, *overrides: str) -> None:
        o = out / name
        tasks.append(Task(name, _py("solider/pretrain.py", "--config", pretrain_cfg, f"output_dir={o}",
                                    "resume=auto", *overrides, *pt_extra), o))

    full_epochs = (yaml.safe_load((ROOT / finetune_cfg).read_text()).get("train") or {}).get("epochs")

    def finetune(start: str, fraction: float, seed: int, lam: float = DEFAULT_LAMBDA) -> None:
        name, o = finetune_name(start, fraction, seed, lam), out / finetune_name(start, fraction, seed, lam)
        # fewer identities, the same number of optimizer steps: epochs scaled by 1 / fraction
        budget = [f"train.epochs={round(full_epochs / fraction)}"] if fraction < 1 and full_epochs else []
        init, deps = ["--init", "none"], []
        if start != "scratch":
            arm, network = start.split("_")
            ckpt = out / f"pretrain/{arm}_s{seed}/checkpoints/last.pt"
            init = ["--init", str(ckpt), f"init.source={network}"]
            deps = [f"pretrain/{arm}_s{seed}"]
        tasks.append(Task(name, _py("finetune/run.py", "--config", finetune_cfg, *init, f"output_dir={o}",
                                    f"data.root={data}", f"seed={seed}", f"model.semantic_weight={lam}",
                                    f"data.id_fraction={fraction}", *budget, "resume=auto", *ft_extra),
                          o, deps))

    wants_pretraining = {"pretrain", "lowlabel", "full", "lambda"} & set(stages)
    if wants_pretraining:
        for seed in seeds:
            root = [f"data.root={data / 'bounding_box_train'}", f"monitor.data_root={data}", f"seed={seed}"]
            pretrain(f"pretrain/solider_s{seed}", *root)
            pretrain(f"pretrain/dino_s{seed}", *root, "semantic.enabled=false")
    if "baselines" in stages:
        for name in ("histogram", "pixels"):
            o = out / f"baselines/{name}"
            tasks.append(Task(f"baselines/{name}", _py(
                "eval/evaluate.py", "--checkpoint", name, "--data", str(data), "--out", str(o),
                f"model.img_size={size}", "data.num_workers=0", "plots.enabled=false", "overwrite=true"), o))
    if "full" in stages:
        for seed in seeds:
            for start in FULL_STARTS:
                finetune(start, 1.0, seed)
        for start in FULL_STARTS:  # before / after fine-tuning, first seed
            seed, o = seeds[0], out / f"plots/{start}"
            after = finetune_name(start, 1.0, seed)
            before = [] if start == "scratch" else [
                "--compare", str(out / f"pretrain/{start.split('_')[0]}_s{seed}/checkpoints/last.pt")]
            tasks.append(Task(f"plots/{start}", _py(
                "eval/evaluate.py", "--checkpoint", str(out / after / "checkpoints/last.pt"), *before,
                "--data", str(data), "--out", str(o), "data.num_workers=0",
                "overwrite=true"), o,  # an evaluation that stopped half-way is simply redone
                [after] + ([f"pretrain/{start.split('_')[0]}_s{seed}"] if before else [])))
    if "lowlabel" in stages:
        for seed in seeds:
            for fraction in FRACTIONS:
                for start in LOWLABEL_ORDER:
                    finetune(start, fraction, seed)
    if "lambda" in stages:
        for seed in seeds:
            for lam in (0.0, 0.5, 1.0):
                finetune("solider_teacher", 1.0, seed, lam)
    if "synthetic" in stages:
        synth = out / "synthetic_data"
        tasks.append(Task("synthetic_data", [
            sys.executable, "-m", "solider.datatools.synthetic", "--out", str(synth), "--ids", "60",
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
            sys.executable, "-m", "solider.part_agreement", "--data", str(synth), "--config", pretrain_cfg,
            *([o for o in pt_extra if o.startswith("model.")]),
            "--out", str(out / "agreement/random_init/agreement.json")], out / "agreement/random_init",
            ["synthetic_data"]))
    return tasks


def execute(task: Task, threads: int) -> tuple[Task, int, float]:
    task.out.mkdir(parents=True, exist_ok=True)
    log = task.out.with_name(task.out.name + ".log")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    with open(log, "ab") as handle:
        rc = subprocess.run(task.cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if rc == 0:
        (task.out / "study.json").write_text(json.dumps({"cmd": task.cmd, "seconds": seconds}, indent=1))
    return task, rc, seconds


def run_all(tasks: list[Task], jobs: int, threads: int = 1) -> list[str]:
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
                running[pool.submit(execute, pending.pop(t.name), threads)] = t.name
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--stages", nargs="+", default=list(DEFAULT_STAGES), choices=STAGES)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                        help="cpu: the 3-stage Swin at 64x32 (2-core budget); gpu: Swin-T at 128x64, one GPU")
    parser.add_argument("--data", type=Path, default=CUHK03, help="Market-layout dataset of the arms")
    parser.add_argument("--jobs", type=int, default=None, help="runs at once (default: 2 on cpu, 1 on gpu)")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps of a tiny network per run (smoke test)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and stop")
    parser.add_argument("--report", action="store_true", help="only write the tables")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    jobs = args.jobs or (2 if args.preset == "cpu" else 1)
    if not args.report:
        if not (args.data / "bounding_box_train").is_dir() and set(args.stages) - {"synthetic"}:
            raise SystemExit(f"study: {args.data} has no bounding_box_train/ (see ../shared/data/README.md)")
        tasks = plan(out, args.seeds, args.stages, args.quick, args.data.resolve(), args.preset)
        if args.dry_run:
            for t in tasks:
                print(f"[{t.name}] after {t.deps or '-'}\n  {' '.join(t.cmd)}")
            return
        start = time.perf_counter()
        # one intra-op thread per run on a CPU (tiny models, two runs at a time); a GPU run's loader
        # and host side get the machine's threads
        failed = run_all(tasks, jobs, threads=1 if args.preset == "cpu" else (os.cpu_count() or 1))
        print(f"study: {len(tasks) - len(failed)} of {len(tasks)} runs done "
              f"({(time.perf_counter() - start) / 60:.1f} min this time)")
        if failed:
            print(f"failed: {failed}")
    print(report(out, args.seeds, platform.processor() or platform.machine(), os.cpu_count()))


if __name__ == "__main__":
    main()
