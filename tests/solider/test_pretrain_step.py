"""The lean pretraining step: fixed-shape masking gives the official loss and gradients, the part
loss with a validity mask equals the loss on the valid subset, and no host sync is left in it."""

from __future__ import annotations

import copy

import pytest
import torch

from solider.config import load_config
from solider.dino import DINOLoss
from solider.pretrain import build_networks
from solider.pretrain_config import PretrainConfig
from solider.pretrain_step import SemanticSettings, semantic_weights, solider_step, teacher_pass
from solider.semantic_supervision import (
    cluster_part_labels,
    combine_part_labels,
    expand_to_crops,
    keypoint_part_labels,
    part_classification_loss,
    to_crop_major,
)


def _tiny_cfg() -> PretrainConfig:
    return load_config(
        PretrainConfig,
        None,
        [
            "model.arch=custom",
            "model.embed_dim=16",
            "model.depths=[2,2]",
            "model.num_heads=[1,2]",
            "model.img_size=[64,32]",
            "model.local_size=[32,16]",
            "model.drop_path_rate=0.0",
            "augment.n_local=2",
            "dino.out_dim=64",
            "dino.hidden_dim=32",
            "dino.bottleneck_dim=16",
            "semantic.part_head_layers=2",
        ],
    )


def _batch(b: int = 4) -> dict:
    """Half the images with a standing person's keypoints, half without (clustered)."""
    g = torch.Generator().manual_seed(0)
    h, w = 64, 32
    kp = torch.zeros(b, 2, 17, 3)
    ys = (
        torch.tensor(
            [0.12, 0.1, 0.1, 0.11, 0.11, 0.25, 0.25, 0.4, 0.4, 0.52, 0.52, 0.55, 0.55, 0.75, 0.75, 0.93, 0.93]
        )
        * h
    )
    xs = (
        torch.tensor(
            [
                0.5,
                0.47,
                0.53,
                0.44,
                0.56,
                0.35,
                0.65,
                0.3,
                0.7,
                0.28,
                0.72,
                0.42,
                0.58,
                0.42,
                0.58,
                0.42,
                0.58,
            ]
        )
        * w
    )
    kp[..., 0], kp[..., 1], kp[..., 2] = xs, ys, 2.0
    has = torch.arange(b) % 2 == 0
    kp[~has] = 0
    return {
        "global_crops": torch.randn(b, 2, 3, h, w, generator=g),
        "local_crops": torch.randn(b, 2, 3, 32, 16, generator=g),
        "global_keypoints": kp,
        "has_keypoints": has,
        "index": torch.arange(b),
    }


@pytest.mark.parametrize("masking", [True, False])
def test_static_shapes_give_the_official_loss_and_gradients(masking):
    torch.manual_seed(0)
    student, teacher = build_networks(_tiny_cfg())
    batch = _batch()
    results, grads = [], []
    for static in (False, True):
        s = copy.deepcopy(student)
        settings = SemanticSettings(masking=masking, static_shapes=static, fixed_weight=None)
        loss_fn = DINOLoss(64)
        result = solider_step(batch, s, teacher, loss_fn, step=3, settings=settings, seed=1)
        result.loss.backward()
        results.append(result)
        grads.append({n: p.grad for n, p in s.named_parameters() if p.grad is not None})
    official, static = results
    assert 0 < float(official.metrics["labelled_share"]) < 1  # some crops labelled, some not: a real test
    torch.testing.assert_close(static.loss, official.loss, rtol=1e-5, atol=1e-7)
    for key in ("semantic_loss", "part_accuracy", "dino_loss", "masked_images"):
        torch.testing.assert_close(
            torch.as_tensor(static.metrics[key]).float(),
            torch.as_tensor(official.metrics[key]).float(),
            rtol=1e-5,
            atol=1e-7,
        )
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_masked_part_loss_equals_the_loss_of_the_valid_subset():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 8, 4, 4, generator=g, requires_grad=True)
    labels = torch.randint(0, 4, (6, 8, 4), generator=g)
    weights = torch.rand(6, generator=g)
    valid = torch.tensor([True, False, True, True, False, True])
    loss, acc = part_classification_loss(logits, labels, weights, valid=valid)
    ref_loss, ref_acc = part_classification_loss(logits[valid], labels[valid], weights[valid])
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(acc, ref_acc)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.count_nonzero(grad[~valid]) == 0
    none_valid, none_acc = part_classification_loss(
        logits, labels, weights, valid=torch.zeros(6, dtype=torch.bool)
    )
    assert float(none_valid.detach()) == 0 and float(none_acc) == 0 and none_valid.requires_grad


