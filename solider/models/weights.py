"""Backbone weights inside checkpoints: what every loader (Swin, ResNet, ReID heads) shares.

timm's habit: one :func:`clean_state_dict` removes the prefixes that wrappers add to the keys
(DDP ``module.``, ``torch.compile`` ``_orig_mod.``) and, given one, a container prefix such as
``backbone.``; :func:`checkpoint_state_dict` finds the state dict inside the checkpoint layouts in
circulation. Each architecture's own conversion lives beside its model
(:mod:`solider.models.swin_weights`, :mod:`finetune.resnet`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from solider.checkpoint import CheckpointError

__all__ = ["WRAPPER_PREFIXES", "BACKBONE_PREFIXES", "clean_state_dict", "checkpoint_state_dict",
           "find_prefix", "unwrap_model", "LoadReport"]

V = TypeVar("V")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Where checkpoints keep a backbone, once the wrappers are removed: ours and the official SOLIDER
# (``backbone.``), TAO (``model.base.``), BoT / SOLIDER-REID (``base.``), a bare state dict.
BACKBONE_PREFIXES = ("backbone.", "model.base.", "base.", "")


def clean_state_dict(state_dict: Mapping[str, V], prefix: str = "") -> dict[str, V]:
    """The entries under ``prefix``, with it and the wrapper prefixes before it removed.

    ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) are removed in any order and number
    (``module._orig_mod.backbone.x`` -> ``backbone.x``); then, with a ``prefix`` such as
    ``"backbone."``, only the keys starting with it are kept, without it.
    """
    out = {}
    for key, value in state_dict.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        if key.startswith(prefix):
            out[key[len(prefix):]] = value
    return out


def checkpoint_state_dict(obj: Any, source: str = "teacher", name: str = "<state dict>"
                          ) -> tuple[dict[str, Any], str]:
    """(the state dict inside a loaded checkpoint, keys cleaned; where it was found).

    The official loader's order: ``student`` when ``source="student"``, else ``teacher``, then a
    ``state_dict`` entry (TAO), a ``model`` entry (ours, BoT), else the dict itself.
    """
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
    return clean_state_dict(sd), layout


def find_prefix(state_dict: Mapping[str, Any], *markers: str) -> str | None:
    """The first of :data:`BACKBONE_PREFIXES` under which every marker key is present, else None."""
    return next((p for p in BACKBONE_PREFIXES if all(p + m in state_dict for m in markers)), None)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module behind ``torch.compile`` / DDP / accelerate wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


@dataclass
class LoadReport:
    """What a backbone loader found and loaded."""

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
