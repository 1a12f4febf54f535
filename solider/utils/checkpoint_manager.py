"""Training checkpoints: ``last.pt`` + periodic ``step_XXXXXXXX.pt``, atomic writes, resume=auto.

A checkpoint is a dict of tensors and plain values (see DESIGN.md, "Run outputs"). A trainer names
what it saves once, as a name -> object mapping (DINO's ``restart_from_checkpoint`` objects, fast-reid's
checkpointables): :meth:`CheckpointManager.save` stores each object's state dict and each plain value
under its name, :func:`restore_objects` loads the same mapping back in place. Files are
written through :func:`solider.checkpoint.atomic_save` (temp file + rename), so a crash during a
save leaves the previous files intact (and the next run removes the temporary file it left);
``resume=auto`` picks the newest checkpoint that loads and says which corrupt ones it passed over;
:func:`resume_errors` explains a checkpoint that does not fit the run.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from solider.checkpoint import CheckpointError, atomic_save, safe_load
from solider.utils.logging import get_logger

logger = get_logger(__name__)

_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
# atomic_save's temporary files: ".<name>.<pid>.<8 hex>.tmp"
_TEMP_FILE = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")


def _periodic_files(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of the periodic checkpoints, newest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _STEP_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def inside(path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """``path`` resolved, after checking that it lies inside ``root`` (writes never escape it)."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise ValueError(f"refusing to write {resolved}: outside the output folder {base}")
    return resolved