_HOST_READS = (
    "torch.randint(1, num_parts + 1, (1,), generator=generator).item()",  # CPU generator
    'bool(batch["has_keypoints"].any())',  # host keys of the batch (solider.pretrain_step.HOST_KEYS)
    "for i in indices.tolist()",
)


def test_the_static_step_reads_only_host_tensors(host_reads):
    """On CPU every tensor is a host tensor, so each host read is traced to its source line: the
    fixed-shape step reads only the CPU generator and the batch's host keys (no sync on a GPU),
    the official subset also reads the labelled crops (a sync per step)."""
    torch.manual_seed(0)
    student, teacher = build_networks(_tiny_cfg())
    batch = _batch()
    batch["has_keypoints"] = torch.zeros(4, dtype=torch.bool)  # clustering only: no keypoint labels
    settings = SemanticSettings(static_shapes=True)

    def step(s: SemanticSettings):
        return lambda: solider_step(batch, student, teacher, DINOLoss(64), step=0, settings=s, seed=0)

    static, _ = host_reads(step(settings))
    assert static and all(any(ok in line for ok in _HOST_READS) for line in static), static
    official, _ = host_reads(step(settings._replace(static_shapes=False)))
    assert any("nonzero" in line for line in official), official


def test_semantic_settings_are_the_semantic_section_by_name():
    """The step's settings copy the ``semantic`` section by name: a key added to one and not the other
    fails here (the two keys left out configure the part head, which the step does not build)."""
    import dataclasses

    from solider.pretrain_config import SemanticConfig

    section_keys = {f.name for f in dataclasses.fields(SemanticConfig)}
    assert section_keys - set(SemanticSettings._fields) == {"train_part_head", "part_head_layers"}
    assert set(SemanticSettings._fields) <= section_keys
    cfg = load_config(PretrainConfig, None, ["semantic.weight_mode=uniform", "semantic.fixed_weight=0.3",
                                             "semantic.num_parts=5", "semantic.label_source=clustering",
                                             "semantic.min_foreground=0.25", "semantic.masking=false",
                                             "semantic.loss_weight=2", "semantic.enabled=false"])
    settings = SemanticSettings.from_config(cfg.semantic, static_shapes=False)
    for name in SemanticSettings._fields:
        expected = False if name == "static_shapes" else getattr(cfg.semantic, name)
        assert getattr(settings, name) == expected, name


@pytest.mark.parametrize("label_source", ["auto", "clustering", "keypoints"])
def test_one_teacher_forward_gives_the_two_passes_labels_and_targets(label_source):
    """Clustering map (λ = 1) and DINO targets (per-image λ) from one forward over both copies equal
    the two separate passes: labels exactly, targets to float32 summation order."""
    torch.manual_seed(0)
    _, teacher = build_networks(_tiny_cfg())
    batch, settings = _batch(), SemanticSettings(label_source=label_source, weight_mode="uniform")
    globals_ = to_crop_major(batch["global_crops"])
    lam_g = expand_to_crops(semantic_weights(batch["index"], 3, 0, settings), 2)
    targets, parts = teacher_pass(batch, globals_, lam_g, teacher, settings)

    with torch.no_grad():
        separate_targets = teacher([globals_], [lam_g]).head
        kpts = None
        if label_source != "clustering":
            kpts = keypoint_part_labels(to_crop_major(batch["global_keypoints"]), (64, 32), grid=(8, 4),
                                        num_parts=3)  # two stages: an 8 x 4 map
        clusters = None
        if label_source != "keypoints":
            clusters = cluster_part_labels(teacher.backbone.forward_features(globals_, 1.0), num_parts=3)
    expected = combine_part_labels(kpts, clusters)
    torch.testing.assert_close(targets, separate_targets, atol=1e-5, rtol=1e-5)
    assert torch.equal(parts.labels, expected.labels) and torch.equal(parts.valid, expected.valid)
    assert torch.equal(parts.source, expected.source)
    used = set(parts.source.tolist()) - {0}  # 0: no label (an unclusterable random map)
    assert used == {"auto": {1, 2}, "clustering": {2}, "keypoints": {1}}[label_source]
