"""ReID train / test transforms."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from solider.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_reid_test_transform,
    build_reid_train_transform,
    interpolation_mode,
    random_erasing_mean,
    resize_crop,
)
from tests.reference.data_random_erasing import bot_random_erasing


def test_test_transform_normalises_exactly():
    img = Image.new("RGB", (50, 120), (255, 128, 0))
    out = build_reid_test_transform((64, 32))(img)
    assert out.shape == (3, 64, 32) and out.dtype == torch.float32
    expected = (torch.tensor([255, 128, 0]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out[:, 10, 10], expected, atol=1e-6)
    tensor_in = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    assert torch.equal(build_reid_test_transform((64, 32))(tensor_in), out)


def test_train_pad_crop_flip_without_erasing():
    img = Image.new("RGB", (32, 64), (200, 200, 200))
    t = build_reid_train_transform((64, 32), mean=(0, 0, 0), std=(1, 1, 1), erasing_p=0, flip_p=0.5)
    torch.manual_seed(0)
    outs = [t(img) for _ in range(20)]
    assert all(o.shape == (3, 64, 32) for o in outs)
    zero_rows = [int((o[0].amax(1) == 0).sum()) + int((o[0].amax(0) == 0).sum()) for o in outs]
    assert max(zero_rows) > 0  # the zero padding shows up at the borders for most offsets
    assert all(float(o.max()) == pytest.approx(200 / 255) for o in outs)


def test_bot_erasing_matches_naive_reference():
    x = torch.randn(3, 32, 16)
    for seed in range(20):
        random.seed(seed)
        ours = random_erasing_mean(x.clone(), p=0.5)
        random.seed(seed)
        ref = bot_random_erasing(x.clone(), p=0.5)
        assert torch.equal(ours, ref), seed


@pytest.mark.parametrize("mode", ["pixel", "mean"])
def test_train_erasing_modes(mode):
    img = Image.new("RGB", (32, 64), (0, 0, 0))
    t = build_reid_train_transform((64, 32), erasing_p=1.0, flip_p=0, padding=0, erasing_mode=mode)
    torch.manual_seed(0)
    random.seed(0)
    base = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    out = t(img)
    changed = (out != base.view(3, 1, 1)).any(0)
    assert changed.float().mean() > 0.015  # at least 2% of the area erased
    if mode == "mean":
        assert torch.allclose(out[:, changed][:, 0], torch.tensor(IMAGENET_MEAN))
    else:
        assert out[:, changed].std() > 0.5  # per-pixel N(0, 1) noise


def test_bad_options():
    with pytest.raises(ValueError, match="erasing_mode"):
        build_reid_train_transform(erasing_mode="zero")
    with pytest.raises(ValueError, match="unknown interpolation 'lanczos'"):
        build_reid_test_transform(interpolation="lanczos")


@pytest.mark.parametrize("mode", ["bicubic", "bilinear", "nearest"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_resize_crop_is_torchvisions_resize_bit_for_bit(mode, channels_last):
    from torchvision.transforms.v2 import functional as TF

    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 97, 41), dtype=torch.uint8, generator=g)
    if channels_last:  # how the multi-crop workers store decoded images
        image = image.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    for top, left, h, w, size in [(0, 0, 97, 41, (256, 128)), (10, 3, 40, 20, (128, 64)),
                                  (5, 5, 80, 30, (32, 16)), (1, 2, 64, 32, (64, 32))]:
        crop = image[:, top:top + h, left:left + w]
        expected = TF.resize(crop, list(size), interpolation=interpolation_mode(mode), antialias=True)
        got = resize_crop(crop, size, interpolation_mode(mode))
        assert got.shape == (3, *size) and torch.equal(got, expected), (mode, size)
