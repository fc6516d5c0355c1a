"""The switches that give the authors' code's behaviour (CondInst's, in MVME-HBUT/LosNet)."""

import math
import re

import pytest
import torch
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from losnet import LevelTower, MaskBranch, select_mask_positives
from segtools.batch_norm import fold_batch_norms

from helpers import REPO_ROOT, build_losnet, losnet_cfg, rectangle_instances, training_batch

AUTHORS_CONFIG = str(REPO_ROOT / "configs/LosNet/losnet_MV3S_ore_authors.yaml")


def num_params(module):
    return sum(p.numel() for p in module.parameters())


def train_step_losses(model, batch):
    model.train()
    with EventStorage() as storage:
        return model(batch), storage


def anchors_of(model, height, width):
    return model.anchor_generator([torch.zeros(1, 1, height // s, width // s) for s in (8, 16, 32)])


# ---------------------------------------------------------------- mask branch


def mask_branch(level_convs):
    return MaskBranch(
        input_shape={f"p{i}": ShapeSpec(channels=96, stride=2**i) for i in (3, 4, 5)},
        in_features=["p3", "p4", "p5"],
        channels=128,
        num_convs=4,
        out_channels=8,
        norm="BN",
        level_convs=level_convs,
    )


def test_authors_mask_branch_is_a_3x3_bn_relu_conv_per_level():
    ours, authors = mask_branch("1x1_linear"), mask_branch("3x3_norm_relu")
    # Three 3x3 96 -> 128 convs with BN (no bias) instead of two 1x1 96 -> 96 convs with bias;
    # the first tower conv then reads 128 channels instead of 96.
    difference = 3 * (96 * 128 * 9 + 2 * 128) - 2 * (96 * 96 + 96) + (128 - 96) * 128 * 9
    assert num_params(authors) - num_params(ours) == difference == 350_784
    # CondInst's mask branch: 3 level convs, 4 tower convs of 128 with BN, a 1x1 conv to 8.
    assert num_params(authors) == 3 * (96 * 128 * 9 + 256) + 4 * (128 * 128 * 9 + 256) + 1032
    assert num_params(authors) == 924_424
    for conv in [authors.finest_projection, *authors.coarse_projections]:
        assert isinstance(conv, Conv2d) and conv.kernel_size == (3, 3) and conv.bias is None
        assert isinstance(conv.norm, torch.nn.BatchNorm2d) and conv.out_channels == 128
    features = {f"p{i}": torch.rand(2, 96, 256 // 2**i, 192 // 2**i) for i in (3, 4, 5)}
    assert authors(features).shape == (2, 8, 32, 24)


def test_default_mask_branch_keeps_its_state_dict_keys():
    # Checkpoints trained before the switch existed still load.
    keys = {k.split(".")[0] for k in mask_branch("1x1_linear").state_dict()}
    assert keys == {"coarse_projections", "tower"}


# ---------------------------------------------------------------- box regression scale


def test_box_reg_scale_exists_per_level_and_starts_at_one():
    plain, scaled = build_losnet(), build_losnet("MODEL.LOSNET.BOX_REG_SCALE", True)
    assert plain.head.box_scales is None
    assert [s.scale.item() for s in scaled.head.box_scales] == [1.0, 1.0, 1.0]
    assert num_params(scaled) - num_params(plain) == 3
    five_levels = build_losnet(
        "MODEL.LOSNET.BOX_REG_SCALE", True,
        "MODEL.LIGHTWEIGHT_FPN.TOP_LEVELS", 2,
        "MODEL.LOSNET.IN_FEATURES", ["p3", "p4", "p5", "p6", "p7"],
    )  # fmt: skip
    assert len(five_levels.head.box_scales) == 5


def test_box_reg_scale_multiplies_the_distances_in_strides_before_their_relu():
    plain, scaled = build_losnet(), build_losnet("MODEL.LOSNET.BOX_REG_SCALE", True)
    missing = scaled.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == [f"head.box_scales.{level}.scale" for level in range(3)]
    values = (2.0, -1.0, 0.5)
    with torch.no_grad():
        for scale, value in zip(scaled.head.box_scales, values, strict=True):
            scale.scale.fill_(value)
    features = [torch.rand(1, 96, 16 // 2**i, 16 // 2**i) for i in range(3)]
    with torch.no_grad():
        plain_deltas = plain.eval().head(features)[1]
        scaled_deltas = scaled.eval().head(features)[1]
    for level, value in enumerate(values):
        torch.testing.assert_close(scaled_deltas[level], value * plain_deltas[level])
    # Decoding (FCOS's linear transform) takes the ReLU of the scaled output, then multiplies
    # by the stride: the authors' relu(scale x output) x stride. P4, stride 16, scale -1.
    anchors = anchors_of(scaled, 128, 128)[1].tensor[:1]  # (1, 4), centre (8, 8)
    deltas = torch.tensor([[-1.0, 0.5, 2.0, -3.0]])
    boxes = scaled.box2box_transform.apply_deltas(-1.0 * deltas, anchors)
    torch.testing.assert_close(boxes, torch.tensor([[8.0 - 16, 8.0, 8.0, 8.0 + 48]]))


def three_level_batch():
    """A 320 x 320 image whose objects are matched on P3, P4 and P5."""
    return [
        {
            "image": torch.rand(3, 320, 320, generator=torch.Generator().manual_seed(0)) * 255,
            "instances": rectangle_instances(
                320, 320, [(10, 10, 50, 50), (60, 60, 220, 220), (0, 0, 320, 300)]
            ),
        }
    ]


def test_box_reg_scales_receive_gradients_on_every_level():
    model = build_losnet("MODEL.LOSNET.BOX_REG_SCALE", True)
    batch = three_level_batch()
    anchors = anchors_of(model, 320, 320)
    _, _, matched = model.label_anchors(anchors, [batch[0]["instances"]])
    levels = torch.repeat_interleave(torch.arange(3), torch.tensor([len(a) for a in anchors]))
    assert set(levels[matched[0] >= 0].tolist()) == {0, 1, 2}
    losses, _ = train_step_losses(model, batch)
    losses["loss_box_giou"].backward()
    for scale in model.head.box_scales:
        assert scale.scale.grad is not None and scale.scale.grad.abs() > 0


# ---------------------------------------------------------------- centre sampling


def test_box_centre_sampling_is_detectron2s_fcos_rule():
    model = build_losnet()
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(40, 2, generator=generator) * 300
    sizes = torch.rand(40, 2, generator=generator) * 300 + 1
    boxes = Boxes(torch.cat([corners, corners + sizes], dim=1))
    anchors = anchors_of(model, 320, 320)
    expected = FCOS._match_anchors(model, boxes, anchors)
    assert expected.count_nonzero() > 100
    assert torch.equal(model.match_anchors(boxes, boxes.get_centers(), anchors), expected)


def l_shaped_instance():
    """
    In a 64 x 64 image: a column x in [0, 16), y in [0, 48) and a foot x in [0, 48),
    y in [32, 48); box (0, 0, 48, 48), centre (24, 24). Centre of mass (pixel centres at
    +0.5): area 768 + 512 = 1280, x = (768 * 8 + 512 * 32) / 1280 = 17.6,
    y = (768 * 24 + 512 * 40) / 1280 = 30.4.
    """
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 0:48, 0:16] = True
    mask[0, 32:48, 0:48] = True
    instances = Instances((64, 64), gt_masks=BitMasks(mask))
    instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
    instances.gt_classes = torch.zeros(1, dtype=torch.long)
    return instances


@pytest.mark.parametrize(
    "around, xs, ys",
    [
        # P3 points (8j + 4) within 1.5 x 8 = 12 px (strictly) of x = 24 and of y = 24.
        ("box_center", (20, 28), (20, 28)),
        # ... of x = 17.6: (5.6, 29.6); of y = 30.4: (18.4, 42.4). The object is too small for
        # P4 and P5 (their range starts at 64 px).
        ("mask_centroid", (12, 20, 28), (20, 28, 36)),
    ],
)
def test_centre_sampling_around_the_mask_centroid_of_an_l_shape(around, xs, ys):
    model = build_losnet("MODEL.LOSNET.CENTER_SAMPLING_AROUND", around)
    instances = l_shaped_instance()
    expected_center = [24.0, 24.0] if around == "box_center" else [17.6, 30.4]
    torch.testing.assert_close(model._sampling_centers(instances), torch.tensor([expected_center]))
    anchors = anchors_of(model, 64, 64)
    _, _, matched = model.label_anchors(anchors, [instances])
    positives = Boxes.cat(anchors).get_centers()[matched[0] >= 0]
    assert sorted(map(tuple, positives.tolist())) == [(x, y) for x in xs for y in ys]


def test_mask_centroid_of_a_rectangle_is_its_box_centre():
    by_box = build_losnet()
    by_mask = build_losnet("MODEL.LOSNET.CENTER_SAMPLING_AROUND", "mask_centroid")
    instances = [b["instances"] for b in training_batch()]
    anchors = anchors_of(by_box, 96, 128)
    labels = by_box.label_anchors(anchors, instances)
    for ours, theirs in zip(labels, by_mask.label_anchors(anchors, instances), strict=True):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


# ---------------------------------------------------------------- mask-positive quota


def test_quota_always_keeps_the_authors_count_below_the_cap():
    # 60 positives (< 64) of 3 instances: 30, 25 and 5; a higher index scores higher.
    gt = torch.tensor([0] * 30 + [1] * 25 + [2] * 5)
    scores = torch.arange(60) / 100
    assert select_mask_positives(gt, scores, cap=64).tolist() == list(range(60))
    # The authors' quota: 64 // 3 = 21 best of each instance, all 5 of the third; 47 in all.
    chosen = select_mask_positives(gt, scores, cap=64, quota="always")
    assert sorted(chosen.tolist()) == [*range(9, 30), *range(34, 55), *range(55, 60)]
    # More instances than the cap: each keeps its best one, none dropped (3 > cap = 2).
    gt = torch.tensor([0, 0, 0, 1, 1, 2, 0, 1])
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4])
    assert sorted(select_mask_positives(gt, scores, cap=2, quota="always").tolist()) == [1, 4, 5]


def test_quota_always_reaches_the_mask_loss():
    batch = training_batch()[:1]
    model = build_losnet()
    _, _, matched = model.label_anchors(anchors_of(model, 96, 128), [batch[0]["instances"]])
    counts = torch.unique(matched[0][matched[0] >= 0], return_counts=True)[1].tolist()
    cap = sum(counts)  # the default keeps every positive of an image within the cap
    quota = cap // len(counts)
    authors = sum(min(count, quota) for count in counts)
    assert authors < cap
    for mode, expected in (("over_cap", cap), ("always", authors)):
        model = build_losnet(
            "MODEL.LOSNET.MASK_POSITIVES_PER_IMAGE", cap, "MODEL.LOSNET.MASK_POSITIVES_QUOTA", mode
        )
        _, storage = train_step_losses(model, batch)
        assert storage.latest()["losnet/num_mask_positives"][0] == expected


# ---------------------------------------------------------------- all together


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("MODEL.LOSNET.BOX_REG_SCALE", "yes", "False, True"),
        ("MODEL.LOSNET.BOX_REG_SCALE", 1, "False, True"),
        ("MODEL.LOSNET.CENTER_SAMPLING_AROUND", "box", "'box_center', 'mask_centroid'"),
        ("MODEL.LOSNET.MASK_POSITIVES_QUOTA", "sometimes", "'over_cap', 'always'"),
        ("MODEL.LOSNET.MASK_BRANCH.LEVEL_CONVS", "3x3", "'1x1_linear', '3x3_norm_relu'"),
    ],
)
def test_switches_are_validated_naming_key_and_allowed_values(key, value, allowed):
    cfg = losnet_cfg()
    *parents, leaf = key.split(".")
    node = cfg
    for name in parents:
        node = node[name]
    node[leaf] = value  # set directly: a yacs merge would already refuse a non-bool
    with pytest.raises(ValueError, match=re.escape(f"{key}={value!r}: use one of {allowed}")):
        build_model(cfg)


def test_authors_config_parameter_count():
    model = build_losnet(config_file=AUTHORS_CONFIG)
    # MobileNetV3-Small features, 1x1 laterals, cls and box towers (2 convs, BN per level),
    # predictors with 1 class and the 3 scales, the controller on the box tower, CondInst's mask
    # branch. The authors' model adds 79 class logits and a bias before each tower BN.
    backbone = 927_008
    laterals = (24 + 48 + 576) * 96 + 3 * 96
    towers = 2 * 2 * (96 * 96 * 9 + 3 * 2 * 96)
    predictors = (96 * 9 + 1) + (96 * 4 * 9 + 4) + (96 * 9 + 1) + 3
    controller = 96 * 169 * 9 + 169
    mask_branch = 924_424
    expected = backbone + laterals + towers + predictors + controller + mask_branch
    assert num_params(model) == expected == 2_399_386
    assert expected + 79 * (96 * 9 + 1) + 4 * 96 == 2_468_105  # the authors' 2.47 M


def test_authors_config_trains_with_every_parameter_and_folds():
    model = build_losnet("MODEL.LOSNET.SCORE_THRESH_TEST", 0.0, config_file=AUTHORS_CONFIG)
    losses, _ = train_step_losses(model, training_batch())
    assert all(math.isfinite(v.item()) for v in losses.values()) and losses["loss_mask"] > 0
    sum(losses.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []

    # Every BN follows a conv that a generic folder handles: Detectron2 Conv2d(norm=BN) (the
    # new mask-branch convs), conv-BN in a Sequential (the backbone), or a head tower.
    folded = fold_batch_norms(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, LevelTower) for m in folded.modules())
    image = torch.rand(3, 96, 128) * 255
    with torch.no_grad():
        expected = model.eval()([{"image": image}])[0]["instances"]
        actual = folded([{"image": image}])[0]["instances"]
    torch.testing.assert_close(actual.scores, expected.scores, atol=1e-5, rtol=0)
    assert (actual.pred_masks != expected.pred_masks).float().mean() < 1e-3
