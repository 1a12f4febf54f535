"""The config keys that both training entry points have, each declared once.

``solider/pretrain_config.py`` and ``finetune/config.py`` extend these classes with their own keys.
A key is declared here with its type, bounds and advice; where fine-tuning's recipe starts from
another value it says so where it places the section (``section(TrainConfig, "loop", epochs=120)``),
and a subclass redeclares a key only where its meaning or bounds truly differ. The defaults here are
pretraining's (the official SOLIDER recipe). The optimiser sections share no key that means the same
(pretraining's lr is per 256 images and scaled, its weight decay a schedule; fine-tuning's are SGD /
Adam values), so each entry point declares its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from solider.config import opt
from solider.models.swin_config import SwinArch


@dataclass
class RunConfig:
    """The root keys of a training run; an entry point redeclares ``output_dir`` with its folder."""

    output_dir: str = opt("runs/run", "checkpoints/, config.yaml, log.jsonl, tb/")
    seed: int = opt(0, "random seed (CPU runs repeat bit for bit)")
    resume: str | None = opt(None, "a checkpoint path, or auto for the newest in output_dir")
    overwrite: bool = opt(False, "replace the results of an earlier run in output_dir (else refused; "
                                 "resume=auto continues it)")


@dataclass
class ModelSection(SwinArch):  # arch, embed_dim, depths, num_heads, window_size; arch_spec(); validate()
    img_size: tuple[int, int] = opt((256, 128), "input height, width (pretraining: of the global crops, "
                                                "official 256x128; fine-tuning: for training and test, "
                                                "SOLIDER-REID 384x128, BoT/TAO 256x128)")
    drop_path_rate: float = opt(0.1, "stochastic depth (SOLIDER and SOLIDER-REID 0.1; pretraining's teacher "
                                     "uses 0; ResNet: timm's per-block rate, BoT/TAO 0)", ge=0, lt=1)
    use_checkpoint: bool = opt(False, "gradient checkpointing: less memory, ~30% slower")


@dataclass
class DataSection:
    root: str | None = opt(None, "pretraining: a folder tree of person crops, a list file or a Market-format "
                                 "root; fine-tuning: a Market-format root (Market-1501, CUHK03 subset, ...) "
                                 "or an MSMT17 root; None = the synthetic demo set, generated once into "
                                 "data.cache_dir")
    num_workers: int | None = opt(None, "data loader processes per training process; None = from the "
                                        "cores available to the process, min(4, cores - 1)", ge=0)
    cache_dir: str = opt(".cache/synthetic", "where the synthetic set is generated when root is None")
    synthetic_ids: int = opt(60, "synthetic set: identities (half train, half test)", gt=1)
    synthetic_images_per_camera: int = opt(4, "synthetic set: images per identity and camera", gt=0)


@dataclass
class AugmentSection:
    mean: tuple[float, float, float] = opt((0.485, 0.456, 0.406), "normalisation mean (ImageNet; "
                                                                  "SOLIDER-REID/TAO 0.5)")
    std: tuple[float, float, float] = opt((0.229, 0.224, 0.225), "normalisation std (ImageNet; "
                                                                 "SOLIDER-REID/TAO 0.5)")
    flip_p: float = opt(0.5, "horizontal flip probability", ge=0, le=1)


@dataclass
class TrainSection:
    epochs: int = opt(100, "training epochs (the schedules span them)", gt=0)
    batch_size: int = opt(48, "images per process (pretraining: official 48 on each of 8 GPUs; fine-tuning: "
                              "P identities x K = train.num_instances)", gt=0)
    max_steps: int | None = opt(None, "stop after this many optimizer steps (smoke runs); schedules still "
                                      "span train.epochs; fine-tuning evaluates at the stop", gt=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = opt(
        "auto", "auto: accelerate launch's setting, else bf16 on GPU and no on CPU")
    compile: bool = opt(False, "torch.compile the backbone (pretraining: the student's and the teacher's)")
    log_every: int = opt(10, "steps between scalar logs", gt=0)
    deterministic: bool = opt(False, "ask torch for deterministic kernels (CPU runs are exact anyway)")
    cpu_threads: int = opt(0, "torch threads per process when running on the CPU; 0 = torch's default. "
                              "1 suits tiny models on a shared CPU, where spin-waiting threads can make "
                              "2 threads 10x slower than 1", ge=0)


@dataclass
class CheckpointSection:
    every_steps: int = opt(1000, "steps between periodic checkpoints (last.pt is also written each epoch)",
                           gt=0)
    keep_last: int = opt(3, "periodic checkpoints kept", ge=1)
