"""Embeddings of person crops for deployment, from a fine-tuned checkpoint or its ONNX export.

    python finetune/infer.py --model runs/x/checkpoints/best.pt --images crops/ --out embeddings.json
    python finetune/infer.py --model model.onnx --images list.txt --out embeddings.npy [--batch-size 64]
        [--no-normalize] [--device auto|cpu|cuda|cuda:N] [--threads N] [--num-workers N]

``--model``: a fine-tuned checkpoint (``best.pt`` / ``last.pt`` of ``finetune/run.py``, run with
PyTorch) or an ``.onnx`` file of ``finetune/export.py`` (run with onnxruntime; its ``<stem>.json``
must lie beside it). The backend follows from the file name. Preprocessing is evaluation's: resize
to the model's input size with its filter, scale to [0, 1], normalise with its mean / std (from the
checkpoint's config, or from the JSON); no flip averaging.

``--images``: a folder (searched recursively for .jpg/.jpeg/.png/.bmp in any case; each folder's
files by name, then its sub-folders by name), a list file (one path per line, relative to the list
file's folder or absolute; blank and ``#`` lines skipped; kept in order) or a single image. Paths are
written **absolute** (``os.path.abspath``: symlinks are not resolved).

``--out``: ``FILE.json``: TAO's inference format, ``[{"img_path": str, "embedding": [float, ...]},
...]`` (one entry per line); ``FILE.npy``: a float32 (N, D) array plus ``FILE.paths.txt`` (row i is
the image on line i). Floats are written with 9 significant digits, which round-trips float32.

Embeddings are **L2-normalised by default** (``--no-normalize``: the raw test feature, which for a
BNNeck "after" model is TAO's BN feature). Unit vectors are what a deployment compares: the cosine
similarity is then a dot product, Euclidean and cosine rankings agree, and it is the feature whose
accuracy the evaluation measured. An ONNX graph exported from a normalising model (``model.json``
``normalized: true``) cannot give the raw feature; use the checkpoint for that.

Unreadable images (empty, corrupt, missing, not an image) are skipped, never silently: each is
logged (the first 10 one by one), the summary line gives the count and the first names, and the full
list goes to ``FILE.skipped.txt`` (path, tab, reason). The output holds the readable images only.
See docs/INFERENCE.md.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from finetune.checkpoint import load_finetuned
from solider.data.images import ImageDecodeError, is_image_file, load_image_tensor
from solider.data.transforms import build_reid_test_transform
from solider.data.unlabeled import list_images
from solider.utils.atomic import atomic_write
from solider.utils.cli import UserError, reject_overrides, run_entry
from solider.utils.logging import get_logger, log_skipped, setup_logging
from solider.utils.output_dir import check_output_files
from solider.utils.summary import default_workers, progress_enabled

logger = get_logger("finetune.infer")

__all__ = ["Preprocessing", "TorchEmbedder", "OnnxEmbedder", "open_model", "list_inputs", "InferenceResult",
           "embed_images", "write_embeddings", "read_embeddings", "main"]

LOG_FIRST = 10  # unreadable images logged one by one; the rest are counted (all are in FILE.skipped.txt)
ONNX_META_KEYS = ("img_size", "mean", "std", "interpolation", "normalized", "feature_dim")


@dataclass(frozen=True)
class Preprocessing:
    """How images are fed to the model (evaluation's test transform)."""

    img_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str

    def transform(self):
        """PIL RGB image or (3, H, W) uint8 tensor -> (3, H, W) float32."""
        return build_reid_test_transform(self.img_size, self.mean, self.std, self.interpolation)


class TorchEmbedder:
    """A fine-tuned checkpoint run by PyTorch; returns the un-normalised test feature (B, D)."""

    backend = "torch"
    normalized = False  # the checkpoint's own L2 normalisation is turned off; open_model applies it

    def __init__(self, path: str | os.PathLike, device: str = "auto"):
        model, cfg, _ = load_finetuned(path)
        model.test_norm = False
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   "cpu" if device == "auto" else device)
        self.model = model.to(self.device).eval()
        self.feature_dim = model.feat_dim
        a = cfg.augment
        self.preprocessing = Preprocessing(tuple(cfg.model.img_size), tuple(a.mean), tuple(a.std),
                                           a.interpolation)
        self.description = f"{cfg.model.arch} checkpoint {path}, PyTorch on {self.device}"

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) float32 -> (B, D) float32."""
        return self.model.embed(images.to(self.device)).float().cpu().numpy()


def _read_onnx_meta(path: Path) -> dict:
    """The preprocessing JSON that finetune/export.py writes beside ``path`` (checked)."""
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path}: the preprocessing file {meta_path} is missing (finetune/export.py "
                                "writes it beside the .onnx file: input size, mean, std)")
    meta = json.loads(meta_path.read_text())
    missing = [k for k in ONNX_META_KEYS if k not in meta]
    if missing or meta.get("layout", "NCHW") != "NCHW" or meta.get("color", "RGB") != "RGB":
        raise UserError(f"{meta_path}: expected the keys {list(ONNX_META_KEYS)} (missing {missing}), "
                         f"layout NCHW and color RGB (got {meta.get('layout')}, {meta.get('color')})")
    return meta


def _onnx_providers(device: str, available: list[str]) -> list:
    """onnxruntime providers for ``--device`` (auto: CUDA when onnxruntime has it)."""
    use_cuda = device.startswith("cuda") or (device == "auto" and "CUDAExecutionProvider" in available)
    if not use_cuda:
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise RuntimeError(f"--device {device}: onnxruntime has no CUDAExecutionProvider (available: "
                           f"{available}); use --device cpu or install onnxruntime-gpu")
    index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


class OnnxEmbedder:
    """An exported ``.onnx`` file run by onnxruntime, preprocessing from the ``<stem>.json`` beside it."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: int = 0):
        import onnxruntime as ort

        path = Path(path)
        meta = _read_onnx_meta(path)
        providers = _onnx_providers(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default (one per core)
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input = self.session.get_inputs()[0]
        self.input_dtype = np.float16 if self.input.type == "tensor(float16)" else np.float32
        self.normalized, self.feature_dim = bool(meta["normalized"]), int(meta["feature_dim"])
        self.preprocessing = Preprocessing(tuple(meta["img_size"]), tuple(meta["mean"]), tuple(meta["std"]),
                                           meta["interpolation"])
        where = "cuda" if len(providers) > 1 else "cpu"
        self.description = f"{meta.get('arch', '?')} ONNX {path}, onnxruntime on {where}"

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) float32 -> (B, D) float32."""
        x = images.numpy().astype(self.input_dtype, copy=False)
        (out,) = self.session.run(None, {self.input.name: x})
        return np.asarray(out, dtype=np.float32)


def open_model(path: str | os.PathLike, device: str = "auto", normalize: bool = True,
               threads: int = 0) -> TorchEmbedder | OnnxEmbedder:
    """The embedder for a checkpoint or an ``.onnx`` file (by suffix).

    ``threads`` > 0 sets onnxruntime's intra-op threads (PyTorch's are set by the caller,
    ``torch.set_num_threads``); 0 keeps the libraries' defaults.

    Raises:
        ValueError: ``normalize=False`` with an ONNX graph that normalises inside.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"--model {path}: no such file")
    if str(path).endswith(".onnx"):
        embedder = OnnxEmbedder(path, device, threads)
        if embedder.normalized and not normalize:
            raise UserError(f"{path} L2-normalises inside the graph (normalized: true in its JSON), so "
                             "--no-normalize cannot give the raw feature: run the checkpoint instead, or "
                             "export a model trained with model.test_norm=false")
        return embedder
    return TorchEmbedder(path, device)


