"""SOLIDER semantics: lambda sampling and layout, clustering labels (planted maps and the
scikit-learn reference), keypoint labels (hand-made skeletons and real Market-1501 crops),
combination, masking, and the part loss against naive loops."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from solider.models.heads import DINOHead
from solider.semantic_supervision import (
    SOURCE_CLUSTERING,
    SOURCE_KEYPOINTS,
    SOURCE_NONE,
    _kmeans_pp,
    _lloyd,
    choose_part,
    cluster_part_labels,
    combine_part_labels,
    expand_to_crops,
    keypoint_part_labels,
    mask_part,
    part_classification_loss,
    sample_semantic_weights,
    to_crop_major,
)
from tests.reference.naive_semantics import naive_cluster_part_labels, naive_part_loss, planted_feature_maps

# ----------------------------------------------------------------------------- lambda and layout


def test_semantic_weights_binary_and_uniform():
    gen = torch.Generator().manual_seed(0)
    binary = sample_semantic_weights(2000, generator=gen)
    assert binary.shape == (2000,) and binary.dtype == torch.float32
    assert set(binary.unique().tolist()) == {0.0, 1.0} and abs(float(binary.mean()) - 0.5) < 0.05
    uniform = sample_semantic_weights(2000, mode="uniform", generator=gen, device="cpu")
    assert 0 <= float(uniform.min()) and float(uniform.max()) < 1 and len(uniform.unique()) > 1900
    again = sample_semantic_weights(2000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(binary, again)
    with pytest.raises(ValueError, match="mode"):
        sample_semantic_weights(3, mode="beta")


def test_crop_major_layout():
    lam = torch.tensor([0.0, 1.0, 0.5])
    assert expand_to_crops(lam, 3).tolist() == [0.0, 1.0, 0.5] * 3
    per_image = torch.arange(3 * 2 * 5).view(3, 2, 5)          # (B, n_crops, ...)
    crop_major = to_crop_major(per_image)
    assert crop_major.shape == (6, 5)
    assert torch.equal(crop_major[1], per_image[1, 0]) and torch.equal(crop_major[3 + 2], per_image[2, 1])
    assert expand_to_crops(torch.ones(2, 4), 2).shape == (4, 4)


# ----------------------------------------------------------------------------- clustering


def test_planted_maps_recover_foreground_and_order_exactly():
    maps, truth = planted_feature_maps(12, 48, seed=3)
    labels, valid = cluster_part_labels(torch.from_numpy(maps))
    assert labels.dtype == torch.long and labels.shape == (12, 8, 4) and valid.dtype == torch.bool
    assert bool(valid.all())
    assert torch.equal(labels, torch.from_numpy(truth))


def test_hand_built_map_three_bands():
    c = 16
    fmap = torch.zeros(1, c, 8, 4)
    fmap[0, 0] = 0.5                                           # background, norm 0.5
    for part, rows in enumerate((range(0, 3), range(3, 6), range(6, 8)), start=1):
        for r in rows:
            fmap[0, :, r, 1:] = 0
            fmap[0, part, r, 1:] = 5.0                         # 24 foreground tokens in columns 1-3
    labels, valid = cluster_part_labels(fmap)
    expected = torch.zeros(8, 4, dtype=torch.long)
    expected[0:3, 1:], expected[3:6, 1:], expected[6:8, 1:] = 1, 2, 3
    assert bool(valid[0]) and torch.equal(labels[0], expected)


def test_half_or_less_foreground_is_invalid_and_mixed_batch():
    big, big_truth = planted_feature_maps(3, 32, seed=5)
    small, _ = planted_feature_maps(3, 32, seed=6, fg_range=(0.2, 0.45))
    half = np.full((1, 32, 8, 4), 0.0, dtype=np.float32)
    half[0, 0] = 1.0
    half[0, 1, :4] = 10.0                                      # exactly 16 of 32 tokens: <= 50 % -> invalid
    maps = np.concatenate([big[:1], small[:1], half, big[1:], small[1:]])
    labels, valid = cluster_part_labels(torch.from_numpy(maps))
    assert valid.tolist() == [True, False, False, True, True, False, False]
    assert torch.equal(labels[[0, 3, 4]], torch.from_numpy(big_truth))
    assert int(labels[~valid].abs().sum()) == 0
    _, valid_40 = cluster_part_labels(torch.from_numpy(half), min_foreground=0.4)
    assert bool(valid_40[0])


def test_agreement_with_sklearn_reference_on_random_structured_maps():
    maps, _ = planted_feature_maps(10, 64, seed=11, noise=0.25)
    ours, ours_valid = cluster_part_labels(torch.from_numpy(maps))
    ref, ref_valid = naive_cluster_part_labels(maps)
    assert np.array_equal(ours_valid.numpy(), ref_valid) and ref_valid.all()
    agreement = float((ours.numpy() == ref).mean())
    assert agreement >= 0.95, agreement


@pytest.mark.parametrize("check_every", [3, 8])
def test_lloyd_checked_every_few_iterations_gives_the_same_clusters(check_every):
    """An accelerator reads convergence every few Lloyd iterations (fewer host syncs); a converged
    assignment is a fixed point, so labels and inertia equal those of a check after every one."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 32, 24, generator=g)  # no structure: converges after 3 iterations
    x = x - x.mean(dim=1, keepdim=True)
    gram = x @ x.transpose(1, 2)
    mask = torch.rand(16, 32, generator=g) < 0.8
    seeds = _kmeans_pp(gram, mask, 3, 10, torch.Generator().manual_seed(0))
    every = _lloyd(gram, mask, seeds, 100, check_every=1)
    every_k = _lloyd(gram, mask, seeds, 100, check_every)
    assert torch.equal(every[0], every_k[0]) and torch.equal(every[1], every_k[1])
    capped = _lloyd(gram, mask, seeds, 2, check_every=1), _lloyd(gram, mask, seeds, 2, check_every)
    assert torch.equal(capped[0][0], capped[1][0])  # the cap stops both at the same iteration
    assert not torch.equal(capped[0][0], every[0])  # ... before convergence here


