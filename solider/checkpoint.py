"""Checkpoint files: atomic save, safe load, backbone weight import/export.

* :func:`atomic_save` writes through a temporary file in the target folder and renames it into
  place, so a crash never leaves a half-written checkpoint under the final name.
* :func:`safe_load` is ``torch.load(weights_only=True)`` with only ``argparse.Namespace`` allowed
  beyond plain data (official SOLIDER checkpoints carry their ``args``); anything else is refused.
* :func:`load_backbone_weights` finds the Swin weights in any of the layouts in circulation (ours,
  the official SOLIDER teacher/student, ``checkpoint_tea.pth``, SOLIDER-REID / TAO fine-tuned
  models, a bare state dict, Microsoft / timm ImageNet Swin) and loads them strictly.
* :func:`export_official` writes the official teacher layout that SOLIDER-REID and TAO read.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from solider.checkpoint_bounds import CheckpointError, check_archive  # noqa: F401 (CheckpointError: re-exported)
from solider.models.swin import arch_name
from solider.utils.logging import get_logger

logger = get_logger(__name__)

PathLike = str | os.PathLike
SOURCES = ("teacher", "student", "imagenet")
# Where fine-tuned / pretraining checkpoints keep the backbone, after stripping ``module.``.
BACKBONE_PREFIXES = ("backbone.", "model.base.", "base.", "")
_CORRUPT_HINTS = ("zip archive", "central directory", "corrupt", "eof", "truncated", "invalid load key")


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``.

    The temporary file is removed if anything fails; the previous file at ``path`` stays intact.
    A failed write (a full disk: ``ENOSPC``) raises ``OSError`` with its errno and ``path`` in the
    message; torch would report it as "unexpected pos ..." otherwise. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        cause = _write_error(exc)
        if cause is not None:
            message = f"cannot save {path}: {cause.strerror or cause} (the previous file is unchanged)"
            raise (OSError(cause.errno, message) if cause.errno else OSError(message)) from exc
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX; best effort)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def _write_error(exc: BaseException) -> OSError | None:
    """The OSError behind a failed save: ``exc`` itself, or the one ``torch.save`` turned into a
    RuntimeError ("[enforce fail at inline_container.cc] unexpected pos ...") on its way out."""
    if not isinstance(exc, (OSError, RuntimeError)):
        return None
    for _ in range(3):
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
        if exc is None:
            return None
    return None


def safe_load(path: PathLike, map_location: str | torch.device | None = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True`` (plain data, tensors, ``argparse.Namespace``).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file references a Python class or function (named in the message;
            nothing of it runs), or it is truncated / corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    check_archive(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(exc), re.IGNORECASE)
        if found:
            raise CheckpointError(
                f"refusing to load {path}: it references the Python global {found.group(1)!r} (a class or "
                "function; unpickling it could run code). Only tensors, plain Python values and "
                "argparse.Namespace are accepted (weights_only=True); re-save the file as plain data "
                "(e.g. a dict of state dicts) from a trusted session"
            ) from None
        raise CheckpointError(f"cannot read checkpoint {path}: {_unpickling_reason(exc)} (the file is "
                              "truncated or corrupt, or not plain data that weights_only=True accepts)"
                              ) from exc
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as exc:
        reason = _first_line(exc) or type(exc).__name__
        corrupt = isinstance(exc, EOFError | KeyError) or any(h in reason.lower() for h in _CORRUPT_HINTS)
        hint = " (the file is truncated or corrupt)" if corrupt else ""
        raise CheckpointError(f"cannot read checkpoint {path} ({path.stat().st_size} bytes): "
                              f"{type(exc).__name__}: {reason}{hint}") from exc


# Lines of torch's weights_only error that say nothing about the file (its first line even suggests
# weights_only=False, which this code base never does).
_TORCH_BOILERPLATE = ("weights only load failed", "please file an issue", "check the documentation")


def _unpickling_reason(exc: BaseException) -> str:
    """The specific line of torch's weights_only unpickling error."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line and not line.lower().startswith(_TORCH_BOILERPLATE):
            return line
    return type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind ``torch.compile`` / DDP / accelerate wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def export_official(model: nn.Module, path: PathLike,
                    head_state_dict: Mapping[str, Tensor] | None = None) -> Path:
    """Write ``{'teacher': {'backbone.<k>': v, ('head.<k>': v)}}`` (CPU tensors), atomically.

    The official SOLIDER tools, SOLIDER-REID and TAO read this layout (they take ``['teacher']``
    and the ``backbone.`` keys).
    """
    teacher = {f"backbone.{k}": v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    for k, v in (head_state_dict or {}).items():
        teacher[f"head.{k}"] = v.detach().cpu()
    return atomic_save({"teacher": teacher}, path)


# ----------------------------------------------------------------------------- ImageNet Swin import

_BLOCK_RENAMES = (("attn.", "attn.w_msa."), ("mlp.fc1.", "ffn.layers.0.0."), ("mlp.fc2.", "ffn.layers.1."))


def imagenet_layout(state_dict: Mapping[str, Any]) -> str | None:
    """``"microsoft"`` (patch merging at the end of a stage: MS repo, timm < 0.9), ``"timm"``
    (merging at the start of the next stage: timm >= 0.9), or None for a non-ImageNet-Swin dict."""
    if "patch_embed.proj.weight" not in state_dict or "layers.0.blocks.0.attn.qkv.weight" not in state_dict:
        return None
    return "microsoft" if "layers.0.downsample.reduction.weight" in state_dict else "timm"


def unfold_merge_order(weight: Tensor) -> Tensor:
    """Patch-merging weight from Swin's concat order to ``nn.Unfold`` order.

    Microsoft / timm concatenate the 2×2 neighbours position-major, positions (kh, kw) in the order
    (0,0), (1,0), (0,1), (1,1): index ``p * C + c``. ``nn.Unfold`` is channel-major with positions
    (0,0), (0,1), (1,0), (1,1): index ``c * 4 + kh * 2 + kw``. Accepts the LayerNorm vector (4C,)
    or the reduction matrix (2C, 4C) (its input axis is permuted).
    """
    swin_position = [0, 2, 1, 3]  # Unfold position q = kh*2+kw -> its slot in Swin's order
    if weight.ndim == 1:
        return weight.reshape(4, -1)[swin_position].t().reshape(-1)
    out_dim = weight.shape[0]
    return weight.reshape(out_dim, 4, -1)[:, swin_position].transpose(1, 2).reshape(out_dim, -1)


def _convert_imagenet(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    layout = imagenet_layout(state_dict)
    if layout is None:
        raise CheckpointError("not an ImageNet Swin state dict: expected 'patch_embed.proj.weight' and "
                              "'layers.0.blocks.0.attn.qkv.weight'")
    num_stages = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"layers\.(\d+)\.", k)))
    out, dropped = {}, []
    for key, value in state_dict.items():
        if key.startswith("head") or key.endswith("attn_mask"):  # classifier; derived shift-mask buffer
            dropped.append(key)
        elif key == "absolute_pos_embed":
            raise CheckpointError("ImageNet Swin with an absolute position embedding is not supported")
        elif key.startswith("patch_embed."):
            out[key.replace("patch_embed.proj.", "patch_embed.projection.")] = value
        elif key.startswith("norm."):  # the single final norm is the last stage's output norm
            out[f"norm{num_stages - 1}.{key[5:]}"] = value
        elif m := re.fullmatch(r"layers\.(\d+)\.downsample\.(.+)", key):
            stage = int(m.group(1)) - (1 if layout == "timm" else 0)
            out[f"stages.{stage}.downsample.{m.group(2)}"] = unfold_merge_order(value)
        elif m := re.fullmatch(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)", key):
            rest = m.group(3)
            for old, new in _BLOCK_RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            out[f"stages.{m.group(1)}.blocks.{m.group(2)}.{rest}"] = value
        else:
            raise CheckpointError(f"unexpected key {key!r} in an ImageNet Swin state dict")
    return out, dropped


