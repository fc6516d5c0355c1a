"""BRefine's ROI heads: Mask R-CNN's box path, the multistage mask path, and eq. 5's losses."""

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals

from .fast_rcnn import RankSortOutputLayers
from .mask_head import MASK_LOSS_TYPES, brefine_mask_loss
from .rank_sort import balance_to

__all__ = ["BRefineROIHeads", "sample_regions"]


def sample_regions(instances, limit: int):
    """
    At most `limit` regions of the whole batch, chosen at random, each image's kept in order.

    Args:
        instances: list of Instances, one per image.
        limit: the most regions to keep; <= 0 keeps every region.
    """
    counts = [len(x) for x in instances]
    total = sum(counts)
    if limit <= 0 or total <= limit:
        return instances
    device = instances[0].proposal_boxes.device
    keep = torch.zeros(total, dtype=torch.bool, device=device)
    keep[torch.randperm(total, device=device)[:limit]] = True
    return [x[k] for x, k in zip(instances, keep.split(counts), strict=True)]


@ROI_HEADS_REGISTRY.register()
class BRefineROIHeads(StandardROIHeads):
    """
    :class:`StandardROIHeads` that keeps the box path and trains the mask path with BRefine's
    mask loss (:func:`brefine_mask_loss`: boundary-region CE by default) on at most a given
    number of positive regions, for any mask head (BRefine's :class:`BRefineMaskHead`, or
    Detectron2's for "RS Mask R-CNN").

    With Rank & Sort on (eq. 5), the box predictor is :class:`RankSortOutputLayers` (k = 2), the
    RPN must be :class:`RankSortRPN` (k = 1), and the mask loss (k = 3) is averaged with the
    regions' classification scores as weights (eq. 6) and balanced to the value of the box
    classifier's RS loss (lambda^3 = L_RS^2 / L^3).
    """

    @configurable
    def __init__(
        self, *, rank_sort: bool, mask_loss: dict, mask_positives_per_batch: int, **kwargs
    ):
        """
        Args:
            rank_sort: train with the Rank & Sort losses of eq. 5.
            mask_loss: keyword arguments of :func:`brefine_mask_loss` but `weights`.
            mask_positives_per_batch: the most positive regions that train the mask head, per
                batch of this process (<= 0: all).
            kwargs: those of :class:`StandardROIHeads`.
        """
        super().__init__(**kwargs)
        self.rank_sort = rank_sort
        self.mask_loss = dict(mask_loss)
        self.mask_positives_per_batch = mask_positives_per_batch

    @classmethod
    def from_config(cls, cfg, input_shape):
        brefine = cfg.MODEL.BREFINE
        rank_sort_rpn = cfg.MODEL.PROPOSAL_GENERATOR.NAME == "RankSortRPN"
        if rank_sort_rpn != brefine.RANK_SORT_ON:
            raise ValueError(
                f"MODEL.BREFINE.RANK_SORT_ON = {brefine.RANK_SORT_ON} with "
                f"MODEL.PROPOSAL_GENERATOR.NAME = {cfg.MODEL.PROPOSAL_GENERATOR.NAME!r}: eq. 5 "
                "trains the RPN with Rank & Sort too; use 'RankSortRPN' with it, 'RPN' without"
            )
        for key in ("TRAIN_ON_PRED_BOXES", "USE_FED_LOSS"):
            if brefine.RANK_SORT_ON and cfg.MODEL.ROI_BOX_HEAD[key]:
                raise ValueError(
                    f"MODEL.ROI_BOX_HEAD.{key} = True is not supported with "
                    "MODEL.BREFINE.RANK_SORT_ON = True (the Rank & Sort box head)"
                )
        loss = brefine.MASK_LOSS
        if loss.TYPE not in MASK_LOSS_TYPES:
            raise ValueError(
                f"MODEL.BREFINE.MASK_LOSS.TYPE = {loss.TYPE!r}: use one of {MASK_LOSS_TYPES}"
            )
        if loss.TYPE == "dice" and loss.BOUNDARY_WEIGHT:
            raise ValueError(
                f"MODEL.BREFINE.MASK_LOSS.BOUNDARY_WEIGHT = {loss.BOUNDARY_WEIGHT} weights "
                "per-pixel losses, and MODEL.BREFINE.MASK_LOSS.TYPE 'dice' has none: set it to 0"
            )
        ret = super().from_config(cfg, input_shape)
        ret.update(
            rank_sort=brefine.RANK_SORT_ON,
            mask_loss=dict(
                loss_type=loss.TYPE,
                boundary_weight=loss.BOUNDARY_WEIGHT,
                boundary_ratio=loss.BOUNDARY_RATIO,
                focal_alpha=loss.FOCAL_ALPHA,
                focal_gamma=loss.FOCAL_GAMMA,
            ),
            mask_positives_per_batch=brefine.MASK_POSITIVES_PER_BATCH,
        )
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        if cfg.MODEL.BREFINE.RANK_SORT_ON:
            # In place of the parent's softmax predictor.
            ret["box_predictor"] = RankSortOutputLayers(cfg, ret["box_head"].output_shape)
        return ret

    def forward(self, images, features, proposals, targets=None):
        """
        See :meth:`StandardROIHeads.forward`; with RS, the mask loss is balanced (eq. 5) to the
        box head's balanced value: L_RS^2, or 1 when every positive box missed (then L_RS^2 is 0
        and the masks would stop learning with the boxes).
        """
        instances, losses = super().forward(images, features, proposals, targets)
        if self.training and self.rank_sort and "loss_mask" in losses:
            losses["loss_mask"] = balance_to(losses["loss_mask"], losses["loss_box_reg"])
        return instances, losses

    def _forward_box(self, features, proposals):
        """
        The parent's box path; in training with RS it also keeps each region's highest class
        score, not differentiated, as "mask_loss_weights" (w_i of eq. 6) for the mask loss.
        """
        if not (self.training and self.rank_sort):
            return super()._forward_box(features, proposals)
        features = [features[f] for f in self.box_in_features]
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        predictions = self.box_predictor(self.box_head(box_features))
        scores = predictions[0].detach().sigmoid().max(dim=1).values
        for proposals_per_image, weights in zip(
            proposals, scores.split([len(x) for x in proposals]), strict=True
        ):
            proposals_per_image.mask_loss_weights = weights
        return self.box_predictor.losses(predictions, proposals)

    def _forward_mask(self, features, instances):
        """
        The parent's mask path at inference. In training: BRefine's mask loss on the positive
        regions (at most `mask_positives_per_batch`), from the mask head's `layers`, which takes
        the pooled features or, for a head without a pooler, the feature maps and the boxes.
        """
        if not (self.training and self.mask_on):
            return super()._forward_mask(features, instances)
        instances, _ = select_foreground_proposals(instances, self.num_classes)
        instances = sample_regions(instances, self.mask_positives_per_batch)
        boxes = [x.proposal_boxes for x in instances]
        if self.mask_pooler is not None:
            pooled = self.mask_pooler([features[f] for f in self.mask_in_features], boxes)
            logits = self.mask_head.layers(pooled)
        else:
            logits = self.mask_head.layers({f: features[f] for f in self.mask_in_features}, boxes)
        weights = cat([x.mask_loss_weights for x in instances]) if self.rank_sort else None
        loss = brefine_mask_loss(logits, instances, weights=weights, **self.mask_loss)
        return {"loss_mask": loss}