@pytest.mark.parametrize("num_parts", [4, 5])
def test_more_parts(num_parts):
    maps, truth = planted_feature_maps(6, 40, num_parts=num_parts, seed=num_parts, fg_range=(0.7, 0.95))
    labels, valid = cluster_part_labels(torch.from_numpy(maps), num_parts=num_parts)
    assert bool(valid.all()) and torch.equal(labels, torch.from_numpy(truth))


def test_deterministic_dtype_and_bad_inputs():
    maps, truth = planted_feature_maps(4, 32, seed=8)
    x = torch.from_numpy(maps)
    a = cluster_part_labels(x)
    b = cluster_part_labels(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    bf16_labels, _ = cluster_part_labels(x.bfloat16(), n_init=3)
    assert torch.equal(bf16_labels, torch.from_numpy(truth))
    broken = x.clone()
    broken[2, 0, 0, 0] = float("nan")
    broken[3] = 1.0                                            # constant map: no foreground
    labels, valid = cluster_part_labels(broken)
    assert valid.tolist() == [True, True, False, False] and int(labels[2:].abs().sum()) == 0
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        cluster_part_labels(x[0])
    with pytest.raises(ValueError, match="num_parts"):
        cluster_part_labels(x, num_parts=0)


# ----------------------------------------------------------------------------- keypoints

STANDING = {  # COCO-17 joint -> (x, y) for a person facing the camera in a 256x128 crop
    0: (64, 30), 1: (68, 26), 2: (60, 26), 3: (72, 30), 4: (56, 30), 5: (84, 60), 6: (44, 60),
    7: (90, 95), 8: (38, 95), 9: (92, 125), 10: (36, 125), 11: (76, 130), 12: (52, 130),
    13: (76, 180), 14: (52, 180), 15: (76, 228), 16: (52, 228),
}
COCO_FLIP = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


def _skeleton(joints: dict[int, tuple[float, float]]) -> torch.Tensor:
    kp = torch.zeros(17, 3)
    for j, (x, y) in joints.items():
        kp[j] = torch.tensor([x, y, 2.0])
    return kp


def _mean_rows(labels: torch.Tensor, parts: int) -> list[float]:
    rows = torch.arange(labels.shape[-2], dtype=torch.float32)[:, None].expand(labels.shape[-2:])
    return [float(rows[labels == p].mean()) for p in range(1, parts + 1)]


def test_standing_person_regions():
    labels, valid = keypoint_part_labels(_skeleton(STANDING)[None], (256, 128))
    lab = labels[0]
    assert bool(valid[0]) and lab.shape == (8, 4)
    assert set(lab[:4].unique().tolist()) == {0, 1} and int((lab[:4] == 1).sum()) >= 8   # head, torso, arms
    assert set(lab[4:7].unique().tolist()) <= {0, 2} and int((lab[4:7] == 2).sum()) >= 6  # legs
    assert set(lab[7].unique().tolist()) <= {0, 3} and int((lab[7] == 3).sum()) >= 1       # feet
    assert int(lab[4:, [0, 3]].abs().sum()) == 0                                         # beside the legs
    m = _mean_rows(lab, 3)
    assert m[0] < m[1] < m[2]


@pytest.mark.parametrize("num_parts", [3, 4, 5])
def test_flipped_person_is_mirrored(num_parts):
    kp = _skeleton(STANDING)
    flipped = kp[COCO_FLIP].clone()
    flipped[:, 0] = 128 - flipped[:, 0]
    labels, valid = keypoint_part_labels(torch.stack([kp, flipped]), (256, 128), num_parts=num_parts)
    assert bool(valid.all())
    assert torch.equal(labels[1], labels[0].flip(-1))
    m = _mean_rows(labels[0], num_parts)
    assert all(a < b for a, b in zip(m, m[1:])), m       # parts ordered top to bottom


def test_missing_joints_make_images_invalid():
    few = _skeleton({j: STANDING[j] for j in (0, 5, 6, 11, 12)})           # 5 joints < 6
    no_hips = _skeleton({j: xy for j, xy in STANDING.items() if j not in (11, 12)})
    nothing = torch.zeros(17, 3)
    nan = _skeleton(STANDING)
    nan[:, :2] = float("nan")
    batch = torch.stack([few, no_hips, nothing, nan, _skeleton(STANDING)])
    labels, valid = keypoint_part_labels(batch, (256, 128))
    assert valid.tolist() == [False, False, False, False, True]
    assert int(labels[:4].abs().sum()) == 0
    with pytest.raises(ValueError, match="COCO-17"):
        keypoint_part_labels(torch.zeros(2, 18, 3), (256, 128))
    with pytest.raises(ValueError, match="num_parts"):
        keypoint_part_labels(torch.zeros(2, 17, 3), (256, 128), num_parts=6)


# OpenPose-18 (nose, neck, r_sho, r_elb, r_wri, l_sho, l_elb, l_wri, r_hip, r_knee, r_ank, l_hip, l_knee,
# l_ank, r_eye, l_eye, r_ear, l_ear) index for each COCO-17 joint.
OPENPOSE_FOR_COCO = [0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10]


def _market_keypoints(root: Path) -> torch.Tensor:
    names = {p.name for p in (root / "images").iterdir()}
    keypoints = []
    for csv in ("market-annotation-train.csv", "market-annotation-test.csv"):
        for line in (root / csv).read_text().splitlines()[1:]:
            name, ys, xs = line.split(":")
            if name.strip() not in names:
                continue
            ys, xs = ast.literal_eval(ys.strip()), ast.literal_eval(xs.strip())
            kp = torch.zeros(17, 3)
            for coco, op in enumerate(OPENPOSE_FOR_COCO):
                if ys[op] >= 0 and xs[op] >= 0:
                    kp[coco] = torch.tensor([float(xs[op]), float(ys[op]), 1.0])
            keypoints.append(kp)
    return torch.stack(keypoints)


def test_real_market_crops_parts_top_to_bottom(market_samples):
    keypoints = _market_keypoints(market_samples)
    assert len(keypoints) >= 10
    labels, valid = keypoint_part_labels(keypoints, crop_size=(128, 64), grid=(8, 4))
    assert float(valid.float().mean()) >= 0.8
    per_image = [_mean_rows(lab, 3) for lab in labels[valid]]
    upper, lower, feet = (np.nanmean([m[p] for m in per_image]) for p in range(3))
    assert upper < lower < feet, (upper, lower, feet)
    assert all(m[0] < m[1] for m in per_image)


# ----------------------------------------------------------------------------- combine, mask, loss


def test_combine_prefers_keypoints_and_records_source():
    kp_labels = torch.full((4, 2, 2), 1)
    cl_labels = torch.full((4, 2, 2), 2)
    kp_valid = torch.tensor([True, False, False, True])
    cl_valid = torch.tensor([True, True, False, False])
    out = combine_part_labels((kp_labels, kp_valid), (cl_labels, cl_valid))
    assert out.source.tolist() == [SOURCE_KEYPOINTS, SOURCE_CLUSTERING, SOURCE_NONE, SOURCE_KEYPOINTS]
    assert out.valid.tolist() == [True, True, False, True]
    assert out.labels[:, 0, 0].tolist() == [1, 2, 0, 1]
    only = combine_part_labels(clustering=(cl_labels, cl_valid))
    assert only.source.tolist() == [2, 2, 0, 0]
    with pytest.raises(ValueError, match="give"):
        combine_part_labels()
    with pytest.raises(ValueError, match="differ in shape"):
        combine_part_labels((kp_labels[:, :1], kp_valid), (cl_labels, cl_valid))


def test_mask_part_erases_exactly_the_part():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 64, 32, generator=gen)
    labels = torch.randint(0, 4, (3, 8, 4), generator=gen)
    out = mask_part(images, labels, 2)
    for i in range(3):
        for r in range(8):
            for c in range(4):
                block = out[i, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8]
                original = images[i, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8]
                assert torch.equal(block, torch.zeros_like(block) if labels[i, r, c] == 2 else original)
    per_image = mask_part(images, labels, torch.tensor([1, 2, 3]))
    assert torch.equal(per_image[1], out[1])
    assert torch.equal(images, images.clone())                     # input untouched
    assert {choose_part(3, torch.Generator().manual_seed(s)) for s in range(40)} == {1, 2, 3}


