"""LosNet end to end: losses, gradients, inference, edge cases and BN folding."""

import math

import pytest
import torch
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage

from segtools.batch_norm import fold_batch_norms

from helpers import build_losnet, rectangle_instances, training_batch


def train_step_losses(model, batch):
    model.train()
    with EventStorage():
        return model(batch)


@pytest.mark.parametrize(
    "opts",
    [
        [],
        ["MODEL.LOSNET.BOX_QUALITY", "iou", "MODEL.LOSNET.MASK_HEAD.OUT_STRIDE", 4],
        ["MODEL.LOSNET.CONTROLLER_INPUT", "box_tower", "MODEL.LOSNET.HEAD_NORM", "GN"],
        [
            "MODEL.LIGHTWEIGHT_FPN.TOP_LEVELS",
            2,
            "MODEL.LIGHTWEIGHT_FPN.OUTPUT_CONVS",
            True,
            "MODEL.LOSNET.IN_FEATURES",
            ["p3", "p4", "p5", "p6", "p7"],
        ],
        [
            "MODEL.LOSNET.BOX_REG_SCALE",
            True,
            "MODEL.LOSNET.CENTER_SAMPLING_AROUND",
            "mask_centroid",
            "MODEL.LOSNET.MASK_POSITIVES_QUOTA",
            "always",
            "MODEL.LOSNET.MASK_BRANCH.LEVEL_CONVS",
            "3x3_norm_relu",
        ],
    ],
    ids=["paper", "authors_quality_and_stride", "box_tower_gn", "p6p7_convs", "authors_switches"],
)
def test_losses_finite_and_every_parameter_gets_gradient(opts):
    model = build_losnet(*opts)
    losses = train_step_losses(model, training_batch())
    assert set(losses) == {"loss_cls", "loss_box_giou", "loss_quality", "loss_mask"}
    for name, value in losses.items():
        assert value.dim() == 0 and math.isfinite(value.item()), name
    assert losses["loss_mask"].item() > 0
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def visibility_batch(fractions):
    """The training batch, its first image's instances with visible `fractions`."""
    batch = training_batch()
    instances = batch[0]["instances"]
    instances.gt_visibility = torch.tensor(fractions, dtype=torch.float32)
    batch[1]["instances"].gt_visibility = torch.zeros(0)
    return batch


def test_visibility_is_learned_where_annotated():
    model = build_losnet("MODEL.LOSNET.VISIBILITY.ENABLED", True)
    losses = train_step_losses(model, visibility_batch([0.9, math.nan, 0.3]))
    assert set(losses) == {"loss_cls", "loss_box_giou", "loss_quality", "loss_mask",
                           "loss_visibility"}  # fmt: skip
    # At initialisation every logit is 0: BCE(0.5) against each annotated fraction.
    expected = [0.9, 0.3]
    bce = -sum(f * math.log(0.5) + (1 - f) * math.log(0.5) for f in expected) / len(expected)
    assert losses["loss_visibility"].item() == pytest.approx(bce, rel=0.05)
    sum(losses.values()).backward()
    assert model.head.visibility.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_visibility_without_annotations_costs_nothing_and_keeps_the_graph():
    model = build_losnet("MODEL.LOSNET.VISIBILITY.ENABLED", True)
    for batch in (training_batch(), visibility_batch([math.nan] * 3)):
        losses = train_step_losses(model, batch)
        assert losses["loss_visibility"].item() == 0
        model.zero_grad()
        sum(losses.values()).backward()
        assert model.head.visibility.weight.grad is not None


def test_visibility_is_predicted_per_detection():
    model = build_losnet(
        "MODEL.LOSNET.VISIBILITY.ENABLED", True, "MODEL.LOSNET.SCORE_THRESH_TEST", 0.0
    ).eval()
    torch.nn.init.constant_(model.head.visibility.bias, 1.0)
    with torch.no_grad():
        (output,) = model([{"image": torch.rand(3, 64, 96) * 255, "height": 128, "width": 192}])
    instances = output["instances"]
    assert len(instances) > 0 and instances.pred_visibility.shape == (len(instances),)
    # Weights start near 0 (std 0.01): the bias dominates.
    assert torch.allclose(instances.pred_visibility, torch.sigmoid(torch.tensor(1.0)), atol=0.05)
    assert (
        not build_losnet()
        .eval()([{"image": torch.rand(3, 64, 96) * 255}])[0]["instances"]
        .has("pred_visibility")
    )


def test_empty_batch_trains():
    model = build_losnet()
    batch = [{"image": torch.rand(3, 64, 64) * 255, "instances": rectangle_instances(64, 64, [])}]
    losses = train_step_losses(model, batch)
    assert losses["loss_box_giou"].item() == 0 and losses["loss_mask"].item() == 0
    assert losses["loss_cls"].item() > 0
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_image_smaller_than_the_largest_stride_trains_and_predicts():
    model = build_losnet("MODEL.LOSNET.SCORE_THRESH_TEST", 0.0)
    batch = [
        {
            "image": torch.rand(3, 20, 24) * 255,
            "instances": rectangle_instances(20, 24, [(2, 2, 18, 16), (10, 3, 11, 4)]),
        }
    ]
    losses = train_step_losses(model, batch)
    assert all(math.isfinite(v.item()) for v in losses.values())
    model.eval()
    with torch.no_grad():
        instances = model([{"image": torch.rand(3, 20, 24) * 255}])[0]["instances"]
    assert instances.pred_masks.shape[1:] == (20, 24)


