"""Pasting LosNet's mask logits over boxes against pasting them over the whole image."""

import pytest
import torch

from losnet.mask_paste import PASTE_REGIONS, paste_masks

STRIDE = 2


def random_detections(count, input_size, output_size, seed=0):
    """Smooth random logits over the padded input and boxes (output pixels) of every shape."""
    generator = torch.Generator().manual_seed(seed)
    mask_size = (-(-input_size[0] // 32) * 32 // STRIDE, -(-input_size[1] // 32) * 32 // STRIDE)
    coarse = torch.randn((count, 1, mask_size[0] // 4, mask_size[1] // 4), generator=generator)
    logits = torch.nn.functional.interpolate(coarse * 4, size=mask_size, mode="bilinear")[:, 0]
    height, width = output_size
    corners = torch.rand((count, 2, 2), generator=generator) * torch.tensor([width, height])
    boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)
    # Degenerate and border cases: a point box, a box on the right edge, the whole image.
    boxes[0] = torch.tensor([10.0, 10.0, 10.0, 10.0])
    boxes[1] = torch.tensor([width, 0.0, width, height / 2])
    boxes[2] = torch.tensor([0.0, 0.0, width, height])
    return logits, boxes


def inside_widened_boxes(boxes, output_size, input_size):
    """(R, H, W) pixels whose centre lies within each box widened by one mask cell."""
    margin_x = STRIDE * output_size[1] / input_size[1]
    margin_y = STRIDE * output_size[0] / input_size[0]
    ys = torch.arange(output_size[0])[None, :, None]
    xs = torch.arange(output_size[1])[None, None, :]
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    return (
        (xs >= (x0 - margin_x).floor())
        & (xs < (x1 + margin_x).ceil())
        & (ys >= (y0 - margin_y).floor())
        & (ys < (y1 + margin_y).ceil())
    )


@pytest.mark.parametrize(
    "input_size, output_size",
    [((96, 128), (96, 128)), ((90, 120), (225, 300)), ((130, 100), (65, 50))],
)
def test_box_pasting_is_image_pasting_cut_to_the_widened_boxes(input_size, output_size):
    logits, boxes = random_detections(12, input_size, output_size)
    over_image = paste_masks(logits, boxes, STRIDE, input_size, output_size, region="image")
    over_boxes = paste_masks(logits, boxes, STRIDE, input_size, output_size, region="box")
    assert over_boxes.shape == over_image.shape == (12, *output_size)
    inside = inside_widened_boxes(boxes, output_size, input_size)
    assert not (over_boxes & ~inside).any()
    # One bilinear sample from the mask instead of an upsampling followed by a resize: equal at
    # the network's input size, a few pixels on the contours apart when resized.
    differing = (over_boxes != over_image)[inside].float().mean()
    assert differing == 0 if input_size == output_size else differing < 0.02
    # The whole-image box keeps its whole mask.
    assert torch.equal(over_boxes[2], over_image[2]) if input_size == output_size else True


def test_box_pasting_fills_exactly_the_widened_box_of_a_full_mask():
    input_size = output_size = (64, 96)
    logits = torch.full((3, 32, 48), 5.0)
    boxes = torch.tensor([[10.2, 20.7, 30.0, 41.5], [0.0, 0.0, 0.0, 0.0], [90.5, 60.0, 96.0, 64.0]])
    masks = paste_masks(logits, boxes, STRIDE, input_size, output_size, region="box")
    assert torch.equal(masks, inside_widened_boxes(boxes, output_size, input_size))
    assert masks[0, 18:44, 8:32].all() and masks[0].sum() == 26 * 24


def test_no_detections_give_no_masks():
    for region in ("box", "image"):
        masks = paste_masks(
            torch.zeros((0, 16, 16)), torch.zeros((0, 4)), STRIDE, (32, 32), (40, 40), region
        )
        assert masks.shape == (0, 40, 40) and masks.dtype == torch.bool


def test_traced_box_pasting_equals_eager():
    input_size, output_size = (90, 120), (180, 240)
    logits, boxes = random_detections(7, input_size, output_size, seed=3)

    def paste(logits, boxes):
        return paste_masks(logits, boxes, STRIDE, input_size, output_size, region="box")

    traced = torch.jit.trace(paste, (logits, boxes), check_trace=False)
    other_logits, other_boxes = random_detections(4, input_size, output_size, seed=4)
    for args in ((logits, boxes), (other_logits, other_boxes)):
        assert torch.equal(traced(*args), paste(*args))


@pytest.mark.parametrize("region", PASTE_REGIONS)
@pytest.mark.parametrize(
    "input_size, output_size",
    [((96, 128), (96, 128)), ((90, 120), (225, 300)), ((130, 100), (65, 50))],
)
def test_upsampling_where_pasting_equals_pasting_the_upsampled_logits(
    region, input_size, output_size
):
    # Rough coarse logits (every cell independent) and boxes on every border: the crop that is
    # upsampled must hold every coarse cell the whole-mask upsampling reads there.
    _, boxes = random_detections(12, input_size, output_size, seed=5)
    mask_size = (-(-input_size[0] // 32) * 32 // STRIDE, -(-input_size[1] // 32) * 32 // STRIDE)
    coarse = 6 * torch.randn((12, mask_size[0] // 4, mask_size[1] // 4))
    upsampled = torch.nn.functional.interpolate(
        coarse[:, None], scale_factor=4, mode="bilinear", align_corners=False
    )[:, 0]
    expected = paste_masks(upsampled, boxes, STRIDE, input_size, output_size, region)
    pasted = paste_masks(coarse, boxes, 4 * STRIDE, input_size, output_size, region, upsample=4)
    assert expected.any() and torch.equal(pasted, expected)
    if region == "box":
        traced = torch.jit.trace(
            lambda logits, boxes: paste_masks(
                logits, boxes, 4 * STRIDE, input_size, output_size, region, upsample=4
            ),
            (coarse, boxes),
            check_trace=False,
        )
        assert torch.equal(traced(coarse, boxes), expected)
