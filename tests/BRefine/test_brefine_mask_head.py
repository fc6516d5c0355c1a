"""The multistage fusion mask head, the residual-aware module, the boundary region, mask losses."""

import numpy as np
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.structures import BitMasks, Boxes, Instances
from scipy import ndimage

from brefine import (
    BRefineMaskHead,
    ResidualAwareModule,
    boundary_region,
    brefine_mask_loss,
    erosion_iterations,
)

STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}


def build_head(channels=(16, 8, 4), **kwargs):
    torch.manual_seed(0)
    shapes = {f: ShapeSpec(channels=12, stride=s) for f, s in STRIDES.items()}
    options = dict(
        in_features=list(STRIDES),
        detail_feature="p2",
        num_classes=3,
        channels=channels,
        pooler_resolution=14,
        pooler_sampling_ratio=0,
        pooler_type="ROIAlignV2",
    )
    options.update(kwargs)
    return BRefineMaskHead(shapes, **options)


def features(height=64, width=96):
    generator = torch.Generator().manual_seed(0)
    return {
        f: torch.randn(2, 12, height // s, width // s, generator=generator)
        for f, s in STRIDES.items()
    }


BOXES = [Boxes(torch.tensor([[4.0, 6, 40, 50], [10, 10, 10.5, 10.2]])), Boxes(torch.zeros(0, 4))]


@pytest.mark.parametrize("stages, side", [(1, 14), (2, 28), (3, 56)])
def test_output_side_doubles_per_stage(stages, side):
    head = build_head(channels=(16, 8, 4)[:stages])
    assert head.layers(features(), BOXES).shape == (2, 3, side, side)


def test_class_agnostic_and_concat_fusion():
    head = build_head(num_classes=1, fusion="concat")
    assert head.layers(features(), BOXES).shape == (2, 1, 56, 56)


def test_every_parameter_receives_gradient():
    for options in ({}, {"fusion": "concat"}, {"ram_dilations": (1,), "ram_residual": False}):
        head = build_head(**options)
        head.layers(features(), BOXES).square().sum().backward()
        for name, parameter in head.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, (options, name)


def test_no_region_gives_empty_logits_connected_to_every_parameter():
    head = build_head()
    logits = head.layers(features(), [Boxes(torch.zeros(0, 4))] * 2)
    assert logits.shape == (0, 3, 56, 56)
    logits.sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_residual_aware_module_layout_and_parameters():
    ram = ResidualAwareModule(256, dilations=(1, 2, 3), residual=True)
    # 1x1 256 -> 128, three 3x3 128 -> 128, 1x1 128 -> 256, each with a bias.
    expected = (256 * 128 + 128) + 3 * (9 * 128 * 128 + 128) + (128 * 256 + 256)
    assert _count(ram) == expected
    assert [b.dilation for b in ram.branches] == [(1, 1), (2, 2), (3, 3)]
    x = torch.randn(2, 256, 14, 14)
    assert ram(x).shape == x.shape
    # The residual branch adds the halved features to the branches' sum.
    without = ResidualAwareModule(256, dilations=(1, 2, 3), residual=False)
    without.load_state_dict(ram.state_dict())
    halved = ram.reduce(x)
    summed = sum(branch(halved) for branch in ram.branches)
    torch.testing.assert_close(ram(x), ram.restore(summed + halved))
    torch.testing.assert_close(without(x), ram.restore(summed))


def test_paper_sized_head_parameters_per_stage():
    """Table 3 lists 1.0 M / 2.0 M / 4.1 M; ours, with widths 256 / 128 / 64 and 80 classes."""
    shapes = {f: ShapeSpec(channels=256, stride=s) for f, s in STRIDES.items()}
    common = dict(
        in_features=list(STRIDES),
        detail_feature="p2",
        num_classes=80,
        pooler_resolution=14,
        pooler_sampling_ratio=0,
        pooler_type="ROIAlignV2",
    )
    counts = [
        _count(BRefineMaskHead(shapes, channels=(256, 128, 64)[:n], **common)) for n in (1, 2, 3)
    ]
    assert counts == [1_119_312, 1_564_368, 1_746_960]


def test_bad_head_settings_are_named():
    with pytest.raises(ValueError, match="MODEL.BREFINE.MASK_HEAD.FUSION = 'max'"):
        build_head(fusion="max")
    with pytest.raises(ValueError, match="RAM_RESIDUAL = True needs RAM_DILATIONS"):
        build_head(ram_dilations=(), ram_residual=True)
    head = build_head(ram_dilations=(), ram_residual=False)  # no RAM at all
    assert head.layers(features(), BOXES).shape == (2, 3, 56, 56)


def test_erosion_iterations_follow_the_target_size():
    assert [erosion_iterations(side, 0.02) for side in (14, 28, 56, 112)] == [1, 1, 2, 3]


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_boundary_is_exactly_the_mask_minus_its_erosion(iterations):
    generator = np.random.default_rng(iterations)
    masks = np.zeros((4, 28, 28), dtype=bool)
    masks[0, 5:20, 3:25] = True  # a rectangle
    masks[1] = generator.random((28, 28)) > 0.4  # ragged
    masks[2, 0:10, 0:28] = True  # touching the target's edges
    masks[3, 14, 14] = True  # a single pixel: eroded to nothing
    boundary = boundary_region(torch.as_tensor(masks, dtype=torch.float32), iterations)
    for mask, band in zip(masks, boundary.numpy(), strict=True):
        eroded = ndimage.binary_erosion(
            mask, np.ones((3, 3)), iterations=iterations, border_value=0
        )
        np.testing.assert_array_equal(band, (mask & ~eroded).astype(np.float32))
    assert boundary[3].sum() == 1


def mask_instances(masks, boxes, classes):
    instances = Instances((64, 64))
    instances.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    instances.gt_masks = BitMasks(torch.as_tensor(np.array(masks, dtype=bool)))
    instances.gt_classes = torch.tensor(classes)
    return instances


def square_instances():
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:48, 16:48] = True
    return mask_instances([mask, mask], [[16, 16, 48, 48], [8, 8, 56, 56]], [1, 0])


