"""Multi-crop transform: output contract, determinism, and keypoints that move with the pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from solider.data.multicrop_transform import MultiCropTransform, transform_keypoints
from solider.data.skeleton import FLIP_INDEX


def _image(h: int = 160, w: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def test_output_contract_and_determinism():
    t = MultiCropTransform(global_size=(64, 32), local_size=(32, 16), n_local=3)
    kpts = np.zeros((17, 3), np.float32)
    kpts[0] = (30, 20, 2)
    torch.manual_seed(5)
    a = t(_image(), kpts)
    torch.manual_seed(5)
    b = t(_image(), kpts)
    assert a["global_crops"].shape == (2, 3, 64, 32) and a["global_crops"].dtype == torch.float32
    assert a["local_crops"].shape == (3, 3, 32, 16)
    assert a["global_keypoints"].shape == (2, 17, 3) and a["global_keypoints"].dtype == torch.float32
    assert a["has_keypoints"] is True
    for key in ("global_crops", "local_crops", "global_keypoints"):
        assert torch.equal(a[key], b[key])
    none = t(_image())
    assert none["has_keypoints"] is False and not none["global_keypoints"].any()
    zero_local = MultiCropTransform(global_size=(64, 32), n_local=0)(_image())
    assert zero_local["local_crops"].shape == (0, 3, 128, 64)


def test_keypoint_geometry_matches_torchvision_resized_crop():
    rng = np.random.default_rng(0)
    kpts = np.concatenate([rng.uniform(0, 60, (17, 1)), rng.uniform(0, 150, (17, 1)), np.full((17, 1), 2)], 1)
    box, size = (20, 5, 100, 40), (256, 128)
    ours = transform_keypoints(kpts, box, size, flip=False)
    points = tv_tensors.KeyPoints(torch.tensor(kpts[:, :2]), canvas_size=(160, 64))
    tv = TF.resized_crop(points, *box, list(size))
    inside = ours[:, 2] > 0
    assert np.allclose(ours[inside, :2], tv.numpy()[inside], atol=1e-4)
    assert inside.sum() >= 5
    outside = ~inside
    tvn = tv.numpy()
    assert ((tvn[outside] < 0) | (tvn[outside] > np.array([128, 256]))).any(1).all()
    flipped = transform_keypoints(kpts, box, size, flip=True)
    mirrored = ours[list(FLIP_INDEX)]
    vis = mirrored[:, 2] > 0
    # continuous coordinates: x -> W - x (torchvision's keypoint flip uses W - 1 - x)
    assert np.allclose(flipped[vis, 0], 128 - mirrored[vis, 0]) and np.allclose(flipped[:, 1], mirrored[:, 1])


@pytest.mark.parametrize("flip_p", [0.0, 1.0])
def test_keypoints_follow_the_pixels(flip_p):
    """A bright blob at the left wrist must be found at the transformed left-wrist keypoint."""
    img = torch.full((3, 200, 80), 40, dtype=torch.uint8)
    img[:, 120:126, 18:24] = 255  # blob centre (21, 123)
    kpts = np.zeros((17, 3), np.float32)
    kpts[9] = (21, 123, 2)  # left wrist
    t = MultiCropTransform(global_size=(100, 40), n_local=0, global_scale=(0.6, 1.0), flip_p=flip_p,
                           jitter_p=0, grayscale_p=0, blur_p=(0, 0, 0), solarize_p=0, mean=(0, 0, 0),
                           std=(1, 1, 1))
    torch.manual_seed(0)
    for _ in range(5):
        out = t(img, kpts)
        for crop, kp in zip(out["global_crops"], out["global_keypoints"]):
            joint = 10 if flip_p else 9  # flipped: the left wrist becomes the right wrist
            assert kp[9 if flip_p else 10, 2] == 0
            if kp[joint, 2] == 0:
                continue
            lum = crop.mean(0)
            y, x = divmod(int(lum.argmax()), lum.shape[1])
            assert abs(x + 0.5 - float(kp[joint, 0])) <= 2 and abs(y + 0.5 - float(kp[joint, 1])) <= 2


def test_pil_input_and_bad_tensor():
    from PIL import Image
    t = MultiCropTransform(global_size=(32, 16), local_size=(16, 8), n_local=1)
    out = t(Image.new("L", (30, 60), 100))
    assert out["global_crops"].shape == (2, 3, 32, 16)
    one_pixel = t(torch.full((3, 1, 1), 200, dtype=torch.uint8))  # a 1x1 image still gives valid crops
    assert one_pixel["global_crops"].shape == (2, 3, 32, 16)
    assert torch.isfinite(one_pixel["local_crops"]).all()
    with pytest.raises(ValueError, match=r"expected a \(3, H, W\) uint8 tensor"):
        t(torch.zeros(3, 10, 10))


def test_crop_box_follows_torchvision():
    from torchvision.transforms import RandomResizedCrop

    from solider.data.multicrop_transform import UNIFORMS_PER_CROP, random_resized_crop_box

    torch.manual_seed(0)
    img = torch.zeros(3, 300, 50)
    for scale in ((0.99, 1.0), (0.05, 0.8)):  # first: no try fits -> deterministic central fallback
        ours = [random_resized_crop_box(300, 50, scale, (0.4, 0.6), torch.rand(UNIFORMS_PER_CROP).tolist())
                for _ in range(400)]
        ref = [RandomResizedCrop.get_params(img, list(scale), [0.4, 0.6]) for _ in range(400)]
        if scale[0] > 0.9:
            assert set(ours) == set(ref) == {(87, 0, 125, 50)}
        for boxes in (ours, ref):
            assert all(0 <= t and 0 <= left and t + h <= 300 and left + w <= 50 for t, left, h, w in boxes)
        area = lambda boxes: np.mean([h * w / (300 * 50) for _, _, h, w in boxes])
        aspect = lambda boxes: np.mean([w / h for _, _, h, w in boxes])
        assert abs(area(ours) - area(ref)) < 0.03 and abs(aspect(ours) - aspect(ref)) < 0.03
    assert random_resized_crop_box(1, 1, (0.05, 0.8), (0.4, 0.6), [0.5] * UNIFORMS_PER_CROP) == (0, 0, 1, 1)


def test_the_spec_is_the_augment_section_by_name():
    """The pretraining transform takes the ``augment`` section by name: a key added to one and not the
    other fails here (each side's extras are listed with where they come from)."""
    import dataclasses

    from solider.config import load_config
    from solider.data.multicrop_transform import MultiCropSpec
    from solider.pretrain_config import AugmentConfig, PretrainConfig
    from solider.pretrain_data import multicrop_spec

    spec_keys = {f.name for f in dataclasses.fields(MultiCropSpec)}
    section_keys = {f.name for f in dataclasses.fields(AugmentConfig)}
    assert section_keys - spec_keys == {"blur_sigma_relative", "device"}  # read by multicrop_spec / pretrain
    assert spec_keys - section_keys == {"global_size", "local_size", "solarize_threshold", "interpolation"}
    cfg = load_config(PretrainConfig, None, ["model.img_size=128x64", "model.local_size=64x32",
                                             "augment.n_local=3", "augment.jitter=[0.1,0.2,0.3,0.05]"])
    spec = multicrop_spec(cfg.model, cfg.augment)
    assert (spec.global_size, spec.local_size, spec.n_local) == ((128, 64), (64, 32), 3)
    assert spec.jitter == (0.1, 0.2, 0.3, 0.05) and spec.blur_sigma == (0.05, 1.0)  # relative to 256 high
