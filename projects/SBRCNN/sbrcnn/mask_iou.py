"""
The Mask IoU branch of Mask Scoring R-CNN (Huang et al., CVPR 2019), original and with L2C
(SBR-CNN, section 3.2, Table 7), with its targets and loss.
"""

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, cat
from detectron2.structures import BitMasks, Instances
from detectron2.utils.registry import Registry
from torch import nn
from torch.nn import functional as F

from .config import check_choice
from .fcc import L2C, L2C_KERNELS, RECT_LAYOUTS

__all__ = [
    "ROI_MASKIOU_HEAD_REGISTRY",
    "MaskIoUHead",
    "build_maskiou_head",
    "mask_iou_loss",
    "mask_iou_targets",
]

ROI_MASKIOU_HEAD_REGISTRY = Registry("ROI_MASKIOU_HEAD")
ROI_MASKIOU_HEAD_REGISTRY.__doc__ = """
Registry for mask IoU heads, which predict the IoU of each predicted mask with its ground truth
from the RoI features and that mask. Called with `obj(cfg, input_shape)`.
"""


@ROI_MASKIOU_HEAD_REGISTRY.register()
class MaskIoUHead(nn.Module):
    """
    Predicts, per class, the IoU of a RoI's mask with its ground truth: the RoI features and
    the max-pooled mask probabilities, concatenated, pass NUM_CONV 3x3 convs (the last with
    stride 2), then either two FC layers (the original) or L2C (FCC), then a linear layer to
    the K classes.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        conv_dims=(256, 256, 256, 256),
        fc_dims=(1024, 1024),
        l2c: str = "",
        l2c_kwargs=None,
    ):
        """
        Args:
            input_shape: the (C, S, S) RoI features of the mask head; masks are (2S, 2S).
            num_classes: K.
            conv_dims: output channels of the 3x3 convs; the last one has stride 2.
            fc_dims: the FC layers of the original branch (l2c "").
            l2c: "" (FC layers) or one of L2C_KERNELS.
            l2c_kwargs: keyword arguments of :class:`L2C` (conv_dims, rect_layout, nl_*).
        """
        super().__init__()
        channels, size = input_shape.channels + 1, input_shape.height
        self.convs = nn.Sequential()
        for index, conv_dim in enumerate(conv_dims):
            stride = 2 if index == len(conv_dims) - 1 else 1
            conv = Conv2d(channels, conv_dim, 3, stride, padding=1, activation=nn.ReLU())
            weight_init.c2_msra_fill(conv)
            self.convs.add_module(f"conv{index + 1}", conv)
            channels = conv_dim
        size = (size + 1) // 2
        layers = [nn.Flatten()]
        if l2c:
            self.l2c = L2C(channels, kernels=l2c, **(l2c_kwargs or {}))
            features = self.l2c.out_channels * size * size
        else:
            self.l2c = None
            features = channels * size * size
            for fc_dim in fc_dims:
                fc = nn.Linear(features, fc_dim)
                weight_init.c2_xavier_fill(fc)
                layers += [fc, nn.ReLU()]
                features = fc_dim
        self.fcs = nn.Sequential(*layers)
        self.predictor = nn.Linear(features, num_classes)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    @classmethod
    def from_config(cls, cfg, input_shape):
        node = cfg.MODEL.SBRCNN.MASKIOU
        if node.L2C:
            check_choice("MODEL.SBRCNN.MASKIOU.L2C", node.L2C, ("", *L2C_KERNELS))
        check_choice("MODEL.SBRCNN.MASKIOU.RECT_LAYOUT", node.RECT_LAYOUT, RECT_LAYOUTS)
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "conv_dims": (node.CONV_DIM,) * node.NUM_CONV,
            "fc_dims": (node.FC_DIM,) * 2,
            "l2c": node.L2C,
            "l2c_kwargs": {
                "conv_dims": tuple(node.L2C_CONV_DIMS),
                "rect_layout": node.RECT_LAYOUT,
                "nl_before": node.NL_BEFORE,
                "nl_after": node.NL_AFTER,
                "nl_kernel": node.NL_KERNEL,
            },
        }

    def forward(self, features: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: (N, C, S, S) RoI features.
            mask_logits: (N, 1, 2S, 2S) mask logits of each RoI's class.

        Returns:
            (N, K) predicted mask IoU per class.
        """
        masks = F.max_pool2d(mask_logits.sigmoid(), kernel_size=2, stride=2)
        x = self.convs(torch.cat([features, masks], dim=1))
        if self.l2c is not None:
            x = self.l2c(x)
        return self.predictor(self.fcs(x))