def test_an_object_larger_than_every_level_range_gets_positives():
    model = build_losnet()
    image = torch.rand(3, 640, 640) * 255
    big = rectangle_instances(640, 640, [(0, 0, 640, 640)])
    anchors = model.anchor_generator([torch.zeros(1, 1, 640 // s, 640 // s) for s in (8, 16, 32)])
    labels, _, matched = model.label_anchors(anchors, [big])
    assert (matched[0] >= 0).sum() > 0
    assert train_step_losses(model, [{"image": image, "instances": big}])["loss_mask"] > 0


def test_inference_outputs_at_requested_size():
    model = build_losnet("MODEL.LOSNET.SCORE_THRESH_TEST", 0.0, "TEST.DETECTIONS_PER_IMAGE", 7)
    model.eval()
    with torch.no_grad():
        outputs = model(
            [
                {"image": torch.rand(3, 96, 128) * 255, "height": 192, "width": 256},
                {"image": torch.rand(3, 64, 64) * 255},
            ]
        )
    first, second = (o["instances"] for o in outputs)
    assert len(first) == len(second) == 7
    assert first.image_size == (192, 256) and first.pred_masks.shape == (7, 192, 256)
    assert first.pred_masks.dtype == torch.bool
    assert second.pred_masks.shape == (7, 64, 64)
    assert (first.pred_boxes.tensor[:, 2:] <= torch.tensor([256.0, 192.0])).all()
    assert (first.scores[:-1] >= first.scores[1:]).all()


def test_inference_on_empty_image_gives_empty_instances():
    model = build_losnet()  # untrained: nothing scores above the default threshold
    model.eval()
    with torch.no_grad():
        instances = model([{"image": torch.zeros(3, 64, 96), "height": 32, "width": 48}])[0][
            "instances"
        ]
    assert len(instances) == 0
    assert instances.image_size == (32, 48)
    assert instances.pred_masks.shape == (0, 32, 48)
    assert instances.pred_boxes.tensor.shape == (0, 4)


@pytest.mark.parametrize("stride", [2, 4])
def test_mask_targets_are_block_averages_of_the_padded_masks(stride):
    model = build_losnet("MODEL.LOSNET.MASK_HEAD.OUT_STRIDE", stride)
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand((5, 37, 50), generator=generator) > 0.6
    masks[0] = False  # an empty mask
    masks[1] = True  # a mask over the whole image, up to the padding
    instances = Instances((37, 50), gt_masks=BitMasks(masks))
    targets = model._mask_targets(instances, (64, 64))
    padded = torch.nn.functional.pad(masks.float(), (0, 14, 0, 27))
    expected = torch.nn.functional.avg_pool2d(padded[:, None], stride)[:, 0]
    assert targets.shape == (5, 64 // stride, 64 // stride)
    assert torch.equal(targets, expected)


def test_missing_masks_are_reported():
    model = build_losnet()
    batch = training_batch()[:1]
    batch[0]["instances"].remove("gt_masks")
    with pytest.raises(ValueError, match="MASK_ON"):
        train_step_losses(model, batch)


@pytest.mark.parametrize("head_norm", ["BN", "GN"])
def test_folded_batch_norms_give_equal_outputs(head_norm):
    model = build_losnet("MODEL.LOSNET.SCORE_THRESH_TEST", 0.0, "MODEL.LOSNET.HEAD_NORM", head_norm)
    # Train a step so the BN statistics are not the identity.
    train_step_losses(model, training_batch())
    model.eval()
    folded = fold_batch_norms(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # original intact
    images = torch.rand(1, 3, 96, 128) * 255
    with torch.no_grad():
        features = model.backbone((images - model.pixel_mean) / model.pixel_std)
        folded_features = folded.backbone((images - model.pixel_mean) / model.pixel_std)
        for name in features:
            torch.testing.assert_close(folded_features[name], features[name], atol=1e-5, rtol=0)
        head_out = model.head([features[f] for f in model.head_in_features])
        folded_head_out = folded.head([features[f] for f in model.head_in_features])
        for ours, theirs in zip(folded_head_out, head_out, strict=True):
            for a, b in zip(ours, theirs, strict=True):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        expected = model([{"image": images[0]}])[0]["instances"]
        actual = folded([{"image": images[0]}])[0]["instances"]
    torch.testing.assert_close(actual.scores, expected.scores, atol=1e-5, rtol=0)
    assert (actual.pred_masks != expected.pred_masks).float().mean() < 1e-3
