"""Run logging: scalars to TensorBoard (through accelerate's tracker) and to ``log.jsonl``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch


def flatten_for_hparams(data: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config → flat ``{"a.b": scalar}``; TensorBoard hparams only take scalars and strings."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_for_hparams(value, name + "."))
        elif isinstance(value, (bool, int, float, str)) or value is None:
            flat[name] = value if value is not None else "None"
        else:
            flat[name] = str(value)
    return flat


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu()
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class RunLogger:
    """Logs scalars to TensorBoard via ``accelerator.log`` and one JSON line per call to log.jsonl.

    Only the main process writes. TensorBoard event files go to ``<output_dir>/tb``.
    """

    def __init__(self, accelerator, output_dir: str | os.PathLike, config: dict | None = None,
                 run_name: str = "tb"):
        self.accelerator = accelerator
        self.output_dir = Path(output_dir)
        self.is_main = accelerator.is_main_process
        self.tb_dir = self.output_dir / run_name
        # no config here: accelerate would write the hparams into a new run folder named by a
        # timestamp (one extra "run" per training run in TensorBoard's list); see _write_hparams
        accelerator.init_trackers(run_name)
        if self.is_main and config:
            self._write_hparams(flatten_for_hparams(config))
        self._jsonl = open(self.output_dir / "log.jsonl", "a") if self.is_main else None

    def _write_hparams(self, flat: dict[str, Any]) -> None:
        """The config in TensorBoard's HParams tab, written into this run's own event file."""
        from torch.utils.tensorboard.summary import hparams

        writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
        for summary in hparams(flat, metric_dict={}):
            writer.file_writer.add_summary(summary)
        writer.flush()

    def log(self, values: dict[str, Any], step: int) -> None:
        """Log scalars (tensors are converted; non-finite values are kept in JSON as strings)."""
        plain = {k: _plain(v) for k, v in values.items() if v is not None}
        scalars = {k: v for k, v in plain.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.accelerator.log(scalars, step=step)
        if self._jsonl is not None:
            record = {"step": step}
            for k, v in plain.items():
                record[k] = v if not (isinstance(v, float) and not math.isfinite(v)) else str(v)
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()

    def log_image(self, tag: str, image: torch.Tensor | np.ndarray, step: int) -> None:
        """An image (H, W, 3) uint8 or (3, H, W) float in [0, 1]."""
        if not self.is_main:
            return
        tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
        if isinstance(image, np.ndarray):
            tracker.add_image(tag, image, global_step=step, dataformats="HWC")
        else:
            tracker.add_image(tag, image.detach().cpu(), global_step=step, dataformats="CHW")
        tracker.flush()

    def layout(self, charts: dict[str, dict[str, list]]) -> None:
        """Group tags into shared charts (TensorBoard's Custom Scalars tab), e.g.
        ``{"monitor": {"mAP": ["Multiline", ["eval/teacher/mAP", "eval/student/mAP"]]}}``."""
        if self.is_main:
            tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
            tracker.add_custom_scalars(charts)
            tracker.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        self.accelerator.end_training()