def build_maskiou_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """The mask IoU head of MODEL.SBRCNN.MASKIOU; `input_shape` is the mask head's input."""
    return ROI_MASKIOU_HEAD_REGISTRY.get("MaskIoUHead")(cfg, input_shape)


def _mask_areas(gt_masks) -> torch.Tensor:
    """Areas in pixels of BitMasks (pixel count) or PolygonMasks (polygon area)."""
    if isinstance(gt_masks, BitMasks):
        return gt_masks.tensor.flatten(1).sum(dim=1).float()
    return gt_masks.area().float()


@torch.no_grad()
def mask_iou_targets(
    mask_logits: torch.Tensor, instances: list[Instances], logit_thresh: float = 0.5
) -> torch.Tensor:
    """
    The IoU of each predicted mask with its whole ground-truth mask, in the RoI's M x M grid.

    The prediction is the logits above `logit_thresh`. The ground truth inside the RoI is the
    target mask_rcnn_loss uses (its mask cropped and resized to M x M); the ground truth's
    full area, also the part outside the RoI, is its area in pixels times M^2 / (RoI area):
    what Mask Scoring R-CNN computes as (target area) / (fraction of the mask inside the RoI).

    Args:
        mask_logits: (R, M, M) logits of each foreground RoI's ground-truth class.
        instances: the images' foreground RoIs (R in all), with proposal_boxes and gt_masks.

    Returns:
        (R,) IoUs in [0, 1].
    """
    side = mask_logits.shape[-1]
    targets, areas, box_areas = [], [], []
    for instances_per_image in instances:
        if len(instances_per_image) == 0:
            continue
        boxes = instances_per_image.proposal_boxes
        gt_masks = instances_per_image.gt_masks
        targets.append(gt_masks.crop_and_resize(boxes.tensor, side).to(mask_logits.device))
        areas.append(_mask_areas(gt_masks).to(mask_logits.device))
        box_areas.append(boxes.area())
    if not targets:
        return mask_logits.new_zeros(0)
    targets, predicted = cat(targets).bool(), mask_logits > logit_thresh
    full_area = cat(areas) * side**2 / cat(box_areas).clamp(min=1e-6)
    overlap = (targets & predicted).flatten(1).sum(dim=1).float()
    union = predicted.flatten(1).sum(dim=1) + full_area - overlap
    return overlap / union.clamp(min=1e-6)


def mask_iou_loss(
    pred_iou: torch.Tensor, gt_classes: torch.Tensor, iou_targets: torch.Tensor, weight: float
) -> dict:
    """
    Mean squared error between each RoI's predicted IoU for its ground-truth class and its
    IoU target, over the RoIs whose target is above 0 (as Mask Scoring R-CNN).

    Args:
        pred_iou: (R, K) predicted IoUs.
        gt_classes: (R,) ground-truth classes in [0, K).
        iou_targets: (R,) from :func:`mask_iou_targets`.
        weight: the loss weight.

    Returns:
        {"loss_maskiou": scalar}; 0, still connected to `pred_iou`, without a positive target.
    """
    keep = iou_targets > 0
    if not keep.any():
        return {"loss_maskiou": pred_iou.sum() * 0.0}
    rows = torch.arange(len(gt_classes), device=pred_iou.device)
    pred = pred_iou[rows, gt_classes][keep]
    return {"loss_maskiou": weight * F.mse_loss(pred, iou_targets[keep])}
