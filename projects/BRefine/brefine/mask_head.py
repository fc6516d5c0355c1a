"""
BRefine's multistage fusion mask head (section 3.1, Figures 4-5) and its mask losses (section
3.2: boundary-region cross-entropy, and the Dice / Focal / CE + Dice losses of Table 5).

Shape shorthand: R regions (boxes) of all images together, C channels, K mask classes (1 if
class-agnostic), M the mask side (14 x 2^(stages - 1)).
"""

import math

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, cat, get_norm
from detectron2.modeling import ROI_MASK_HEAD_REGISTRY
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.mask_head import (
    BaseMaskRCNNHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from fvcore.nn import sigmoid_focal_loss
from torch import nn
from torch.nn import functional as F

__all__ = [
    "MASK_LOSS_TYPES",
    "BRefineMaskHead",
    "ResidualAwareModule",
    "boundary_region",
    "brefine_mask_loss",
    "erosion_iterations",
]

MASK_LOSS_TYPES = ("ce", "dice", "focal", "ce_dice")


def _conv(in_channels, out_channels, kernel_size, norm, dilation=1):
    """A conv + norm + ReLU keeping the spatial size, MSRA-initialised."""
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        padding=dilation * (kernel_size // 2),
        dilation=dilation,
        bias=not norm,
        norm=get_norm(norm, out_channels),
        activation=nn.ReLU(),
    )
    weight_init.c2_msra_fill(conv)
    return conv


class ResidualAwareModule(nn.Module):
    """
    Figure 5: a 1x1 conv halves the channels, parallel 3x3 convs with the given dilations and
    (optionally) the halved features themselves are summed, and a 1x1 conv restores the
    channels. One dilation without the residual is Table 4's "1 single 3x3 conv".
    """

    def __init__(self, channels: int, dilations, residual: bool, norm: str = ""):
        super().__init__()
        if not dilations:
            raise ValueError("MODEL.BREFINE.MASK_HEAD.RAM_DILATIONS is empty: a RAM needs one")
        hidden = channels // 2
        self.reduce = _conv(channels, hidden, 1, norm)
        self.branches = nn.ModuleList(_conv(hidden, hidden, 3, norm, d) for d in dilations)
        self.residual = residual
        self.restore = _conv(hidden, channels, 1, norm)

    def forward(self, x):
        """(R, C, H, W) -> (R, C, H, W)."""
        x = self.reduce(x)
        summed = x if self.residual else 0
        for branch in self.branches:
            summed = summed + branch(x)
        return self.restore(summed)


class _Stage(nn.Module):
    """One stage: the auxiliary line's 3x3 conv on P2, fusion into the main line, the RAM."""

    def __init__(self, in_channels, detail_channels, channels, fusion, ram, norm):
        super().__init__()
        # A sum needs the main line at the stage's width: a 1x1 conv, before upsampling.
        resize = fusion == "sum" and in_channels != channels
        self.project = _conv(in_channels, channels, 1, norm) if resize else nn.Identity()
        self.detail_conv = _conv(detail_channels, channels, 3, norm)
        concat = fusion == "concat"
        self.fuse = _conv(in_channels + channels, channels, 1, norm) if concat else None
        self.ram = ResidualAwareModule(channels, **ram, norm=norm) if ram else nn.Identity()

    def forward(self, x, detail, upsample: bool):
        """
        Args:
            x: main-line features (R, C_in, S, S), S the stage's side (half of it to upsample).
            detail: P2 features pooled at the stage's side (R, C_P2, side, side).

        Returns:
            (R, C_stage, side, side).
        """
        x = self.project(x)
        if upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        detail = self.detail_conv(detail)
        x = x + detail if self.fuse is None else self.fuse(cat([x, detail], dim=1))
        return self.ram(x)


@ROI_MASK_HEAD_REGISTRY.register()
class BRefineMaskHead(BaseMaskRCNNHead):
    """
    Multistage fusion mask head. Main line: the usual 14x14 RoIAlign features from the FPN level
    assigned to each box. Stage s (resolution 14 x 2^s) fuses into it the auxiliary line, P2
    pooled at that resolution through a 3x3 conv, then runs a residual-aware module; bilinear x2
    upsampling between stages; a 1x1 predictor gives M x M mask logits (56 for 3 stages).

    It pools its inputs itself: :class:`StandardROIHeads` passes it the feature maps (set
    MODEL.ROI_MASK_HEAD.POOLER_TYPE to ""), and :meth:`layers` takes them with the boxes.
    """

    @configurable
    def __init__(
        self,
        input_shape: dict,
        *,
        in_features,
        detail_feature: str,
        num_classes: int,
        channels,
        pooler_resolution: int,
        pooler_sampling_ratio: int,
        pooler_type: str,
        fusion: str = "sum",
        ram_dilations=(1, 2, 3),
        ram_residual: bool = True,
        norm: str = "",
        **kwargs,
    ):
        """
        Args:
            input_shape: {feature name: ShapeSpec} of the feature maps.
            in_features: the FPN levels of the main line.
            detail_feature: the feature map of the auxiliary line (P2).
            num_classes: mask classes; 1 for class-agnostic masks.
            channels: the width of each stage; their number is the number of stages.
            pooler_resolution: the main line's RoIAlign size, which the first stage keeps.
            fusion: "sum" (main line + auxiliary line) or "concat" (concatenated, then a 1x1
                conv + ReLU).
            ram_dilations: dilations of the RAM's parallel 3x3 convs; empty: no RAM.
            ram_residual: whether the RAM adds its halved input to its branches.
        """
        super().__init__(**kwargs)
        if fusion not in ("sum", "concat"):
            raise ValueError(f"MODEL.BREFINE.MASK_HEAD.FUSION = {fusion!r}: use 'sum' or 'concat'")
        if not channels:
            raise ValueError("MODEL.BREFINE.MASK_HEAD: at least one stage is needed")
        if ram_residual and not ram_dilations:
            raise ValueError(
                "MODEL.BREFINE.MASK_HEAD.RAM_RESIDUAL = True needs RAM_DILATIONS (empty: no RAM)"
            )
        self.in_features, self.detail_feature = tuple(in_features), detail_feature
        pooler = dict(sampling_ratio=pooler_sampling_ratio, pooler_type=pooler_type)
        self.main_pooler = ROIPooler(
            pooler_resolution, [1 / input_shape[f].stride for f in in_features], **pooler
        )
        detail_scale = [1 / input_shape[detail_feature].stride]
        self.detail_poolers = nn.ModuleList(
            ROIPooler(pooler_resolution * 2**s, detail_scale, **pooler)
            for s in range(len(channels))
        )
        ram = dict(dilations=tuple(ram_dilations), residual=ram_residual) if ram_dilations else {}
        in_channels = input_shape[in_features[0]].channels
        self.stages = nn.ModuleList()
        for stage_channels in channels:
            detail_channels = input_shape[detail_feature].channels
            self.stages.append(
                _Stage(in_channels, detail_channels, stage_channels, fusion, ram, norm)
            )
            in_channels = stage_channels
        self.predictor = Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        head = cfg.MODEL.BREFINE.MASK_HEAD
        if not 1 <= head.NUM_STAGES <= len(head.CHANNELS):
            raise ValueError(
                f"MODEL.BREFINE.MASK_HEAD.NUM_STAGES = {head.NUM_STAGES}: expected 1 to "
                f"len(MODEL.BREFINE.MASK_HEAD.CHANNELS) = {len(head.CHANNELS)}"
            )
        agnostic = cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK
        ret.update(
            input_shape=input_shape,
            in_features=cfg.MODEL.ROI_HEADS.IN_FEATURES,
            detail_feature=head.DETAIL_FEATURE,
            num_classes=1 if agnostic else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            channels=tuple(head.CHANNELS[: head.NUM_STAGES]),
            pooler_resolution=cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION,
            pooler_sampling_ratio=cfg.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO,
            pooler_type=head.POOLER_TYPE,
            fusion=head.FUSION,
            ram_dilations=tuple(head.RAM_DILATIONS),
            ram_residual=head.RAM_RESIDUAL,
            norm=head.NORM,
        )
        return ret

    def layers(self, features: dict, boxes):
        """
        Args:
            features: {name: (N, C, H, W)} feature maps of the N images.
            boxes: list of N Boxes, the regions of each image.

        Returns:
            Mask logits of shape (R, K, M, M).
        """
        x = self.main_pooler([features[f] for f in self.in_features], boxes)
        detail_feature = [features[self.detail_feature]]
        for s, (stage, pooler) in enumerate(zip(self.stages, self.detail_poolers, strict=True)):
            x = stage(x, pooler(detail_feature, boxes), upsample=s > 0)
        return self.predictor(x)

    def forward(self, features: dict, instances):
        """
        Detectron2's mask-head interface, for use in a :class:`StandardROIHeads` (whose mask loss
        is then Mask R-CNN's BCE); :class:`BRefineROIHeads` computes BRefine's losses itself.

        Returns:
            A dict of losses in training, else `instances` with "pred_masks".
        """
        boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
        logits = self.layers(features, boxes)
        if self.training:
            loss = mask_rcnn_loss(logits, instances, self.vis_period)
            return {"loss_mask": loss * self.loss_weight}
        mask_rcnn_inference(logits, instances)
        return instances


def erosion_iterations(mask_side: int, ratio: float) -> int:
    """Erosions that give a boundary of `ratio` x the target's diagonal, at least one."""
    return max(1, round(ratio * math.sqrt(2) * mask_side))


def boundary_region(masks: torch.Tensor, iterations: int) -> torch.Tensor:
    """
    Eq. 1: the masks minus their erosion by a 3x3 square, `iterations` times; pixels outside the
    target count as background, so a mask touching the target's edge has a boundary there.

    Args:
        masks: binary float masks of shape (R, M, M).

    Returns:
        Binary float masks of shape (R, M, M).
    """
    k = iterations
    background = F.pad(1 - masks[:, None], (k, k, k, k), value=1.0)
    eroded = 1 - F.max_pool2d(background, kernel_size=2 * k + 1, stride=1)
    return masks - eroded[:, 0]


def _dice_loss(probs, targets):
    """1 - 2 sum(p t) / (sum(p^2) + sum(t^2) + 1e-5) per mask: (R, M, M) -> (R,)."""
    numerator = 2 * (probs * targets).flatten(1).sum(1)
    return 1 - numerator / ((probs**2 + targets**2).flatten(1).sum(1) + 1e-5)


def _mask_targets(pred_mask_logits, instances):
    """The logits of each region's ground-truth class (R, M, M), its target mask (R, M, M)."""
    side = pred_mask_logits.size(2)
    targets = [
        x.gt_masks.crop_and_resize(x.proposal_boxes.tensor, side) for x in instances if len(x)
    ]
    if not targets:
        return pred_mask_logits[:, 0], pred_mask_logits.new_zeros((0, side, side))
    targets = cat(targets).to(dtype=pred_mask_logits.dtype)
    if pred_mask_logits.size(1) == 1:
        return pred_mask_logits[:, 0], targets
    classes = cat([x.gt_classes for x in instances])
    return pred_mask_logits[torch.arange(len(classes)), classes], targets


def brefine_mask_loss(
    pred_mask_logits,
    instances,
    *,
    loss_type: str = "ce",
    boundary_weight: float = 1.0,
    boundary_ratio: float = 0.02,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    weights=None,
):
    """
    The mask loss L^3 of eq. 5-6: per region, the mean over pixels of (1 + lambda B) x the
    per-pixel loss (eq. 2, B = :func:`boundary_region`), plus the Dice loss for "dice" and
    "ce_dice"; then the regions' mean weighted by `weights`.

    Args:
        pred_mask_logits: (R, K, M, M) mask logits.
        instances: list of Instances with "proposal_boxes", "gt_masks", "gt_classes", in the
            order of the regions.
        loss_type: one of MASK_LOSS_TYPES ("ce": binary cross-entropy, "focal": sigmoid focal
            loss with `focal_alpha`, `focal_gamma`).
        boundary_weight: lambda of eq. 2 (0: no boundary term).
        boundary_ratio: boundary width as a fraction of the M x M target's diagonal.
        weights: (R,) non-negative region weights w_i (eq. 6), or None for equal weights.

    Returns:
        A scalar; zero, connected to the logits, when there is no region.
    """
    logits, targets = _mask_targets(pred_mask_logits, instances)
    if len(targets) == 0:
        return pred_mask_logits.sum() * 0
    per_region = logits.new_zeros(len(targets))
    if loss_type in ("ce", "focal", "ce_dice"):
        if loss_type == "focal":
            pixel = sigmoid_focal_loss(logits, targets, alpha=focal_alpha, gamma=focal_gamma)
        else:
            pixel = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        if boundary_weight:
            iterations = erosion_iterations(targets.size(-1), boundary_ratio)
            pixel = pixel * (1 + boundary_weight * boundary_region(targets, iterations))
        per_region = per_region + pixel.flatten(1).mean(1)
    if loss_type in ("dice", "ce_dice"):
        per_region = per_region + _dice_loss(logits.sigmoid(), targets)
    if weights is None:
        return per_region.mean()
    # As the RS authors: weights summing to almost nothing are not normalised.
    total = weights.sum()
    return (weights * per_region).sum() / torch.where(total > 1e-10, total, 1.0)
