"""The Mask IoU branch: sizes of section 3.2, targets on hand-made masks, the loss."""

import math

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, PolygonMasks
from sbrcnn_testing import sbrcnn_cfg, targets

from sbrcnn import MaskIoUHead, build_maskiou_head, mask_iou_loss, mask_iou_targets

MASK_ROI = ShapeSpec(channels=256, height=14, width=14)


@pytest.mark.parametrize(
    "l2c, layout, paper_millions",
    [("", "paper", 16.3), ("7x7", "paper", 4.6), ("7x3_3x7", "paper", 5.1)],
)
def test_branch_sizes_of_section_3_2(l2c, layout, paper_millions):
    cfg = sbrcnn_cfg(
        "MODEL.ROI_HEADS.NUM_CLASSES", 80, "MODEL.SBRCNN.MASKIOU.CONV_DIM", 256,
        "MODEL.SBRCNN.MASKIOU.FC_DIM", 1024, "MODEL.SBRCNN.MASKIOU.L2C_CONV_DIMS", "[128, 64]",
        "MODEL.SBRCNN.MASKIOU.L2C", l2c, "MODEL.SBRCNN.MASKIOU.RECT_LAYOUT", layout,
    )  # fmt: skip
    head = build_maskiou_head(cfg, MASK_ROI)
    params = sum(p.numel() for p in head.parameters())
    # The paper truncates to 0.1 M: "from 16.3M to 4.6M, 5.1M".
    assert math.floor(params / 1e5) / 10 == paper_millions


@pytest.mark.parametrize("l2c", ["", "7x7"])
def test_branch_output_per_class(l2c):
    head = MaskIoUHead(
        ShapeSpec(channels=8, height=14, width=14), num_classes=3, conv_dims=(8, 8),
        fc_dims=(16, 16), l2c=l2c, l2c_kwargs={"conv_dims": (4, 4), "nl_before": True},
    )  # fmt: skip
    assert head(torch.randn(5, 8, 14, 14), torch.randn(5, 1, 28, 28)).shape == (5, 3)
    assert head(torch.randn(0, 8, 14, 14), torch.randn(0, 1, 28, 28)).shape == (0, 3)


def _foreground(gt_masks, boxes):
    """Foreground RoIs of one 40 x 40 image, all matched to its one ground-truth object."""
    instances = targets(40, 40, [(0, 0, 20, 10)])
    instances = instances[[0] * len(boxes)]
    instances.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    if gt_masks is not None:
        instances.gt_masks = gt_masks
    return [instances]


def _logits():
    """(2, 10, 10): RoI 0 predicts its left half; RoI 1 its top half (the object exactly)."""
    logits = torch.full((2, 10, 10), -5.0)
    logits[0, :, :5] = 5.0
    logits[1, :5, :] = 5.0
    return logits


@pytest.mark.parametrize("polygons", [False, True], ids=["bitmasks", "polygons"])
def test_targets_are_the_iou_with_the_whole_ground_truth(polygons):
    # The object is the 20 x 10 rectangle at the top left, 200 px. RoI 0 is its left square
    # (0, 0, 10, 10) and predicts that square's left half, 5 x 10 = 50 px: IoU 50 / 200. RoI 1,
    # (0, 0, 20, 20), predicts its top half, the whole object: IoU 1.
    gt = PolygonMasks([[[0, 0, 20, 0, 20, 10, 0, 10]]] * 2) if polygons else None
    instances = _foreground(gt, [(0, 0, 10, 10), (0, 0, 20, 20)])
    iou = mask_iou_targets(_logits(), instances, logit_thresh=0.5)
    torch.testing.assert_close(iou, torch.tensor([0.25, 1.0]))


def test_target_threshold_applies_to_logits():
    instances = _foreground(None, [(0, 0, 20, 20)])
    logits = _logits()[1:] * 0.0 + 0.3  # probability 0.57 everywhere
    # Above 0.0 everything is predicted (400 px of the 20 x 20 RoI): IoU 200 / 400.
    assert mask_iou_targets(logits, instances, logit_thresh=0.0).tolist() == [0.5]
    # Above the authors' 0.5 nothing is: IoU 0.
    assert mask_iou_targets(logits, instances, logit_thresh=0.5).tolist() == [0.0]


def test_targets_of_degenerate_rois_and_no_roi_are_finite():
    instances = _foreground(None, [(5, 5, 5, 5)])
    assert mask_iou_targets(torch.zeros(1, 10, 10), instances).tolist() == [0.0]
    empty = _foreground(None, [])
    assert mask_iou_targets(torch.zeros(0, 10, 10), empty).shape == (0,)


def test_loss_is_the_mse_over_positive_targets():
    pred = torch.tensor([[0.1, 0.9], [0.4, 0.2], [0.7, 0.7]], requires_grad=True)
    classes = torch.tensor([1, 0, 1])
    iou = torch.tensor([0.5, 0.0, 1.0])
    loss = mask_iou_loss(pred, classes, iou, weight=0.5)["loss_maskiou"]
    # RoI 1 has target 0: left out.
    expected = 0.5 * ((0.9 - 0.5) ** 2 + (0.7 - 1.0) ** 2) / 2
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert pred.grad[1].abs().sum() == 0


def test_loss_without_positive_is_zero_and_connected():
    pred = torch.zeros(2, 3, requires_grad=True)
    loss = mask_iou_loss(pred, torch.tensor([0, 2]), torch.zeros(2), weight=0.5)["loss_maskiou"]
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None