def test_part_loss_matches_naive_loop():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 8, 4, 4, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (5, 8, 4), generator=gen)
    weights = torch.tensor([1.0, 0.0, 1.0, 0.3, 0.0], dtype=torch.float64)
    loss, acc = part_classification_loss(logits, labels, weights)
    ref_loss, ref_acc = naive_part_loss(logits.reshape(5, 32, 4).numpy(), labels.reshape(5, 32).numpy(),
                                        weights.numpy())
    assert float(loss) == pytest.approx(ref_loss, rel=1e-6) and float(acc) == pytest.approx(ref_acc)
    flat_loss, _ = part_classification_loss(logits.reshape(5, 32, 4), labels.reshape(5, 32), weights)
    assert float(flat_loss) == pytest.approx(float(loss))
    hot, _ = part_classification_loss(logits, labels, weights, temperature=0.1)
    ref_hot, _ = naive_part_loss((logits / 0.1).reshape(5, 32, 4).numpy(), labels.reshape(5, 32).numpy(),
                                 weights.numpy())
    assert float(hot) == pytest.approx(ref_hot, rel=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        part_classification_loss(logits, labels[:4], weights)


@pytest.mark.parametrize("n_images,all_zero", [(0, False), (3, True)])
def test_part_loss_guard_keeps_graph_and_grads_finite(n_images, all_zero):
    head = DINOHead(6, out_dim=4, hidden_dim=8, bottleneck_dim=4)
    tokens = torch.randn(n_images, 8, 4, 6)
    weights = torch.zeros(n_images) if all_zero else torch.ones(n_images)
    loss, acc = part_classification_loss(head(tokens), torch.zeros(n_images, 8, 4, dtype=torch.long), weights)
    assert float(loss.detach()) == 0.0 and torch.isfinite(acc)
    loss.backward()
    grads = [p.grad for p in head.parameters() if p.requires_grad]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
