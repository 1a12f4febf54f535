"""Security: no unsafe code patterns in the code base (an AST scan, see source_scan.py), the SLURM
launcher passes arguments verbatim, and the entry points write nothing outside ``output_dir``."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from solider.utils.checkpoint_manager import CheckpointManager
from tests.reliability.runs import ROOT
from tests.reliability.source_scan import scan_python, scan_shell, scan_tree

SCANNED = ("solider", "finetune", "eval", "launch", "benchmarks")
# Reviewed exceptions, (file, rule) -> why it is safe.
REVIEWED = {
    ("benchmarks/bench_eval.py", "python-c"): "the child's code is a constant template filled with ints and "
                                              "repr() strings only (no value can become code)",
}

UNSAFE = '''
import pickle as pk, yaml, subprocess, os, builtins, torch
import numpy as np
from os import system
from torch import load
eval(text)
exec(code)
compile(src, "f", "exec")
pk.loads(blob)
yaml.load(f)
yaml.load(f, Loader=yaml.Loader)
subprocess.run(cmd, shell=True)
subprocess.Popen(cmd, shell=flag)
system("ls")
os.popen("ls")
torch.load(path)
load(path, weights_only=False)
torch.load(path, weights_only=flag)
np.load(path, allow_pickle=True)
getattr(builtins, name)(x)
subprocess.run([sys.executable, "-c", code])
torch.jit.load(path)
'''

HARMLESS = '''
"""Mentions eval(x), exec(y), pickle.loads(z), os.system('rm'), shell=True in a docstring."""
import re, yaml, subprocess, torch
import numpy as np
# eval(text); torch.load(path); subprocess.run(cmd, shell=True)
message = "never call eval(text) or torch.load(path, weights_only=False)"
model.eval()
re.compile(r"x")
torch.compile(model)
yaml.safe_load(f)
yaml.load(f, Loader=yaml.SafeLoader)
torch.load(path, map_location="cpu", weights_only=True)
np.load(path, allow_pickle=False)
np.load(path)
subprocess.run([sys.executable, "script.py", "-c", "constant"], shell=False)
subprocess.run([sys.executable, "-c", "print(1)"])
getattr(module, "name")
'''


def test_the_scanner_finds_every_pattern_even_behind_aliases():
    found = [(f.line, f.rule) for f in scan_python(UNSAFE, "unsafe.py")]
    forbidden = "forbidden-call"
    assert found == [(6, forbidden), (7, forbidden), (8, forbidden), (9, forbidden), (10, "yaml"),
                     (11, "yaml"), (12, "shell"), (13, "shell"), (14, forbidden), (15, forbidden),
                     (16, "weights-only"), (17, "weights-only"), (18, "weights-only"), (19, "pickle"),
                     (20, "dynamic-lookup"), (21, "python-c"), (22, forbidden)]


def test_the_scanner_is_not_fooled_by_comments_strings_or_lookalikes():
    assert scan_python(HARMLESS, "harmless.py") == []


def test_the_shell_scanner():
    script = textwrap.dedent('''\
        # eval "$x" in a comment is fine; so is bash -c "echo $*" here
        echo "eval is a word"
        srun bash -c "accelerate launch \\
            --flag $X $*"
        eval "$cmd"
        bash -c 'exec tool "$@"' bash "$@"
    ''')
    assert [(f.line, f.rule) for f in scan_shell(script, "x.sh")] == [(3, "shell-splice"), (5, "shell-eval")]


def test_the_code_base_has_no_unsafe_patterns():
    findings, scanned = scan_tree(ROOT, SCANNED)
    assert scanned > 60  # the scan really walked the packages
    reviewed = [f for f in findings if (f.path, f.rule) in REVIEWED]
    unsafe = [f for f in findings if (f.path, f.rule) not in REVIEWED]
    assert not unsafe, "unsafe patterns:\n" + "\n".join(map(str, unsafe))
    assert {(f.path, f.rule) for f in reviewed} == set(REVIEWED), "a reviewed exception no longer exists"


def _stub(path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_slurm_launcher_passes_arguments_verbatim(tmp_path):
    # srun runs its command locally, accelerate records its argv: overrides with spaces, quotes and
    # $(...) must arrive as written, and nothing in them may run.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv.json"
    _stub(bin_dir / "srun", '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done; exec "$@"\n')
    # many nodes: more output than a pipe holds, so a reader that stops early would SIGPIPE scontrol
    _stub(bin_dir / "scontrol", "#!/usr/bin/env bash\nseq -f 'node-%g' 1 20000\n")
    _stub(bin_dir / "accelerate", f"#!{sys.executable}\nimport json, sys\n"
                                  f"json.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    marker = tmp_path / "code_ran"
    overrides = ["data.root=/data/my crops", f"init=$(touch {marker})", "model.arch='swin_small'", "a;b"]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node-[1-20000]",
           "SLURM_NNODES": "2", "SLURM_NODEID": "1", "OUTPUT_DIR": "runs/with space"}
    subprocess.run(["bash", str(ROOT / "launch" / "slurm_pretrain.sh"), *overrides], env=env, cwd=ROOT,
                   check=True, timeout=60)
    argv = json.loads(record.read_text())
    assert argv[argv.index("--machine_rank") + 1] == "1" and argv[argv.index("--num_processes") + 1] == "16"
    assert argv[argv.index("--main_process_ip") + 1] == "node-1"
    assert argv[argv.index("solider/pretrain.py"):] == [
        "solider/pretrain.py", "--config", "configs/pretrain/swin_tiny.yaml", "output_dir=runs/with space",
        "resume=auto", *overrides]
    assert not marker.exists()


@pytest.mark.parametrize("entry", ["pretrain", "finetune"])
def test_entry_points_write_only_inside_output_dir(entry, request):
    # The uninterrupted reference runs ran with an empty working directory, HOME and TMPDIR of their
    # own: everything they wrote must be in output_dir.
    reference = request.getfixturevalue(f"{entry}_reference")
    out = reference.result()
    written = {str(p.relative_to(reference.sandbox)) for p in reference.sandbox.rglob("*") if not p.is_dir()}
    assert written == set(), f"written outside {out}: {sorted(written)}"
    names = {p.relative_to(out).parts[0] for p in out.rglob("*")}
    expected = {"config.yaml", "log.jsonl", "tb", "checkpoints", "run.lock"} | (
        {"metrics.json"} if entry == "finetune" else {"crop_index.npz"})  # pretraining: the run's crop index
    assert names == expected


def test_checkpoints_cannot_leave_output_dir(tmp_path):
    out, linked, elsewhere = tmp_path / "run", tmp_path / "linked", tmp_path / "elsewhere"
    for folder in (out, linked, elsewhere):
        folder.mkdir()
    with pytest.raises(ValueError, match="outside the output folder"):
        CheckpointManager(out).save_named({"step": 1}, "../../escape.pt")
    (linked / "checkpoints").symlink_to(elsewhere, target_is_directory=True)  # a link out of output_dir
    refused = f"refusing to write {elsewhere}: outside the output folder {linked}"
    with pytest.raises(ValueError, match=refused):
        CheckpointManager(linked)
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "escape.pt").exists()