def test_boundary_weights_fall_on_the_boundary_pixels_only():
    """(1 + lambda B) CE: with logits 0 everywhere, each pixel's CE is log 2."""
    instances = square_instances()
    logits = torch.zeros(2, 2, 28, 28)
    plain = brefine_mask_loss(logits, [instances], boundary_weight=0.0)
    weighted = brefine_mask_loss(logits, [instances], boundary_weight=1.0)
    assert plain.item() == pytest.approx(np.log(2))
    targets = instances.gt_masks.crop_and_resize(instances.proposal_boxes.tensor, 28).float()
    fraction = boundary_region(targets, 1).mean()
    assert weighted.item() == pytest.approx(np.log(2) * (1 + fraction.item()), rel=1e-6)


def test_mask_loss_selects_the_ground_truth_class_and_weights_regions():
    instances = square_instances()
    logits = torch.zeros(2, 2, 28, 28, requires_grad=True)
    loss = brefine_mask_loss(
        logits, [instances], boundary_weight=0.0, weights=torch.tensor([1.0, 0.0])
    )
    loss.backward()
    assert logits.grad[0, 1].abs().sum() > 0  # region 0, class 1
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[1].abs().sum() == 0


@pytest.mark.parametrize("loss_type", ["ce", "dice", "focal", "ce_dice"])
def test_every_mask_loss_is_finite_on_degenerate_regions(loss_type):
    empty, single = np.zeros((64, 64), dtype=bool), np.zeros((64, 64), dtype=bool)
    single[30, 30] = True
    instances = mask_instances(
        [empty, single, single],
        [[0, 0, 0.3, 0.2], [29.8, 29.9, 30.1, 30.2], [0, 0, 64, 64]],
        [0] * 3,
    )
    logits = torch.randn(3, 1, 56, 56, requires_grad=True)
    boundary = 0.0 if loss_type == "dice" else 1.0
    loss = brefine_mask_loss(logits, [instances], loss_type=loss_type, boundary_weight=boundary)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_no_region_gives_zero_loss_connected_to_the_logits():
    logits = torch.zeros(0, 1, 56, 56, requires_grad=True)
    loss = brefine_mask_loss(logits, [mask_instances(np.zeros((0, 64, 64)), np.zeros((0, 4)), [])])
    loss.backward()
    assert loss.item() == 0 and logits.grad is not None
