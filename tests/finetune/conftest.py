"""Fixtures for the fine-tuning tests: a tiny synthetic Market-format set and one tiny training run
through the real entry point, shared by the tests that read its outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from solider.datatools.synthetic import generate_market_dataset

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "finetune" / "demo.yaml"
# A 2-stage Swin (shifted windows and padding still exercised) at 64x32: ~0.1 s per step on one core.
TINY_MODEL = ["model.arch=custom", "model.embed_dim=16", "model.depths=[2,2]", "model.num_heads=[1,2]",
              "model.window_size=7", "model.img_size=[64,32]", "model.drop_path_rate=0.1"]


def tiny_args(data_root: Path, output_dir: Path, *extra: str) -> list[str]:
    """Arguments of ``finetune.run.main`` for a tiny CPU run on ``data_root`` (P x K = 4 x 2: 8 steps
    per epoch on the tiny set; Adam 3e-3 learns it within a few epochs)."""
    return ["--config", str(DEMO), *TINY_MODEL, f"data.root={data_root}", f"output_dir={output_dir}",
            "data.num_workers=0", "train.batch_size=8", "train.num_instances=2", "augment.padding=3",
            "augment.erasing_p=0", "train.log_every=4", "eval.batch_size=32", "optim.name=adam",
            "optim.lr=0.003", "optim.warmup_epochs=1", "optim.schedule=cosine",
            "loss.triplet_soft_margin=false", "loss.center_weight=0", "eval.at_start=false", *extra]


@pytest.fixture(autouse=True)
def _tiny_models_on_one_thread(one_thread):
    yield


@pytest.fixture(scope="session")
def tiny_market(tmp_path_factory) -> Path:
    """16 identities (8 train, 8 test) x 2 cameras x 4 images at 64x32."""
    root = tmp_path_factory.mktemp("tiny_market")
    generate_market_dataset(root, ids=16, cameras=2, images_per_camera=4, size=(64, 32), seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_market, tmp_path_factory) -> tuple[Path, dict]:
    """One tiny fine-tuning from random init with an evaluation before training: (output_dir, result)."""
    from finetune.run import main

    out = tmp_path_factory.mktemp("tiny_run")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run outside the function-scoped one_thread
    try:
        result = main(["--init", "none", *tiny_args(tiny_market, out, "train.epochs=8", "eval.every_epochs=4",
                                                    "eval.at_start=true")])
    finally:
        torch.set_num_threads(before)
    return out, result


# The ResNet of issue #9 at the same tiny size: timm ResNet-18, last stride 1 (a 4x2 map at 64x32),
# BNNeck "after" as in BoT; no semantic controller, no drop path.
RESNET18 = ["model.arch=resnet18", "model.semantic_weight=-1", "model.drop_path_rate=0",
            "model.neck_feat=after"]


@pytest.fixture(scope="session")
def imagenet_resnet18(tmp_path_factory) -> Path:
    """A timm ResNet-18 (random weights, 1000-class fc) saved as an ImageNet weights file would be."""
    import timm

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("imagenet") / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_resnet_run(tiny_market, imagenet_resnet18, tmp_path_factory) -> tuple[Path, dict]:
    """A tiny ResNet-18 fine-tuning from the ImageNet-style file, evaluated before and after 4 epochs."""
    from finetune.run import main

    out = tmp_path_factory.mktemp("tiny_resnet_run")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = tiny_args(tiny_market, out, *RESNET18, "train.epochs=4", "eval.every_epochs=0",
                         "eval.at_start=true")
        result = main(["--init", str(imagenet_resnet18), *args])
    finally:
        torch.set_num_threads(before)
    return out, result
