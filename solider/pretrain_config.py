"""The pretraining config schema: every key of ``solider/pretrain.py`` with its default and advice.

Defaults reproduce the official SOLIDER recipe (``run_solider.sh``: Swin-T, 8 GPUs x 48 images,
100 epochs, 256x128 + 8 x 128x64 crops, DINO defaults); ``configs/pretrain/*.yaml`` override them.
The keys fine-tuning has too are declared once in :mod:`solider.run_config`; the sections here add
pretraining's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from solider import run_config as shared
from solider.config import ConfigError, opt, section
from solider.schedules import parse_span

SPAN = "epochs (a number), 'N steps' or 'P%' of the run"


def _check_spans(section_name: str, obj: object, *names: str) -> None:
    for name in names:
        try:
            parse_span(getattr(obj, name), f"{section_name}.{name}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


@dataclass
class ModelConfig(shared.ModelSection):  # the Swin arch keys, img_size, drop_path_rate, use_checkpoint
    local_size: tuple[int, int] = opt((128, 64), "local crop height, width (official 128x64)")


@dataclass
class DataConfig(shared.DataSection):  # root, num_workers, cache_dir, synthetic_*
    keypoints: str | None = opt(None, "keypoints file (COCO JSON, OpenPose CSV, JSONL); enables "
                                         "keypoint part labels for the images it covers")
    min_height: int = opt(0, "drop crops shorter than this (pixels)", ge=0)
    max_aspect: float = opt(1.0, "drop crops with width/height >= this (person crops are tall)", gt=0)


@dataclass
class AugmentConfig(shared.AugmentSection):  # mean, std (ImageNet), flip_p
    n_local: int = opt(8, "local crops per image (official 8)", ge=0)
    global_scale: tuple[float, float] = opt((0.8, 1.0), "area range of global crops (official 0.8-1)")
    local_scale: tuple[float, float] = opt((0.05, 0.8), "area range of local crops (official 0.05-0.8)")
    ratio: tuple[float, float] = opt((0.4, 0.6), "aspect range w/h of the crops (0.4-0.6 for 256x128)")
    jitter_p: float = opt(0.8, "colour jitter probability", ge=0, le=1)
    jitter: tuple[float, float, float, float] = opt((0.4, 0.4, 0.2, 0.1), "colour jitter strength: "
                                                     "brightness, contrast, saturation, hue")
    grayscale_p: float = opt(0.2, "grayscale probability", ge=0, le=1)
    blur_p: tuple[float, float, float] = opt((1.0, 0.1, 0.5), "Gaussian blur probability: global 1, "
                                                              "global 2, local crops")
    solarize_p: float = opt(0.2, "solarisation probability of global crop 2", ge=0, le=1)
    blur_sigma: tuple[float, float] = opt((0.1, 2.0), "Gaussian blur sigma range, pixels at a 256-high "
                                                      "global crop (official)")
    blur_sigma_relative: bool = opt(True, "scale blur_sigma by model.img_size[0] / 256 for every crop "
                                          "(same blur relative to the person); false: absolute pixels")
    device: Literal["accelerator", "workers", "main_process"] = opt(
        "accelerator", "where the photometric ops run: accelerator = batched on the training device when "
        "it is a GPU (workers only crop and resize), in the workers on a CPU; workers; main_process = "
        "batched in the training process on any device")


@dataclass
class DinoConfig:
    out_dim: int = opt(65536, "prototypes of the DINO head; large values suit large datasets", gt=0)
    hidden_dim: int = opt(2048, "DINO head hidden width", gt=0)
    bottleneck_dim: int = opt(256, "DINO head bottleneck before the weight-normalised layer", gt=0)
    norm_last_layer: bool = opt(True, "freeze the norm of the last layer (stabler; DINO default)")
    student_temp: float = opt(0.1, "student softmax temperature", gt=0)
    teacher_temp: float = opt(0.04, "teacher temperature after warmup; above 0.07 tends to be unstable",
                              gt=0)
    warmup_teacher_temp: float = opt(0.04, "teacher temperature at step 0 (above teacher_temp: a warm-down, "
                                           "which sharpens the targets as training goes)", gt=0)
    warmup_teacher_temp_epochs: float | str = opt(0, f"linear teacher-temperature warmup length: {SPAN}")
    centering: Literal["center", "sinkhorn"] = opt(
        "center", "center: subtract a running mean of the teacher logits (official DINO); sinkhorn: "
                  "Sinkhorn-Knopp targets balanced over each batch (DINOv2), steadier at small batches")
    sinkhorn_iterations: int = opt(3, "Sinkhorn-Knopp iterations (centering=sinkhorn)", ge=1)
    center_momentum: float = opt(0.9, "EMA of the teacher centre", ge=0, lt=1)
    koleo_weight: float = opt(0.0, "weight of DINOv2's KoLeo spread regulariser on the student's pooled "
                                   "global-crop features (DINOv2: 0.1); 0 = off (official)", ge=0)
    momentum_teacher: float | Literal["auto"] = opt(
        0.996, "teacher EMA momentum at step 0 (cosine to 1); try 0.9995 for batch 256 and smaller; auto: "
               "chosen from the run length so the teacher moves dino.teacher_movement in all (short runs)",
        ge=0, le=1)
    teacher_movement: float = opt(5.0, "momentum_teacher=auto: target of the teacher's total EMA movement "
                                       "sum(1 - m) over the run; its initialisation keeps <= exp(-target)",
                                  gt=0)
    freeze_last_layer_epochs: float | str = opt(1, f"keep the head's last layer fixed this long: {SPAN}")

    def validate(self) -> None:
        _check_spans("dino", self, "warmup_teacher_temp_epochs", "freeze_last_layer_epochs")


@dataclass
class SemanticConfig:
    enabled: bool = opt(True, "SOLIDER semantics (part labels, semantic loss, controller); false = DINO")
    weight_mode: Literal["binary", "uniform"] = opt("binary", "lambda per image: {0,1} (official) or "
                                                              "U[0,1]")
    fixed_weight: float | None = opt(None, "use this lambda for every image instead of sampling "
                                              "(e.g. 0 for DINO-only runs with the controller)")
    num_parts: int = opt(3, "body parts (3: upper / lower / feet; 3-5 supported)", ge=3, le=5)
    label_source: Literal["auto", "keypoints", "clustering"] = opt(
        "auto", "auto: keypoints where the image has them, clustering otherwise")
    min_foreground: float = opt(0.5, "clustering: skip images whose foreground share is <= this",
                                ge=0, le=1)
    loss_weight: float = opt(1.0, "weight of the part-classification loss", ge=0)
    masking: bool = opt(True, "add copies of the global crops with one part erased (official)")
    static_shapes: bool | None = opt(None, "mask every global crop, unlabelled ones weigh 0 (same loss, "
                                           "fixed shapes, no host sync); false: only labelled ones "
                                           "(official); empty: on for a GPU, off for a CPU")
    train_part_head: bool = opt(True, "optimise the part head; false reproduces the official code, "
                                      "which never adds it to the optimiser (SOLIDER#24)")
    part_head_layers: int = opt(3, "MLP layers of the part head", ge=1)


@dataclass
class OptimConfig:
    lr: float = opt(5e-4, "peak lr per 256 images; scaled by global batch / 256", gt=0)
    min_lr: float = opt(1e-6, "final lr of the cosine", ge=0)
    warmup_epochs: float | str = opt(10, f"linear lr warmup from 0: {SPAN}")
    weight_decay: float = opt(0.04, "weight decay at step 0 (cosine schedule)", ge=0)
    weight_decay_end: float = opt(0.4, "weight decay at the last step", ge=0)
    clip_grad: float = opt(3.0, "gradient clipping threshold; 0 disables", ge=0)
    clip_mode: Literal["per_param", "global"] = opt("per_param", "DINO clips each parameter's norm")
    betas: tuple[float, float] = opt((0.9, 0.999), "AdamW betas")

    def validate(self) -> None:
        _check_spans("optim", self, "warmup_epochs")


@dataclass
class TrainConfig(shared.TrainSection):  # epochs, batch_size, max_steps, log_every, ...
    image_every: int = opt(500, "steps between crop/part-label images in TensorBoard (also of the first and "
                                "the last batch); 0 disables", ge=0)


@dataclass
class MonitorConfig:
    data_root: str | None = opt(None, "Market-format root for a frozen-feature check of the teacher and "
                                         "the student (mAP / Rank-1 / mINP); None = the synthetic set's "
                                         "test split when pretraining on it, else off")
    every_steps: int = opt(0, "steps between checks; 0 = at the end of each epoch only", ge=0)
    batch_size: int = opt(64, "batch size of feature extraction", gt=0)
    max_images: int = opt(2000, "cap on query+gallery images for a quick check", gt=0)
    semantic_weight: float | None = opt(None, "lambda of the checked features; None = 0.2 (the ReID value) "
                                              "with semantics on, else the lambda the run trains with",
                                        ge=0, le=1)


@dataclass
class PretrainConfig(shared.RunConfig):  # output_dir, seed, resume, overwrite
    output_dir: str = opt("runs/pretrain", "checkpoints/, config.yaml, log.jsonl, tb/")
    init: str | None = opt(None, "start from these weights with a fresh schedule (e.g. SOLIDER after "
                                 "DINO): our or an official pretraining checkpoint, or a backbone file")
    model: ModelConfig = section(ModelConfig, "backbone")
    data: DataConfig = section(DataConfig, "unlabeled person crops")
    augment: AugmentConfig = section(AugmentConfig, "multi-crop augmentation")
    dino: DinoConfig = section(DinoConfig, "self-distillation")
    semantic: SemanticConfig = section(SemanticConfig, "SOLIDER part labels and controller")
    optim: OptimConfig = section(OptimConfig, "AdamW and schedules")
    train: TrainConfig = section(TrainConfig, "loop")
    checkpoint: shared.CheckpointSection = section(shared.CheckpointSection, "checkpoints")
    monitor: MonitorConfig = section(MonitorConfig, "representation monitor")