def list_inputs(source: str | os.PathLike) -> list[str]:
    """Absolute paths of a folder tree (walk order), a list file (in order) or a single image."""
    path = Path(source)
    paths = [str(path)] if path.is_file() and is_image_file(path) else list_images(path)[1]
    return [os.path.abspath(p) for p in paths]


class _ImageFiles(Dataset):
    """Item: (index, (3, H, W) tensor or None, reason or None); decoding errors become items."""

    def __init__(self, paths: list[str], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            pixels = load_image_tensor(self.paths[index]).pixels  # the decoder evaluation uses
        except ImageDecodeError as err:
            return index, None, err.reason
        return index, self.transform(pixels), None


def _collate(items: list[tuple]) -> dict:
    good = [(i, x) for i, x, _ in items if x is not None]
    return {"index": [i for i, _ in good], "images": torch.stack([x for _, x in good]) if good else None,
            "failed": [(i, reason) for i, x, reason in items if x is None]}


@dataclass
class InferenceResult:
    paths: list[str]  # the readable images, in input order
    embeddings: np.ndarray  # (N, D) float32, row i for paths[i]
    skipped: list[tuple[str, str]]  # (path, reason) of the unreadable images
    seconds: float
    normalized: bool


def embed_images(embedder: TorchEmbedder | OnnxEmbedder, paths: list[str], batch_size: int = 64,
                 normalize: bool = True, num_workers: int = 0, progress: bool = True) -> InferenceResult:
    """Embed every readable image of ``paths``; unreadable ones are logged and listed in ``skipped``.

    Raises:
        RuntimeError: no image could be read, or the model gave a non-finite embedding.
    """
    dataset = _ImageFiles(paths, embedder.preprocessing.transform())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate)
    feats, kept, skipped = [], [], []
    start = time.perf_counter()
    with tqdm(total=len(paths), unit="img", desc="embed", disable=not progress) as bar:
        for batch in loader:
            for index, reason in batch["failed"]:
                skipped.append((paths[index], reason))
                if len(skipped) <= LOG_FIRST:
                    logger.warning("unreadable image skipped: %s (%s)", paths[index], reason)
            if batch["images"] is not None:
                feats.append(embedder(batch["images"]))
                kept.extend(batch["index"])
            bar.update(len(batch["index"]) + len(batch["failed"]))
    seconds = time.perf_counter() - start
    log_skipped(logger, "unreadable images", [p for p, _ in skipped])
    if not kept:
        raise RuntimeError(f"none of the {len(paths)} images could be read (first: {skipped[0][0]}: "
                           f"{skipped[0][1]})")
    out = np.concatenate(feats).astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        raise RuntimeError(f"non-finite embedding for {paths[kept[bad]]}: is the model broken?")
    if normalize and not embedder.normalized:
        out = F.normalize(torch.from_numpy(out), dim=1).numpy()  # the op ReIDModel.embed uses
    return InferenceResult([paths[i] for i in kept], out, skipped, seconds, normalize or embedder.normalized)


