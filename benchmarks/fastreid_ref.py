"""fast-reid's compiled Market-1501 evaluator (``rank_cy.pyx``), built at benchmark time.

The registry package ``fastreid`` (1.4.0) ships ``fastreid/evaluation/rank_cylib/rank_cy.pyx``.
:func:`load_fastreid_evaluator` downloads the wheel into the benchmark's own cache
(``.cache/bench/fastreid``), extracts that file, compiles it with Cython (installed into the same
cache if missing) and a C compiler, and imports it. Nothing of fast-reid enters the repository.
Every failure (no network, no compiler, a failed build) returns ``None`` with the reason, so the
benchmark reports the reference as skipped instead of crashing.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench" / "fastreid"
VERSION = "1.4.0"
PYX = "fastreid/evaluation/rank_cylib/rank_cy.pyx"

_BUILD = r"""
import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
setup(name="rank_cy", script_args=["build_ext", "--inplace", "-q"],
      ext_modules=cythonize([Extension("rank_cy", ["rank_cy.pyx"], include_dirs=[np.get_include()])],
                            quiet=True, language_level=3))
"""


def _run(cmd: list[str], cwd: Path, env_path: Path | None = None, timeout: int = 300) -> tuple[bool, str]:
    import os

    env = dict(os.environ)
    if env_path is not None:
        env["PYTHONPATH"] = f"{env_path}{os.pathsep}{env.get('PYTHONPATH', '')}"
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("rank_cy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def load_fastreid_evaluator(
    cache: Path = CACHE, allow_download: bool = True
) -> tuple[ModuleType | None, str]:
    """(the compiled ``rank_cy`` module, "") or (None, why it is not available)."""
    built = sorted(cache.glob("rank_cy*.so")) + sorted(cache.glob("rank_cy*.pyd"))
    if built:
        return _import(built[0]), ""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None, "no C compiler (cc/gcc/clang) on this machine"
    cache.mkdir(parents=True, exist_ok=True)
    pyx = cache / "rank_cy.pyx"
    if not pyx.is_file():
        wheels = sorted(cache.glob(f"fastreid-{VERSION}-*.whl"))
        if not wheels and allow_download:
            ok, log = _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    f"fastreid=={VERSION}",
                    "--no-deps",
                    "--only-binary",
                    ":all:",
                    "-d",
                    str(cache),
                    "-q",
                ],
                cache,
                timeout=120,
            )
            wheels = sorted(cache.glob(f"fastreid-{VERSION}-*.whl"))
            if not wheels:
                return None, f"could not download fastreid=={VERSION} from the registry: {log.strip()[-300:]}"
        if not wheels:
            return None, f"fastreid=={VERSION} is not in {cache} and downloads are off"
        with zipfile.ZipFile(wheels[0]) as wheel:
            pyx.write_bytes(wheel.read(PYX))
    deps = cache / "deps"
    if importlib.util.find_spec("Cython") is None and not (deps / "Cython").is_dir():
        if not allow_download:
            return None, "Cython is not installed and downloads are off"
        ok, log = _run(
            [sys.executable, "-m", "pip", "install", "--target", str(deps), "cython", "-q"],
            cache,
            timeout=300,
        )
        if not ok:
            return None, f"could not install Cython: {log.strip()[-300:]}"
    ok, log = _run([sys.executable, "-c", _BUILD], cache, env_path=deps)
    built = sorted(cache.glob("rank_cy*.so")) + sorted(cache.glob("rank_cy*.pyd"))
    if not ok or not built:
        return None, f"building rank_cy.pyx failed: {log.strip()[-500:]}"
    return _import(built[0]), ""


def fastreid_evaluate(
    module: ModuleType, distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50
) -> dict:
    """fast-reid's ``evaluate_cy`` (Market-1501 protocol) as a dict like ``evaluate_rank``'s."""
    import numpy as np

    cmc, all_ap, all_inp = module.evaluate_cy(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, False)
    return {"cmc": np.asarray(cmc), "mAP": float(np.mean(all_ap)), "mINP": float(np.mean(all_inp))}