def convert_imagenet_swin(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Microsoft or timm ImageNet Swin weights -> our (mmseg / SOLIDER) backbone layout.

    Renames the keys, permutes the patch-merging weights to ``nn.Unfold`` order, maps the final
    ``norm`` to ``norm3`` and drops the classifier and ``attn_mask`` buffers. norm0-2 and the
    semantic controller do not exist in ImageNet weights (see :func:`load_backbone_weights`).
    """
    return _convert_imagenet(state_dict)[0]


# ----------------------------------------------------------------------------- loading


@dataclass
class LoadReport:
    """What :func:`load_backbone_weights` found and loaded."""

    source: str
    layout: str
    loaded: int = 0
    ignored: list[str] = field(default_factory=list)  # non-backbone entries (heads, ...), by design
    kept_init: list[str] = field(default_factory=list)  # not in ImageNet weights: norm0-2, controller
    derived: list[str] = field(default_factory=list)  # relative_position_index absent: computed by the model
    dropped_controller: list[str] = field(default_factory=list)  # model built without the controller
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        derived = f" (+{len(self.derived)} relative position indices computed)" if self.derived else ""
        lines = [f"{self.source}: {self.layout}; loaded {self.loaded} backbone tensors{derived}, ignored "
                 f"{len(self.ignored)} non-backbone entries{_examples(self.ignored)}"]
        if self.kept_init:
            lines.append("  kept at their initial values (absent from this layout):"
                         f"{_examples(self.kept_init, 8)}")
        if self.dropped_controller:
            lines.append(f"  dropped {len(self.dropped_controller)} semantic-controller tensors "
                         "(the model has no controller)")
        for what, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                lines.append(f"  {len(items)} {what} keys: {_examples(items, 10)}")
        for key, theirs, ours in self.mismatched[:10]:
            lines.append(f"  shape mismatch {key}: checkpoint {theirs} vs model {ours}")
        return "\n".join(lines)


def _examples(keys: list[str], show: int = 3) -> str:
    if not keys:
        return ""
    more = f", ... ({len(keys) - show} more)" if len(keys) > show else ""
    return " (" + ", ".join(keys[:show]) + more + ")"


def _select_state_dict(obj: Any, source: str, name: str) -> tuple[dict[str, Any], str]:
    """The state dict inside a checkpoint (official loader order: teacher, state_dict, model)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{name}: expected a dict checkpoint, got {type(obj).__name__}")
    if source == "student":
        if "student" not in obj:
            raise CheckpointError(f"{name}: source='student' but there is no 'student' entry "
                                  f"(top-level keys: {sorted(obj)[:10]})")
        sd, layout = obj["student"], "student of a pretraining checkpoint"
    elif "teacher" in obj:
        sd, layout = obj["teacher"], "teacher of a pretraining checkpoint"
    elif isinstance(obj.get("state_dict"), Mapping):
        sd, layout = obj["state_dict"], "'state_dict' entry"
    elif isinstance(obj.get("model"), Mapping):
        sd, layout = obj["model"], "'model' entry"
    else:
        sd, layout = obj, "bare state dict"
    return {_strip_wrappers(k): v for k, v in sd.items()}, layout


def _strip_wrappers(key: str) -> str:
    """Remove the prefixes DDP (``module.``) and torch.compile (``_orig_mod.``) add, in any order."""
    while key.startswith(("module.", "_orig_mod.")):
        key = key.split(".", 1)[1]
    return key


def _find_backbone(sd: dict[str, Any], source: str, layout: str,
                   name: str) -> tuple[dict[str, Tensor], list[str], str]:
    """(backbone state dict in our layout, ignored keys, layout description)."""
    kind = imagenet_layout(sd)
    if source == "imagenet" or kind is not None:
        if kind is None:
            raise CheckpointError(f"{name}: source='imagenet' but this is not a Microsoft/timm Swin "
                                  "state dict")
        tensors = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
        converted, dropped = _convert_imagenet(tensors)
        return converted, dropped + [k for k in sd if k not in tensors], f"ImageNet Swin ({kind} layout)"
    for prefix in BACKBONE_PREFIXES:
        if f"{prefix}patch_embed.projection.weight" in sd:
            backbone = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            ignored = [k for k in sd if not k.startswith(prefix)]
            return backbone, ignored, layout + (f", backbone under '{prefix}'" if prefix else "")
    raise CheckpointError(f"{name}: no Swin backbone found ({layout}): expected "
                          f"'patch_embed.projection.weight' under one of the prefixes {BACKBONE_PREFIXES} "
                          f"(after removing 'module.' / '_orig_mod.'); "
                          f"first keys: {list(sd)[:5]}")


def infer_arch(backbone: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """{embed_dim, depths, num_heads, window_size} of a backbone state dict (None if unclear)."""
    blocks: dict[int, set[int]] = {}
    for key in backbone:
        if m := re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", key):
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    table = "stages.{}.blocks.0.attn.w_msa.relative_position_bias_table"
    tables = [backbone.get(table.format(s)) for s in sorted(blocks)]
    if "patch_embed.projection.weight" not in backbone or not blocks or any(t is None for t in tables):
        return None
    return dict(embed_dim=int(backbone["patch_embed.projection.weight"].shape[0]),
                depths=tuple(len(blocks[s]) for s in sorted(blocks)),
                num_heads=tuple(int(t.shape[1]) for t in tables),
                window_size=(round(tables[0].shape[0] ** 0.5) + 1) // 2)


def _arch_difference(ckpt: dict[str, Any], model: dict[str, Any]) -> tuple[str, str]:
    """The first differing dimension, described for the checkpoint and for the model."""
    if ckpt["embed_dim"] != model["embed_dim"]:
        return f"embed_dim {ckpt['embed_dim']}", f"{model['embed_dim']}"
    if len(ckpt["depths"]) != len(model["depths"]):
        return f"{len(ckpt['depths'])} stages", f"{len(model['depths'])}"
    for what in ("depths", "num_heads"):
        unit = "blocks" if what == "depths" else "heads"
        for s, (a, b) in enumerate(zip(ckpt[what], model[what])):
            if a != b:
                return f"{a} {unit} in stage {s}", f"{b}"
    return f"window {ckpt['window_size']}", f"{model['window_size']}"


def _check_arch(backbone: Mapping[str, Tensor], model: nn.Module, name: str) -> None:
    ckpt, ours = infer_arch(backbone), getattr(model, "arch", None)
    if ckpt is None or ours is None or ckpt == ours:
        return
    theirs, mine = _arch_difference(ckpt, ours)
    raise CheckpointError(f"{name}: checkpoint looks like {arch_name(ckpt)} ({theirs}) but the model is "
                          f"{arch_name(ours)} ({mine}); build the model with the checkpoint's architecture")


def _reconcile(backbone: dict[str, Tensor], own: dict[str, Tensor], report: LoadReport, has_controller: bool,
               name: str) -> None:
    """Fill derived/absent entries from the model and record what was done, in place."""
    for key, value in own.items():
        if key.endswith("relative_position_index"):  # a constant of the window size
            if key not in backbone:
                report.derived.append(key)
            elif not torch.equal(backbone[key].cpu(), value.cpu()):
                raise CheckpointError(f"{name}: {key} differs from the standard Swin relative position index")
            backbone[key] = value
    if not has_controller:
        report.dropped_controller = [k for k in backbone if k.startswith("semantic_embed_")]
        for key in report.dropped_controller:
            del backbone[key]
    if report.layout.startswith("ImageNet"):
        report.kept_init = [k for k in own if k not in backbone
                            and (k.startswith("semantic_embed_") or re.match(r"norm\d+\.", k))]
        backbone.update({k: own[k] for k in report.kept_init})
    report.missing = [k for k in own if k not in backbone]
    report.unexpected = [k for k in backbone if k not in own]
    report.mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in backbone.items()
                         if k in own and v.shape != own[k].shape]


def load_backbone_weights(model: nn.Module, path_or_state_dict: PathLike | Mapping[str, Any],
                          source: str = "teacher", strict: bool = True, *, name: str | None = None,
                          log: bool = True) -> LoadReport:
    """Load Swin backbone weights from any known checkpoint layout into ``model``.

    Recognised: our pretraining checkpoints and the official SOLIDER ones (``teacher`` /
    ``student`` state dicts with ``backbone.`` keys, ``module.`` removed), the converted official
    ``checkpoint_tea.pth`` (bare ``backbone.``/``head.`` dict), fine-tuned ReID models (``model`` ->
    ``backbone.``; SOLIDER-REID ``base.``; TAO ``state_dict`` -> ``model.base.``), a bare backbone
    state dict, and Microsoft / timm ImageNet Swin weights (converted; detected automatically).
    Non-backbone entries (DINO heads, classifiers) are ignored by design and counted.

    Args:
        model: a :class:`~solider.models.swin.SwinTransformer` (compile/DDP wrappers are unwrapped).
        path_or_state_dict: a checkpoint file (read with :func:`safe_load`) or an already loaded dict.
        source: ``"teacher"`` (default; the teacher when the file has one, else auto-detected),
            ``"student"`` (the student of a pretraining checkpoint) or ``"imagenet"``.
        name: the file an already loaded dict came from, for the messages.
        strict: raise unless every model tensor is matched with the right shape (ImageNet
            weights: norm0-2 and the controller keep their initial values, as reported). With
            False, load what fits and report the rest.
        name: the file name to report when ``path_or_state_dict`` is an already loaded dict.
        log: log the report (a caller that reports it inside its own message passes False).

    Returns:
        The :class:`LoadReport` (also logged unless ``log=False``).

    Raises:
        CheckpointError: unreadable file, no backbone found, an architecture that differs from the
            model's (named, e.g. "swin_small (18 blocks in stage 2)"), or a strict load that fails.
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r}: expected one of {SOURCES}")
    if isinstance(path_or_state_dict, str | os.PathLike):
        name, obj = str(path_or_state_dict), safe_load(path_or_state_dict)
    else:
        name, obj = name or "<state dict>", path_or_state_dict  # callers pass the file it came from
    sd, layout = _select_state_dict(obj, source, name)
    backbone, ignored, layout = _find_backbone(sd, source, layout, name)
    target = _unwrap(model)
    _check_arch(backbone, target, name)
    own = target.state_dict()
    report = LoadReport(source=name, layout=layout, ignored=ignored)
    _reconcile(backbone, own, report, getattr(target, "semantic_embed_w", None) is not None, name)
    if not report.ok and strict:
        raise CheckpointError(f"checkpoint does not fit the model (strict load):\n{report}")
    fitting = {k: v for k, v in backbone.items() if k in own and v.shape == own[k].shape}
    target.load_state_dict(fitting, strict=report.ok)
    report.loaded = len(fitting) - len(report.kept_init) - len(report.derived)
    if log:
        logger.info("%s", report)
    return report