def _sidecar(out: Path, suffix: str) -> Path:
    return out.with_name(out.stem + suffix)


def _path_bytes(path: str) -> bytes:
    """A path as the bytes the file system holds: names that are not UTF-8 arrive as surrogate
    escapes (``os.fsdecode``) and leave as their original bytes."""
    return os.fsencode(path)


SET_HEADER = b"# solider-embeddings sha256="  # first line of FILE.paths.txt: ties it to its FILE.npy


def write_embeddings(out: str | os.PathLike, paths: list[str], embeddings: np.ndarray) -> list[Path]:
    """Write ``FILE.json`` (TAO format) or ``FILE.npy`` + ``FILE.paths.txt``; returns the files.

    The pair is written as a set: both temporary files first, then the renames; ``FILE.paths.txt``
    starts with the SHA-256 of ``FILE.npy``, so :func:`read_embeddings` refuses a pair from two
    different writes (e.g. one interrupted between the renames). Names of any bytes survive: the
    JSON escapes them (``\\udcXX`` for a byte that is not UTF-8), ``.paths.txt`` holds the raw bytes.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(paths) != len(embeddings):
        raise ValueError(f"{len(paths)} paths but {len(embeddings)} embeddings")
    if out.suffix == ".json":
        rows = ('{"img_path": ' + json.dumps(p) + ', "embedding": ['
                + ",".join(format(v, ".9g") for v in e.tolist()) + "]}" for p, e in zip(paths, embeddings))
        with atomic_write(out) as tmp:
            tmp.write_bytes(("[\n" + ",\n".join(rows) + "\n]\n").encode("ascii"))  # json.dumps: ASCII
        return [out]
    if out.suffix == ".npy":
        if any("\n" in p or "\r" in p for p in paths):
            raise UserError("an image path contains a line break: write .json instead of .npy + paths.txt")
        names = _sidecar(out, ".paths.txt")
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(embeddings, dtype=np.float32))
        array = buffer.getvalue()
        text = SET_HEADER + hashlib.sha256(array).hexdigest().encode() + b"\n" + \
            b"".join(_path_bytes(p) + b"\n" for p in paths)
        # Both files are complete before either takes its name; the inner block renames first.
        with atomic_write(out) as tmp_array, atomic_write(names) as tmp_names:
            tmp_array.write_bytes(array)
            tmp_names.write_bytes(text)
        return [out, names]
    raise UserError(f"--out {out}: expected a file name ending in .json or .npy")


def read_embeddings(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """(paths, (N, D) float32 embeddings) from a file :func:`write_embeddings` wrote.

    Raises:
        ValueError: a ``.npy`` and ``.paths.txt`` that were not written together.
    """
    path = Path(path)
    if path.suffix == ".json":
        entries = json.loads(path.read_text(encoding="ascii", errors="surrogateescape"))
        return [e["img_path"] for e in entries], np.asarray([e["embedding"] for e in entries], np.float32)
    if path.suffix == ".npy":
        names = _sidecar(path, ".paths.txt")
        lines = names.read_bytes().split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        array = path.read_bytes()
        if lines and lines[0].startswith(SET_HEADER):
            recorded = lines.pop(0)[len(SET_HEADER):].decode("ascii", "replace")
            if recorded != hashlib.sha256(array).hexdigest():
                raise ValueError(f"{path} and {names} were not written together (the .paths.txt belongs to "
                                 "another .npy, e.g. of an interrupted or later run): refusing the pair")
        else:
            logger.warning("%s has no set header (written by an older version): only the row count is "
                           "checked", names)
        feats = np.load(io.BytesIO(array), allow_pickle=False)
        paths = [os.fsdecode(line) for line in lines]
        if len(paths) != len(feats):
            raise ValueError(f"{path}: {len(feats)} rows but {len(paths)} lines in its .paths.txt")
        return paths, feats
    raise ValueError(f"{path}: expected a .json or .npy embeddings file")


def _summary(result: InferenceResult, files: list[Path], skipped_file: Path | None, description: str) -> str:
    n, s = len(result.paths), result.seconds
    line = (f"embedded {n} of {n + len(result.skipped)} images ({result.embeddings.shape[1]}-d, "
            f"{'L2-normalised' if result.normalized else 'not normalised'}; {description}) in {s:.1f} s "
            f"({(n + len(result.skipped)) / max(s, 1e-9):.1f} images/s) -> {', '.join(map(str, files))}")
    if result.skipped:
        first = ", ".join(f"{p} ({r})" for p, r in result.skipped[:3])
        line += (f"; skipped {len(result.skipped)} unreadable image(s), all listed in {skipped_file}: {first}"
                 + (" ..." if len(result.skipped) > 3 else ""))
    else:
        line += "; skipped 0 images"
    return line


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="finetune/infer.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="fine-tuned checkpoint (.pt) or exported .onnx")
    parser.add_argument("--images", required=True, help="folder (recursive), list file, or one image")
    parser.add_argument("--out", required=True, help="FILE.json (TAO format) or FILE.npy (+ FILE.paths.txt)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                        help="L2-normalise the embeddings (default: yes)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of the model (PyTorch and onnxruntime); 0: the libraries' "
                             "default. On a busy CPU 1 can be several times faster (docs/INFERENCE.md)")
    parser.add_argument("--num-workers", type=int, default=default_workers(),
                        help="image decoding processes (default: min(4, cores - 1); 0: in the main process)")
    args = reject_overrides(parser, argv)  # flags only, in any order: there is no config schema here
    if args.batch_size < 1 or args.num_workers < 0 or args.threads < 0:
        parser.error("--batch-size must be >= 1, --num-workers and --threads >= 0")
    if Path(args.out).suffix not in (".json", ".npy"):
        parser.error(f"--out {args.out}: expected a file name ending in .json or .npy")
    setup_logging()
    out = Path(args.out)
    sidecars = [_sidecar(out, ".skipped.txt")] + [_sidecar(out, ".paths.txt")] * (out.suffix == ".npy")
    check_output_files([out, *sidecars], "--out")  # before the model and the images are read
    if args.threads:
        torch.set_num_threads(args.threads)
    embedder = open_model(args.model, args.device, args.normalize, args.threads)
    paths = list_inputs(args.images)
    logger.info("%d images from %s; model: %s", len(paths), args.images, embedder.description)
    result = embed_images(embedder, paths, args.batch_size, args.normalize, args.num_workers,
                          progress=progress_enabled(True))
    files = write_embeddings(args.out, result.paths, result.embeddings)
    skipped_file = _sidecar(Path(args.out), ".skipped.txt")
    if result.skipped:
        with atomic_write(skipped_file) as tmp:
            tmp.write_bytes(b"".join(_path_bytes(p) + b"\t" + r.encode("utf-8", "replace") + b"\n"
                                     for p, r in result.skipped))
    elif skipped_file.exists():
        skipped_file.unlink()  # a stale list from an earlier run would mislead
    # a file name that is not UTF-8 is printed with \udcXX escapes rather than failing at the very end
    print(_summary(result, files, skipped_file, embedder.description).encode("utf-8", "backslashreplace")
          .decode("utf-8"))
    return {"files": [str(f) for f in files], "count": len(result.paths), "skipped": result.skipped,
            "skipped_file": str(skipped_file) if result.skipped else None,
            "feature_dim": int(result.embeddings.shape[1]), "normalized": result.normalized,
            "backend": embedder.backend, "seconds": result.seconds}


if __name__ == "__main__":
    run_entry(main, "finetune/infer.py")
