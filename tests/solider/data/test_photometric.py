"""Photometric augmentation on the accelerator: the same crops as the worker path for a fixed
seed, the same parameter distribution, no host reads, and the blur sigma relative to the crop."""

from __future__ import annotations

import math

import pytest
import torch

from solider.data.multicrop_transform import MultiCropTransform
from solider.data.photometric import COLUMNS, NUM_PARAMS, apply_photometric, blur_sigma_for, draw_params
from solider.utils.seed import PerSampleSeeded


class _Images(torch.utils.data.Dataset):
    def __init__(self, transform):
        self.transform = transform

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        h, w = 90 + 17 * i, 40 + 5 * i
        smooth = torch.nn.functional.interpolate(
            torch.rand(1, 3, h // 8, w // 8, generator=g), size=(h, w), mode="bilinear"
        )[0]
        return self.transform((smooth * 255).to(torch.uint8))


@pytest.mark.parametrize("blur_sigma", [(0.1, 2.0), (0.05, 1.0)])
def test_device_path_gives_the_worker_crops(blur_sigma):
    kw = dict(global_size=(64, 32), local_size=(32, 16), n_local=3, blur_sigma=blur_sigma)
    workers = PerSampleSeeded(_Images(MultiCropTransform(**kw)), seed=3)
    device_t = MultiCropTransform(**kw, photometric_on_device=True)
    accel = PerSampleSeeded(_Images(device_t), seed=3)
    collate = torch.utils.data.default_collate
    a = collate([workers[i] for i in range(6)])
    raw = collate([accel[i] for i in range(6)])
    assert raw["global_crops"].dtype == torch.uint8 and raw["global_photometric"].shape == (6, 2, NUM_PARAMS)
    b = device_t.device_photometric()(raw)
    assert "global_photometric" not in b and b["local_crops"].shape == a["local_crops"].shape
    for key in ("global_crops", "local_crops"):
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5)
    torch.testing.assert_close(b["global_keypoints"], a["global_keypoints"])
    # every photometric op fired somewhere in this batch, so the comparison covers all of them
    p = torch.cat([raw["global_photometric"].flatten(0, 1), raw["local_photometric"].flatten(0, 1)])
    for col in ("apply", "gray", "blur"):
        assert p[:, COLUMNS[col]].any(), col


def test_solarize_and_grayscale_paths_match_exactly_when_forced():
    every_op = dict(global_size=(32, 16), local_size=(16, 8), n_local=2, grayscale_p=1.0, solarize_p=1.0,
                    jitter_p=1.0, blur_p=(1.0, 1.0, 1.0))
    t = MultiCropTransform(**every_op)
    dt = MultiCropTransform(**every_op, photometric_on_device=True)
    img = torch.randint(0, 256, (3, 70, 30), dtype=torch.uint8)
    torch.manual_seed(0)
    a = t(img)
    torch.manual_seed(0)
    raw = dt(img)
    b = dt.device_photometric()({k: v.unsqueeze(0) if torch.is_tensor(v) else v for k, v in raw.items()})
    torch.testing.assert_close(b["global_crops"][0], a["global_crops"], rtol=0, atol=1e-5)


def test_parameter_distribution_is_the_pipelines():
    torch.manual_seed(0)
    n = 40000
    p = draw_params(
        n, 0.8, (0.4, 0.4, 0.2, 0.1), 0.2, (0.1, 2.0), torch.full((n,), 0.5), torch.full((n,), 0.2)
    )
    apply = p[:, COLUMNS["apply"]]
    f, order = p[:, COLUMNS["factors"]], p[:, COLUMNS["order"]].long()
    tol = 4 / math.sqrt(n)
    assert abs(apply.mean() - 0.8) < tol and abs(p[:, COLUMNS["gray"]].mean() - 0.2) < tol
    assert abs(p[:, COLUMNS["blur"]].mean() - 0.5) < tol and abs(p[:, COLUMNS["solarize"]].mean() - 0.2) < tol
    for k, (lo, hi) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):  # U(lo, hi) each
        assert f[:, k].min() >= lo and f[:, k].max() <= hi
        assert abs(f[:, k].mean() - (lo + hi) / 2) < (hi - lo) * tol
        assert abs(f[:, k].var() - (hi - lo) ** 2 / 12) < (hi - lo) ** 2 * 2 * tol
    sigma = p[:, COLUMNS["sigma"]]
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0 and abs(sigma.mean() - 1.05) < 2 * tol
    assert torch.equal(order.sort(1).values, torch.arange(4).expand(n, 4))  # permutations
    share = torch.stack([(order[:, pos] == op).float().mean() for pos in range(4) for op in range(4)])
    assert (share - 0.25).abs().max() < tol  # every op equally likely at every position
    assert draw_params(
        0, 0.8, (0.4, 0.4, 0.2, 0.1), 0.2, (0.1, 2.0), torch.zeros(0), torch.zeros(0)
    ).shape == (0, 13)


def test_the_device_ops_read_nothing_on_the_host(host_reads):
    torch.manual_seed(1)
    crops = torch.randint(0, 256, (8, 3, 32, 16), dtype=torch.uint8)
    params = draw_params(
        8, 0.8, (0.4, 0.4, 0.2, 0.1), 0.5, (0.1, 2.0), torch.full((8,), 0.5), torch.full((8,), 0.5)
    )
    reads, out = host_reads(
        lambda: apply_photometric(crops, params, torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1), 2.0, 0.5))
    assert reads == [] and out.shape == (8, 3, 32, 16) and torch.isfinite(out).all()


def test_blur_sigma_relative_to_the_crop():
    assert blur_sigma_for((0.1, 2.0), 256, relative=True) == (0.1, 2.0)  # the official value at 256x128
    assert blur_sigma_for((0.1, 2.0), 128, relative=True) == (0.05, 1.0)
    assert blur_sigma_for((0.1, 2.0), 128, relative=False) == (0.1, 2.0)
    from solider.config import load_config
    from solider.pretrain_config import PretrainConfig

    cfg = load_config(PretrainConfig, None, [])
    assert (
        cfg.model.img_size[0] == 256
        and cfg.augment.blur_sigma_relative
        and cfg.augment.device == "accelerator"
    )
    assert blur_sigma_for(cfg.augment.blur_sigma, cfg.model.img_size[0], True) == (0.1, 2.0)
