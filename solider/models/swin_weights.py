"""Swin weights from and to the layouts in circulation (timm's ``checkpoint_filter_fn`` habit).

* :func:`load_backbone_weights` finds the Swin weights in any known layout (ours, the official
  SOLIDER teacher/student, ``checkpoint_tea.pth``, SOLIDER-REID / TAO fine-tuned models, a bare state
  dict, Microsoft / timm ImageNet Swin) and loads them strictly.
* :func:`convert_imagenet_swin` maps ImageNet Swin keys to the official SOLIDER (mmseg) layout,
  which :class:`~solider.models.swin.SwinTransformer` keeps natively.
* :func:`infer_arch` reads the architecture off a state dict; :func:`find_swin_backbone` is the one
  parser of a checkpoint's Swin backbone (evaluation reuses it to build the model).
* :func:`export_official` writes the official teacher layout that SOLIDER-REID and TAO read.

File I/O (atomic save, safe load) is :mod:`solider.checkpoint`'s.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from solider.checkpoint import CheckpointError, PathLike, atomic_save, safe_load
from solider.models.swin import ARCHS, resolve_arch
from solider.models.weights import (
    BACKBONE_PREFIXES,
    LoadReport,
    checkpoint_state_dict,
    clean_state_dict,
    find_prefix,
    unwrap_model,
)
from solider.utils.logging import get_logger

logger = get_logger(__name__)

SOURCES = ("teacher", "student", "imagenet")


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


# ----------------------------------------------------------------------------- architecture


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


def arch_name(arch: Mapping[str, Any]) -> str:
    """"swin_tiny" etc. for a released layout, else a compact description of the dims."""
    dims = resolve_arch(arch)
    for name, ref in ARCHS.items():
        if dims == {**ref, "depths": tuple(ref["depths"]), "num_heads": tuple(ref["num_heads"])}:
            return name
    return "custom Swin (embed_dim={embed_dim}, depths={depths}, num_heads={num_heads}, " \
           "window_size={window_size})".format(**dims)


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


# ----------------------------------------------------------------------------- loading


def find_swin_backbone(obj: Any, source: str = "teacher", name: str = "<state dict>"
                       ) -> tuple[dict[str, Tensor], list[str], str]:
    """(the Swin backbone of a loaded checkpoint in our layout, ignored keys, layout description).

    Raises:
        CheckpointError: no Swin backbone in any known layout (the message lists the first keys).
    """
    sd, layout = checkpoint_state_dict(obj, source, name)
    kind = imagenet_layout(sd)
    if source == "imagenet" or kind is not None:
        if kind is None:
            raise CheckpointError(f"{name}: source='imagenet' but this is not a Microsoft/timm Swin "
                                  "state dict")
        tensors = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
        converted, dropped = _convert_imagenet(tensors)
        return converted, dropped + [k for k in sd if k not in tensors], f"ImageNet Swin ({kind} layout)"
    prefix = find_prefix(sd, "patch_embed.projection.weight")
    if prefix is None:
        raise CheckpointError(f"{name}: no Swin backbone found ({layout}): expected "
                              f"'patch_embed.projection.weight' under one of the prefixes "
                              f"{BACKBONE_PREFIXES} (after removing 'module.' / '_orig_mod.'); "
                              f"first keys: {list(sd)[:5]}")
    ignored = [k for k in sd if not k.startswith(prefix)]
    return clean_state_dict(sd, prefix), ignored, layout + (f", backbone under '{prefix}'" if prefix else "")


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
        path_or_state_dict: a checkpoint file (read with :func:`~solider.checkpoint.safe_load`) or
            an already loaded dict.
        source: ``"teacher"`` (default; the teacher when the file has one, else auto-detected),
            ``"student"`` (the student of a pretraining checkpoint) or ``"imagenet"``.
        strict: raise unless every model tensor is matched with the right shape (ImageNet
            weights: norm0-2 and the controller keep their initial values, as reported). With
            False, load what fits and report the rest.
        name: the file name to report when ``path_or_state_dict`` is an already loaded dict.
        log: log the report (a caller that reports it inside its own message passes False).

    Returns:
        The :class:`~solider.models.weights.LoadReport` (also logged unless ``log=False``).

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
    backbone, ignored, layout = find_swin_backbone(obj, source, name)
    target = unwrap_model(model)
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


def export_official(model: nn.Module, path: PathLike,
                    head_state_dict: Mapping[str, Tensor] | None = None) -> Path:
    """Write ``{'teacher': {'backbone.<k>': v, ('head.<k>': v)}}`` (CPU tensors), atomically.

    The official SOLIDER tools, SOLIDER-REID and TAO read this layout (they take ``['teacher']``
    and the ``backbone.`` keys).
    """
    teacher = {f"backbone.{k}": v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}
    for k, v in (head_state_dict or {}).items():
        teacher[f"head.{k}"] = v.detach().cpu()
    return atomic_save({"teacher": teacher}, path)