def remove_stale_temp_files(directory: Path) -> list[str]:
    """Delete the temporary files of saves that were interrupted (a killed process cannot clean up
    after itself; each such file is as large as a checkpoint). Returns their names."""
    if not directory.is_dir():
        return []
    stale = sorted(p for p in directory.iterdir() if _TEMP_FILE.match(p.name) and p.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        logger.warning("removed %d temporary files of interrupted checkpoint saves from %s: %s", len(stale),
                       directory, [p.name for p in stale[:5]])
    return [p.name for p in stale]


def capture_state(objects: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint dict of a name -> object mapping, in the mapping's order: an object with
    ``state_dict()`` is stored as its state dict, anything else (step, config, None for a part this run
    lacks) as it is. Call on every process: a state may be gathered from all of them (RNG states)."""
    return {name: obj.state_dict() if hasattr(obj, "state_dict") else obj for name, obj in objects.items()}


def restore_objects(state: Mapping[str, Any], objects: Mapping[str, Any], path: str | os.PathLike,
                    optional: Collection[str] = ()) -> None:
    """Load a :func:`capture_state` dict back into the objects of the same mapping (``load_state_dict``),
    in the mapping's order; plain values (step, history, ...) are the caller's to read from ``state``.

    An object that is None (a part this run lacks, e.g. no grad scaler) is passed over. An entry the
    checkpoint lacks (absent, or None) raises ``KeyError(name)`` with a note naming ``path`` and the
    entries it has (:func:`resume_errors` shows both), unless it is ``optional``: that object then
    keeps its fresh state, with a warning.
    """
    for name, obj in objects.items():
        if obj is None or not hasattr(obj, "load_state_dict"):
            continue
        if state.get(name) is not None:
            obj.load_state_dict(state[name])
        elif name in optional:
            logger.warning("checkpoint %s holds no '%s' state: this run's %s starts afresh", path, name, name)
        else:
            found = "it is None" if name in state else f"its entries: {sorted(state)}"
            # a KeyError, as indexing the state raised before; the note shows under the traceback
            error = KeyError(name)
            error.__notes__ = [f"checkpoint {path} holds no '{name}' entry, which this run needs ({found})"]
            raise error


class TensorState:
    """A bare tensor as a checkpoint entry (DINO's loss centre): saved as a CPU copy, restored in place."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def state_dict(self) -> torch.Tensor:
        return self.tensor.detach().cpu()

    def load_state_dict(self, value: torch.Tensor) -> None:
        self.tensor.copy_(value.to(self.tensor.device))


class CheckpointManager:
    """Writes ``<output_dir>/checkpoints/{last.pt, step_XXXXXXXX.pt}`` and keeps the newest ``keep_last``
    periodic files. Only the main process writes; call :meth:`save` on every process anyway.

    On the main process, construction removes the temporary files of saves a crash interrupted
    (only one run writes into an output folder at a time).
    """

    def __init__(self, output_dir: str | os.PathLike, keep_last: int = 3, is_main_process: bool = True):
        self.directory = inside(Path(output_dir) / "checkpoints", output_dir)
        self.keep_last = keep_last
        self.is_main = is_main_process
        if is_main_process:
            remove_stale_temp_files(self.directory)

    def save(self, objects: Mapping[str, Any], step: int, periodic: bool = False) -> Path | None:
        """Save a name -> object mapping (:func:`capture_state`) as last.pt (and as a periodic file when
        ``periodic``); prune old ones."""
        state = capture_state(objects)  # on every process: it may gather
        if not self.is_main:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        # The periodic file first: if we die between the two writes, resume=auto still finds the
        # newest state by comparing its step with last.pt's.
        if periodic:
            atomic_save(state, self.directory / f"step_{step:08d}.pt")
            for _, old in _periodic_files(self.directory)[max(self.keep_last, 1):]:
                old.unlink(missing_ok=True)
        last = self.directory / "last.pt"
        atomic_save(state, last)
        return last

    def save_named(self, objects: Mapping[str, Any], name: str) -> Path | None:
        """An extra named checkpoint (e.g. ``best.pt``) of a name -> object mapping, written atomically."""
        state = capture_state(objects)
        if not self.is_main:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        path = inside(self.directory / name, self.directory)
        atomic_save(state, path)
        return path


def _try_load(path: Path) -> dict | None:
    try:
        state = safe_load(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is passed over, and said so
        logger.warning("checkpoint %s cannot be loaded (%s); trying an older one", path, exc)
        return None
    if not isinstance(state, dict) or "step" not in state:
        logger.warning("checkpoint %s has no 'step' entry; not a training checkpoint", path)
        return None
    return state


def load_resume_state(resume: str | None, output_dir: str | os.PathLike) -> tuple[Path, dict] | None:
    """Resolve ``resume`` (None, ``"auto"`` or a path) to ``(path, state)``.

    ``auto`` looks in ``<output_dir>/checkpoints``: the newest of last.pt and the periodic files
    that loads; None when there is nothing to resume (a fresh run). An explicit path must load and
    hold a training state (a dict with ``step``), else :class:`CheckpointError` names it.
    """
    if not resume:
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"resume={resume}: no such checkpoint file")
        state = safe_load(path)
        if not isinstance(state, dict) or "step" not in state:
            found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"resume={resume}: not a training checkpoint (no 'step' entry; found "
                                  f"{found}); to start from its weights use init (pretraining) or --init "
                                  "(fine-tuning)")
        return path, state
    directory = Path(output_dir) / "checkpoints"
    last = directory / "last.pt"
    best: tuple[Path, dict] | None = None
    if last.is_file():
        state = _try_load(last)
        if state is not None:
            best = (last, state)
    for step, path in _periodic_files(directory):
        if best is not None and step <= int(best[1]["step"]):
            break
        state = _try_load(path)
        if state is not None:
            best = (path, state)
            break
    if best is None and (last.is_file() or _periodic_files(directory)):
        raise RuntimeError(f"resume=auto: no loadable checkpoint in {directory} (see warnings above)")
    return best


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: Mapping | None, current: Mapping,
                       ignore: tuple[str, ...] = ("output_dir", "resume")) -> list[str]:
    """``key: <checkpoint value> in the checkpoint, <value> in this run`` for every differing key."""
    old, new = _flatten(saved or {}), _flatten(current)
    keys = [k for k in sorted(set(old) | set(new), key=lambda k: (not k.startswith("model."), k))
            if k not in ignore and old.get(k) != new.get(k)]  # the model's keys first
    return [f"{k}: {old.get(k, '(absent)')} in the checkpoint, {new.get(k, '(absent)')} in this run"
            for k in keys]


@contextlib.contextmanager
def resume_errors(path: str | os.PathLike, saved_config: Mapping | None, config: Mapping) -> Iterator[None]:
    """Re-raise a failure to restore a resumed state as a :class:`CheckpointError` that names the
    file, the first lines of the cause and the config keys that differ between the checkpoint and
    this run (the usual reason: a checkpoint of another model or recipe)."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError) as exc:
        text = "\n".join([str(exc), *getattr(exc, "__notes__", ())])
        lines = [line.strip()[:200] for line in text.splitlines() if line.strip()][:3]
        diffs = config_differences(saved_config, config)
        shown = "; ".join(diffs[:8]) + (f"; ... ({len(diffs) - 8} more)" if len(diffs) > 8 else "")
        raise CheckpointError(
            f"resume: {path} does not fit this run ({type(exc).__name__}: {' / '.join(lines)}). "
            + (f"Config differences: {shown}. " if diffs else "")
            + "A checkpoint of another model cannot be resumed; start from its weights with init / "
              "--init instead.") from exc
