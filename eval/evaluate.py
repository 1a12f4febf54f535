"""Evaluate a checkpoint (or saved features) on a Market-format dataset: CMC, mAP, mINP, plots.

    python eval/evaluate.py --data ROOT --checkpoint CKPT [--rerank] [--compare CKPT2|NPZ2] [--out DIR]
    python eval/evaluate.py --features FILE.npz [--rerank] [--compare ...] [--out DIR]
    python eval/evaluate.py --data ROOT --checkpoint random model.arch=swin_tiny model.img_size=256x128
    python eval/evaluate.py --data ROOT --checkpoint histogram|pixels model.img_size=128x64   # baselines
    [--config F.yaml] [key=value ...]      # every key: python eval/evaluate.py --help

``--checkpoint``: our pretraining or fine-tuning checkpoint, an official SOLIDER / SOLIDER-REID /
TAO one, or ``random`` (random weights, seeded); ``model.source=student`` takes the student of a
pretraining checkpoint. ``histogram`` and ``pixels`` evaluate the hand-crafted baselines of
:mod:`eval.handcrafted` (stripe colour histograms, downsampled pixels) for scale. The model is the
Swin backbone (pooled last stage), built from the checkpoint's own ``config`` (else the architecture
read off its weights; ``model.*`` keys override); see :func:`build_model_from_checkpoint`.
``--data`` is a Market-1501 folder (or MSMT17 list files); the query and gallery splits are used.
Writes to ``--out`` (``output_dir``): ``config.yaml``, ``metrics.json`` (fractions in [0, 1], CMC up
to ``eval.max_rank``), ``features.npz`` (when features were extracted), ``distances.png`` (positive
/ negative pair distances, side by side with ``--compare``), ``cmc.png`` and ``ranked.png`` (worst-
AP queries; needs image paths). Defaults follow the Bag-of-Tricks test protocol: L2-normalised
features, Euclidean distance, re-ranking on squared Euclidean distances (k1=20, k2=6, lambda=0.3).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from eval.features import SplitFeatures, extract_features, load_features, pairwise_distance, save_features
from eval.handcrafted import BASELINES, build_baseline
from eval.metrics import evaluate_features, evaluate_rank, resolve_device
from eval.plots import (
    plot_cmc,
    plot_distance_distributions,
    plot_ranked_lists,
    sample_pair_distances,
    worst_queries,
)
from eval.rerank import k_reciprocal_rerank_features
from solider.checkpoint import CheckpointError, safe_load
from solider.checkpoint_bounds import check_declared_size
from solider.config import build_arg_parser, config_from_args, opt, save_config, section, to_dict
from solider.data.datasets import ReIDImageDataset
from solider.data.image_check import check_evaluation_images
from solider.data.market import read_reid_dataset
from solider.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_reid_test_transform
from solider.models.swin import build_swin
from solider.models.swin_weights import find_swin_backbone, infer_arch, load_backbone_weights
from solider.utils.cli import parse_args, run_entry
from solider.utils.logging import get_logger, setup_logging
from solider.utils.output_dir import check_existing_results, check_output_files
from solider.utils.summary import default_workers, format_summary, measure_image_cost, progress_enabled

log = get_logger("eval.evaluate")


@dataclass
class ModelSection:
    arch: str | None = opt(None, "swin_tiny | swin_small | swin_base | custom (then the dims below); "
                                 "None = the checkpoint's (config, else its weights), else swin_tiny")
    embed_dim: int = opt(96, "custom arch only: channels of stage 0", gt=0)
    depths: tuple[int, ...] = opt((2, 2, 6, 2), "custom arch only: blocks per stage")
    num_heads: tuple[int, ...] = opt((3, 6, 12, 24), "custom arch only: attention heads per stage")
    window_size: int = opt(7, "custom arch only: attention window", gt=0)
    img_size: tuple[int, int] | None = opt(None, "input height, width; None = the checkpoint's, else 256x128")
    semantic_weight: float | None = opt(None, "SOLIDER lambda at test time; None = the checkpoint's, else "
                                              "0.2 (SOLIDER-REID); negative = no controller")
    source: Literal["teacher", "student"] = opt("teacher", "which network of a pretraining checkpoint "
                                                           "(frozen-feature checks of both)")


@dataclass
class DataSection:
    root: str | None = opt(None, "Market-1501 folder (or MSMT17 list files); --data sets it")
    batch_size: int = opt(128, "images per forward pass", gt=0)
    num_workers: int | None = opt(None, "DataLoader worker processes (0 = in the main process); None = "
                                        "from the cores available, min(4, cores - 1)", ge=0)
    mean: tuple[float, float, float] | None = opt(None, "normalisation mean; None = the checkpoint's, "
                                                        "else ImageNet")
    std: tuple[float, float, float] | None = opt(None, "normalisation std; None = the checkpoint's, "
                                                       "else ImageNet")
    interpolation: Literal["bicubic", "bilinear"] = opt("bicubic", "resize filter (TAO tests with bilinear)")


@dataclass
class EvalSection:
    metric: Literal["euclidean", "sqeuclidean", "cosine"] = opt("euclidean", "distance between features")
    normalize: bool = opt(True, "L2-normalise features first (BoT/TAO: yes)")
    flip: bool = opt(False, "average the features of the image and its mirror image")
    max_rank: int = opt(50, "length of the CMC curve in metrics.json", gt=0)


@dataclass
class RerankSection:
    enabled: bool = opt(False, "also report k-reciprocal re-ranked results (--rerank)")
    k1: int = opt(20, "k-reciprocal neighbourhood size", gt=0)
    k2: int = opt(6, "query expansion size", gt=0)
    lambda_value: float = opt(0.3, "weight of the original distance", ge=0, le=1)
    square: bool = opt(True, "square the distances first (torchreid; with metric=euclidean = BoT's)")
    fp16: bool = opt(False, "float16 V and Jaccard sums exactly as BoT (default float32, torchreid)")


@dataclass
class PlotSection:
    enabled: bool = opt(True, "write distances.png, cmc.png and ranked.png")
    max_pairs: int = opt(200_000, "positive / negative pairs sampled for distances.png (each)", gt=0)
    ranked_queries: int = opt(8, "rows of ranked.png (the worst-AP queries)", ge=0)
    topk: int = opt(10, "gallery images per row of ranked.png", gt=0)


@dataclass
class EvaluateConfig:  # the config of eval/evaluate.py (not fine-tuning's eval section)
    output_dir: str = opt("runs/eval", "where config.yaml, metrics.json, features.npz and plots go (--out)")
    overwrite: bool = opt(False, "replace the metrics.json / features.npz in output_dir (default: refuse)")
    device: str = opt("auto", "auto (CUDA if available) | cpu | cuda | cuda:N")
    seed: int = opt(0, "seed of the random weights of --checkpoint random")
    model: ModelSection = section(ModelSection, "backbone (None = from the checkpoint)")
    data: DataSection = section(DataSection, "dataset and loading")
    eval: EvalSection = section(EvalSection, "features and distance")
    rerank: RerankSection = section(RerankSection, "k-reciprocal re-ranking (Zhong et al. 2017)")
    plots: PlotSection = section(PlotSection, "plots")


# ------------------------------------------------------------------------------- the model

def _checkpoint_arch(obj: Any, source: str) -> dict | None:
    """{embed_dim, depths, num_heads, window_size} read off a checkpoint's backbone weights (found
    as :func:`load_backbone_weights` finds them), or None."""
    try:
        return infer_arch(find_swin_backbone(obj, source)[0]) if obj is not None else None
    except CheckpointError:  # no Swin in it: the load below says so, with the file's name
        return None


def _pick(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def build_model_from_checkpoint(path: str | None, cfg: EvaluateConfig) -> tuple[nn.Module, dict]:
    """The feature extractor for ``path`` (None or "random": random weights) and its input settings.

    Architecture, input size, semantic weight and normalisation come from ``cfg.model`` /
    ``cfg.data`` when set, else from the checkpoint's ``config``, else (architecture) from its
    weights, else the defaults. The model maps (B, 3, H, W) to the pooled (B, C) Swin feature.
    This is the one place to change when evaluating a different model (e.g. the fine-tuned ReID
    head).

    A fine-tuned ReID checkpoint of ours (``kind == "reid_finetune"``, from ``finetune/run.py``) is
    rebuilt whole from the file (backbone, reduction, BNNeck) and gives its test feature
    (``ReIDModel.embed``: before/after the BNNeck, L2-normalised as configured), the feature its
    training evaluated; ``model.img_size`` / ``model.semantic_weight`` / ``data.mean|std`` still
    override, the architecture comes from the checkpoint.

    Returns:
        (model in eval mode, dict(img_size, mean, std, description)).
    """
    if path in BASELINES:
        img_size = tuple(_pick(cfg.model.img_size, (256, 128)))
        mean, std = tuple(_pick(cfg.data.mean, IMAGENET_MEAN)), tuple(_pick(cfg.data.std, IMAGENET_STD))
        return build_baseline(path, mean, std), {
            "img_size": img_size, "mean": mean, "std": std,
            "description": f"hand-crafted baseline '{path}' at {img_size[0]}x{img_size[1]}"}
    obj = None if path in (None, "random") else safe_load(path)
    if isinstance(obj, dict) and obj.get("kind") == "reid_finetune":
        from finetune.checkpoint import load_finetuned  # entry point: may use the fine-tuning package
        from finetune.model import Embedder

        if cfg.model.arch is not None:
            raise SystemExit(f"{path} is a fine-tuned checkpoint: its architecture is fixed, drop model.arch")
        reid, ft, _ = load_finetuned(path)
        weight = getattr(reid.backbone, "semantic_weight", None)  # None: no controller (ResNet)
        if cfg.model.semantic_weight is not None:
            if weight is None:
                raise SystemExit(f"model.semantic_weight: {ft.model.arch} has no semantic controller")
            if cfg.model.semantic_weight < 0:
                raise SystemExit("model.semantic_weight < 0: a fine-tuned model keeps its controller")
            reid.backbone.semantic_weight = weight = float(cfg.model.semantic_weight)
        img_size = tuple(_pick(cfg.model.img_size, ft.model.img_size))
        settings = {"img_size": img_size, "mean": tuple(_pick(cfg.data.mean, ft.augment.mean)),
                    "std": tuple(_pick(cfg.data.std, ft.augment.std)),
                    "description": f"{path} (fine-tuned {ft.model.arch}, {reid.feat_dim}-d feature "
                                   f"{ft.model.neck_feat} the BNNeck, {img_size[0]}x{img_size[1]}"
                                   + (f", lambda {weight})" if weight is not None else ")")}
        return Embedder(reid).eval(), settings
    ck = (obj.get("config") or {}) if isinstance(obj, dict) else {}
    ck_model, ck_data = ck.get("model") or {}, {**(ck.get("augment") or {}), **(ck.get("data") or {})}
    m = cfg.model
    arch: Any = _pick(m.arch, ck_model.get("arch"), "auto")
    if arch == "custom":
        dims = to_dict(m) if m.arch == "custom" else ck_model
        arch = {k: dims[k] for k in ("embed_dim", "depths", "num_heads", "window_size")}
    elif arch == "auto":
        arch = _checkpoint_arch(obj, cfg.model.source) or "swin_tiny"
    img_size = tuple(_pick(m.img_size, ck_model.get("img_size"), (256, 128)))
    weight = float(_pick(m.semantic_weight, ck_model.get("semantic_weight"), 0.2))
    if obj is not None:  # architecture numbers from the file: bounded by what it stores
        check_declared_size(lambda: build_swin(arch, img_size=img_size, semantic_weight=weight), obj, path,
                            "the architecture read from it")
    torch.manual_seed(cfg.seed)
    model = build_swin(arch, img_size=img_size, semantic_weight=weight)
    if obj is not None:
        load_backbone_weights(model, obj, source=cfg.model.source, name=str(path))
    name = arch if isinstance(arch, str) else "custom Swin"
    settings = {"img_size": img_size, "mean": tuple(_pick(cfg.data.mean, ck_data.get("mean"), IMAGENET_MEAN)),
                "std": tuple(_pick(cfg.data.std, ck_data.get("std"), IMAGENET_STD)),
                "description": f"{'random weights' if obj is None else path} ({name}, {img_size[0]}x"
                               f"{img_size[1]}, lambda {weight})"}
    return model.eval(), settings


# ---------------------------------------------------------------------------------- features

def _extract(source: str, cfg: EvaluateConfig, device: torch.device
             ) -> tuple[SplitFeatures, SplitFeatures, str]:
    """(query, gallery, description) for a checkpoint path / "random" or an .npz feature file."""
    if source.endswith(".npz"):
        return (*load_features(source), f"features from {source}")
    if cfg.data.root is None:
        raise SystemExit("--data ROOT (data.root) is needed to extract features from a checkpoint")
    model, s = build_model_from_checkpoint(source, cfg)
    log.info("model: %s", s["description"])
    dataset = read_reid_dataset(cfg.data.root, splits=("query", "gallery"))
    check_evaluation_images({"query": dataset.query, "gallery": dataset.gallery}, f"--data {cfg.data.root}")
    log.info("%s", dataset.summary())
    transform = build_reid_test_transform(s["img_size"], s["mean"], s["std"], cfg.data.interpolation)
    model.to(device)
    workers = default_workers() if cfg.data.num_workers is None else cfg.data.num_workers
    params = sum(p.numel() for p in model.parameters())
    cost = measure_image_cost(model, s["img_size"])
    log.info("%s", format_summary("evaluation", [
        ("model", f"{s['description']}; {params / 1e6:.2f} M parameters"
                  + (f"; {cost.gflops:.3g} GFLOP per image" if cost else "")),
        ("data", f"{len(dataset.query):,} queries, {len(dataset.gallery):,} gallery images "
                 f"from {cfg.data.root}"),
        ("device", f"{device}, batch {cfg.data.batch_size}, {workers} loader worker(s), "
                   f"{torch.get_num_threads()} CPU thread(s)")]))
    splits = []
    for name, records in (("query", dataset.query), ("gallery", dataset.gallery)):
        loader = DataLoader(ReIDImageDataset(records, transform, on_error="raise"), cfg.data.batch_size,
                            shuffle=False, num_workers=workers, pin_memory=device.type == "cuda")
        out = extract_features(model, loader, device, flip=cfg.eval.flip, normalize=False, desc=name,
                               progress=progress_enabled(True))
        paths = np.array([records[i].path for i in out["index"]])
        splits.append(SplitFeatures(out["feats"], out["pids"], out["camids"], paths))
    return splits[0], splits[1], s["description"] + f", mean {s['mean']}, std {s['std']}"


def _prepare(split: SplitFeatures, normalize: bool) -> np.ndarray:
    feats = torch.from_numpy(split.feats).float()
    return (torch.nn.functional.normalize(feats, dim=1) if normalize else feats).numpy()


def _score(q: SplitFeatures, g: SplitFeatures, cfg: EvaluateConfig, device: torch.device) -> dict[str, dict]:
    """metrics (and re-ranked metrics) of one model: name -> evaluate_rank output."""
    qf, gf = _prepare(q, cfg.eval.normalize), _prepare(g, cfg.eval.normalize)
    labels = (q.pids, g.pids, q.camids, g.camids)
    out = {"": evaluate_features(qf, gf, *labels, metric=cfg.eval.metric, max_rank=cfg.eval.max_rank,
                                 device=device)}
    if cfg.rerank.enabled:
        r = cfg.rerank
        dist = k_reciprocal_rerank_features(qf, gf, r.k1, r.k2, r.lambda_value, metric=cfg.eval.metric,
                                            square=r.square, fp16=r.fp16, device=device)
        out[" + re-ranking"] = evaluate_rank(dist, *labels, max_rank=cfg.eval.max_rank, device=device)
    return out


# ----------------------------------------------------------------------------------- outputs

def _summary(result: dict) -> dict:
    cmc = result["cmc"]
    pick = lambda k: float(cmc[min(k, len(cmc)) - 1])
    return {"Rank-1": pick(1), "Rank-5": pick(5), "Rank-10": pick(10), "mAP": result["mAP"],
            "mINP": result["mINP"], "num_valid_queries": result["num_valid_queries"],
            "num_invalid_queries": result["num_invalid_queries"], "cmc": [float(c) for c in cmc]}


def format_table(rows: dict[str, dict]) -> str:
    """A fixed-width table of Rank-1/5/10, mAP and mINP in percent, one row per entry."""
    width = max(len(name) for name in rows) + 2
    keys = ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP")
    lines = [f"{'model':<{width}}" + "".join(f"{k:>9}" for k in keys)]
    lines += [f"{name:<{width}}" + "".join(f"{100 * s[k]:9.2f}" for k in keys) for name, s in rows.items()]
    return "\n".join(lines)


def _plots(models: dict[str, tuple[SplitFeatures, SplitFeatures, dict]], cfg: EvaluateConfig,
           out: Path) -> None:
    """distances.png (compared model first), cmc.png and ranked.png (the main model, the last one)."""
    pairs, curves = {}, {}
    for label, (q, g, scores) in models.items():
        qf, gf = _prepare(q, cfg.eval.normalize), _prepare(g, cfg.eval.normalize)
        pairs[label] = sample_pair_distances(qf, gf, q.pids, g.pids, q.camids, g.camids, cfg.eval.metric,
                                             cfg.plots.max_pairs)
        curves.update({label + suffix: r["cmc"] for suffix, r in scores.items()})
    features = f"{'L2-normalised' if cfg.eval.normalize else 'raw'} features, {cfg.eval.metric} distance"
    plot_distance_distributions(pairs, out / "distances.png", xlabel=f"{cfg.eval.metric} distance",
                                title=f"query-gallery pair distances ({features})")
    plot_cmc(curves, out / "cmc.png", max_rank=min(cfg.eval.max_rank, 50), title=f"CMC ({features})")
    q, g, scores = list(models.values())[-1]
    if q.paths is None or g.paths is None:
        log.warning("no image paths in the features: ranked.png skipped")
        return
    chosen = worst_queries(scores[""]["all_AP"], cfg.plots.ranked_queries)
    if len(chosen):
        rows = pairwise_distance(_prepare(q, cfg.eval.normalize)[chosen], _prepare(g, cfg.eval.normalize),
                                 cfg.eval.metric).numpy()
        plot_ranked_lists(rows, chosen, list(q.paths), list(g.paths), q.pids, g.pids, q.camids, g.camids,
                          out / "ranked.png", topk=cfg.plots.topk,
                          title=f"{list(models)[-1]}: the {len(chosen)} worst queries by AP, ranked by "
                                f"{features}; green = same identity")


def _label(source: str) -> str:
    """A short name for a model: the file name, with its run folder for generic checkpoint names
    (``runs/x/checkpoints/last.pt`` -> ``x/last.pt``)."""
    if source == "random":
        return "random weights"
    if source in BASELINES:
        return f"{source} (hand-crafted)"
    path = Path(source)
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return f"{run.name}/{path.name}" if path.name in ("last.pt", "best.pt") and run.name else path.name


def run(cfg: EvaluateConfig, source: str, compare: str | None = None) -> dict:
    """Evaluate ``source`` (checkpoint / "random" / .npz) and optionally ``compare``; write outputs."""
    out = Path(cfg.output_dir)
    # before the work: every output writable, and no earlier results replaced unless asked
    names = ("config.yaml", "metrics.json", "features.npz", "distances.png", "cmc.png", "ranked.png")
    check_output_files([out / name for name in names], "--out")
    check_existing_results(out, None, cfg.overwrite, result_files=("metrics.json", "features.npz"),
                           can_resume=False, checkpoints=False)
    save_config(cfg, out / "config.yaml")
    device = resolve_device(None if cfg.device == "auto" else cfg.device)
    models, sources = {}, {}
    for src in ([compare] if compare else []) + [source]:
        start = time.perf_counter()
        q, g, description = _extract(src, cfg, device)
        if src == source and not src.endswith(".npz"):
            save_features(out / "features.npz", q, g)
        scores = _score(q, g, cfg, device)
        label = _label(src) if src != compare or _label(src) != _label(source) else f"{_label(src)} (compare)"
        models[label] = (q, g, scores)
        sources[label] = description
        log.info("%s: %d queries x %d gallery, evaluated in %.1f s", label, len(q), len(g),
                 time.perf_counter() - start)
    rows = {label + suffix: _summary(r) for label, (_, _, scores) in models.items()
            for suffix, r in scores.items()}
    print(format_table(rows))
    metrics = {"metric": cfg.eval.metric, "normalize": cfg.eval.normalize, "models": rows,
               "sources": sources, "config": to_dict(cfg)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if cfg.plots.enabled:
        _plots(models, cfg, out)
    log.info("wrote %s", ", ".join(sorted(p.name for p in out.iterdir())))
    return metrics


def main(argv: list[str] | None = None) -> dict:
    parser = build_arg_parser(EvaluateConfig, __doc__.split("\n\n")[0], prog="eval/evaluate.py")
    parser.add_argument("--data", help="dataset root (sets data.root)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="checkpoint file, 'random' for random weights, or a hand-crafted "
                                           "baseline: 'histogram' (stripe colour histograms) or 'pixels'")
    what.add_argument("--features", help="a features .npz file (eval.features.save_features layout)")
    parser.add_argument("--rerank", action="store_true", help="also report re-ranked results")
    parser.add_argument("--compare", help="a second checkpoint or .npz, shown beside the first ('before')")
    parser.add_argument("--out", help="output folder (sets output_dir)")
    args = parse_args(parser, argv)  # options and key=value overrides in any order
    flags = {"data.root": args.data, "output_dir": args.out,
             "rerank.enabled": "true" if args.rerank else None}
    args.overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    setup_logging()
    cfg = config_from_args(EvaluateConfig, args, {"data.root": "--data", "output_dir": "--out"})
    return run(cfg, args.checkpoint or args.features, args.compare)


if __name__ == "__main__":
    run_entry(main, "eval/evaluate.py")
