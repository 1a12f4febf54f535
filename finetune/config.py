"""The fine-tuning config schema: every key of ``finetune/run.py`` with its default and advice.

Defaults are the SOLIDER-REID recipe for Swin-T on Market-1501 (the SOLIDER-REID repository's
Swin-T Market-1501 configuration: 384x128, SGD 8e-4 with bias lr x2, 20 warmup epochs then cosine
over 120, soft-margin triplet, no label smoothing, no center loss, mean/std 0.5, timm "pixel" random
erasing, test feature before BN, L2-normalised). ``configs/finetune/{solider_reid,bot,tao}.yaml``
spell out each recipe in full, so one YAML file plus ``key=value`` overrides is all a run needs
(docs/FINETUNING.md). The keys pretraining has too are declared once in :mod:`solider.run_config`;
fine-tuning's own defaults for them are given where :class:`FinetuneConfig` places each section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from finetune.resnet import RESNET_ARCHS, is_resnet
from solider import run_config as shared
from solider.config import ConfigError, opt, section

ARCHS = ("swin_tiny", "swin_small", "swin_base", "custom", *RESNET_ARCHS)


@dataclass
class InitConfig:
    path: str | None = opt(None, "weights to start from: our pretraining checkpoint, an official SOLIDER "
                                 "one, a fine-tuned ReID checkpoint, an ImageNet Swin file, a timm / "
                                 "torchvision ImageNet ResNet state dict (ResNet archs); none = random "
                                 "init (also: --init PATH|none)")
    source: Literal["teacher", "student", "imagenet"] = opt(
        "teacher", "which network of a pretraining checkpoint (teacher is what SOLIDER releases); "
                   "imagenet forces the Microsoft/timm Swin conversion (detected automatically anyway)")


@dataclass
class ModelConfig(shared.ModelSection):  # the Swin arch keys, img_size, drop_path_rate, use_checkpoint
    arch: str = opt("swin_tiny", "swin_tiny | swin_small | swin_base | custom (then embed_dim, depths, "
                                 "num_heads, window_size are used) | resnet18 | resnet34 | resnet50 | "
                                 "resnet101 | resnet152 (timm ResNet, BoT / TAO baseline)")
    semantic_weight: float = opt(0.2, "lambda of the frozen semantic controller (0.2 for ReID, "
                                      "SOLIDER-REID README); negative = a Swin without controller; "
                                      "ResNets have none (ignored with a note; -1 is silent)", le=1)
    last_stride: int = opt(1, "ResNet only: stride of layer4 (BoT/TAO 1: a 16x8 map at 256x128; 2: the "
                              "ImageNet network); a Swin takes 1", ge=1, le=2)
    reduction_dim: int = opt(0, "bias-free Linear to this size before the BNNeck (TAO: 256); 0 = none",
                             ge=0)
    neck_feat: Literal["before", "after"] = opt("before", "test feature: before the BNNeck (SOLIDER-REID) "
                                                          "or after it (BoT, TAO)")
    test_norm: bool = opt(True, "L2-normalise the test feature (all three recipes)")

    @classmethod
    def known_archs(cls) -> tuple[str, ...]:
        return tuple(ARCHS)

    def validate(self) -> None:
        super().validate()
        if self.last_stride != 1 and not is_resnet(self.arch):
            raise ConfigError(f"model.last_stride={self.last_stride} applies to ResNet archs only; "
                              f"{self.arch} takes 1")


@dataclass
class DataConfig(shared.DataSection):  # root, num_workers, cache_dir, synthetic_*
    synthetic_ids: int = opt(60, "synthetic set: identities (half train, half test; P x K sampling needs "
                                 "2 training ids)", gt=3)
    id_fraction: float = opt(1.0, "train on this share of the training identities (all their images), "
                                  "chosen by data.id_seed: low-label experiments", gt=0, le=1)
    id_seed: int | None = opt(None, "seed of the id_fraction subset; None = the run's seed", ge=0)


@dataclass
class AugmentConfig(shared.AugmentSection):  # mean, std, flip_p
    interpolation: Literal["bicubic", "bilinear"] = opt("bicubic", "resize filter (train and test)")
    padding: int = opt(10, "zero padding before the random crop", ge=0)
    erasing_p: float = opt(0.5, "random erasing probability", ge=0, le=1)
    erasing_mode: Literal["pixel", "mean"] = opt("pixel", "pixel: timm N(0,1) noise (SOLIDER-REID, TAO); "
                                                          "mean: BoT, filled with the mean values")


@dataclass
class LossConfig:
    id_weight: float = opt(1.0, "weight of the ID (cross-entropy) loss", ge=0)
    label_smoothing: float = opt(0.0, "label smoothing epsilon (BoT 0.1; SOLIDER-REID 0)", ge=0, lt=1)
    triplet_weight: float = opt(1.0, "weight of the batch-hard triplet loss on the pre-BN feature", ge=0)
    triplet_soft_margin: bool = opt(True, "soft margin log(1+exp(d_ap-d_an)) (SOLIDER-REID) instead of the "
                                          "hinge with triplet_margin (BoT, TAO)")
    triplet_margin: float = opt(0.3, "hinge margin (ignored with the soft margin)", ge=0)
    center_weight: float = opt(0.0, "center loss weight (BoT 5e-4); 0 = off", ge=0)
    center_lr: float = opt(0.5, "SGD lr of the centres (BoT 0.5), on the unweighted gradient", gt=0)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = opt("sgd", "SGD with momentum (SOLIDER-REID, TAO Swin) or Adam "
                                                       "(BoT)")
    lr: float = opt(8e-4, "base lr (SOLIDER-REID: 8e-4 Swin-T, 2e-4 Swin-S/B on MSMT17; BoT Adam "
                          "3.5e-4); not scaled with the batch", gt=0)
    momentum: float = opt(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = opt(1e-4, "weight decay of weights (L2 in the gradient for sgd/adam)", ge=0)
    weight_decay_bias: float = opt(1e-4, "weight decay of parameters named *bias*", ge=0)
    bias_lr_factor: float = opt(2.0, "lr multiplier of parameters named *bias* (SOLIDER-REID 2, BoT 1)",
                                gt=0)
    schedule: Literal["cosine", "multistep"] = opt("cosine", "per-epoch lr: timm cosine (SOLIDER-REID) or "
                                                             "warmup + steps (BoT)")
    warmup_epochs: int = opt(20, "linear warmup epochs (SOLIDER-REID 20, BoT 10)", ge=0)
    warmup_factor: float = opt(0.01, "warmup starts at this fraction of optim.lr", gt=0, le=1)
    min_lr_factor: float = opt(0.002, "cosine: final lr as a fraction of optim.lr", ge=0, le=1)
    milestones: tuple[int, ...] = opt((40, 70), "multistep: epochs where the lr is multiplied by gamma")
    gamma: float = opt(0.1, "multistep: decay factor", gt=0, le=1)


@dataclass
class TrainConfig(shared.TrainSection):  # epochs, batch_size, max_steps, log_every, ...
    num_instances: int = opt(4, "K images per identity in a batch", gt=0)
    sync_bn: bool = opt(False, "synchronise the BNNeck statistics across processes (TAO does)")

    def validate(self) -> None:
        if self.batch_size % self.num_instances or self.batch_size // self.num_instances < 2:
            raise ConfigError(f"train.batch_size={self.batch_size} must be a multiple of train.num_instances="
                              f"{self.num_instances} with at least 2 identities per batch")


@dataclass
class FinetuneEvalConfig:  # evaluation on query / gallery during fine-tuning (not eval/evaluate.py's)
    every_epochs: int = opt(10, "epochs between evaluations (always also at the end); 0 = only at the end",
                            ge=0)
    at_start: bool = opt(False, "also evaluate the initial model before training (history entry at step 0)")
    batch_size: int = opt(128, "images per process and batch for feature extraction", gt=0)
    metric: Literal["euclidean", "sqeuclidean", "cosine"] = opt(
        "euclidean", "distance between test features (on L2-normalised features all three rank alike)")
    flip: bool = opt(False, "average the features of the image and its mirror image")
    rerank: bool = opt(False, "also report k-reciprocal re-ranking (Zhong et al. 2017)")
    k1: int = opt(20, "re-ranking k1", gt=0)
    k2: int = opt(6, "re-ranking k2", gt=0)
    lambda_value: float = opt(0.3, "re-ranking weight of the original distance", ge=0, le=1)
    max_rank: int = opt(50, "length of the CMC curve", gt=0)
    ranked_queries: int = opt(6, "rows (the worst-AP queries) of the ranked-list grid logged to TensorBoard "
                                 "at each evaluation; 0 = none", ge=0)


@dataclass
class FinetuneConfig(shared.RunConfig):  # output_dir, seed, resume, overwrite
    output_dir: str = opt("runs/finetune", "checkpoints/, config.yaml, log.jsonl, tb/, metrics.json")
    seed: int = opt(1234, "random seed (SOLIDER-REID 1234; CPU runs repeat bit for bit)")
    init: InitConfig = section(InitConfig, "initial weights")
    model: ModelConfig = section(ModelConfig, "backbone and neck", img_size=(384, 128))
    data: DataConfig = section(DataConfig, "labeled Market-format data")
    augment: AugmentConfig = section(AugmentConfig, "training transforms (test: resize + normalise)",
                                     mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    loss: LossConfig = section(LossConfig, "ID + triplet (+ center) losses")
    optim: OptimConfig = section(OptimConfig, "optimizer and per-epoch lr schedule")
    train: TrainConfig = section(TrainConfig, "loop", epochs=120, batch_size=64, log_every=20)
    checkpoint: shared.CheckpointSection = section(shared.CheckpointSection, "checkpoints", every_steps=2000,
                                                   keep_last=2)
    eval: FinetuneEvalConfig = section(FinetuneEvalConfig, "evaluation on query / gallery")
