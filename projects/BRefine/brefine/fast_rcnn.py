"""The box predictor of BRefine's eq. 5, k = 2: Rank & Sort classification, GIoU boxes."""

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from torch import nn

from .rank_sort import rank_sort_detection_losses

__all__ = ["RankSortOutputLayers"]


class RankSortOutputLayers(FastRCNNOutputLayers):
    """
    Fast R-CNN outputs with K sigmoid class logits (no background class), trained by
    :func:`rank_sort_detection_losses` over every region x class logit of the batch: RS with the
    IoU of each positive's decoded box (for its class) as target, and the GIoU of those boxes
    weighted by each positive's highest class score (as the RS authors; BRefine's "classification
    score"). Scores at test time are the sigmoids. The federated loss does not apply.
    """

    @configurable
    def __init__(self, input_shape, *, rank_sort_delta: float = 0.5, **kwargs):
        """
        Args:
            rank_sort_delta: delta of the RS loss's smoothed step.
            input_shape, kwargs: those of :class:`FastRCNNOutputLayers`.
        """
        super().__init__(input_shape, **kwargs)
        self.rank_sort_delta = rank_sort_delta
        self.cls_score = nn.Linear(self.cls_score.in_features, self.num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.constant_(self.cls_score.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["rank_sort_delta"] = cfg.MODEL.BREFINE.RANK_SORT_DELTA
        return ret

    def losses(self, predictions, proposals):
        """
        Args:
            predictions: (class logits (R, K), box deltas (R, K x 4) or (R, 4)).
            proposals: list of Instances with "proposal_boxes", "gt_classes" (K: background,
                -1: ignored) and, if any is foreground, "gt_boxes".

        Returns:
            {"loss_cls": RS loss, "loss_box_reg": balanced GIoU loss}.
        """
        scores, deltas = predictions
        gt_classes = cat([p.gt_classes for p in proposals])
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals])
        labels = torch.zeros_like(scores, dtype=torch.long)
        labels[gt_classes < 0] = -1
        fg_index = ((gt_classes >= 0) & (gt_classes < self.num_classes)).nonzero()[:, 0]
        fg_classes = gt_classes[fg_index]
        labels[fg_index, fg_classes] = 1
        fg_deltas = deltas[fg_index]
        if fg_deltas.size(1) != proposal_boxes.size(1):  # class-specific: the gt class's deltas
            fg_deltas = fg_deltas.view(len(fg_index), self.num_classes, -1)
            fg_deltas = fg_deltas[torch.arange(len(fg_index)), fg_classes]
        pred_boxes = self.box2box_transform.apply_deltas(fg_deltas, proposal_boxes[fg_index])
        # Images without ground truth have no "gt_boxes"; their proposals are all background.
        gt_boxes = cat(
            [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals]
        )
        loss_cls, loss_box = rank_sort_detection_losses(
            scores,
            labels,
            pred_boxes,
            gt_boxes[fg_index],
            scores[fg_index].detach().sigmoid().max(dim=1).values,
            self.rank_sort_delta,
        )
        losses = {"loss_cls": loss_cls, "loss_box_reg": loss_box}
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    def predict_probs(self, predictions, proposals):
        """
        Returns:
            list of (R_i, K + 1) per image: the K class sigmoids and a zero background column,
            which fast_rcnn_inference drops.
        """
        probs = predictions[0].sigmoid()
        probs = torch.cat([probs, probs.new_zeros(len(probs), 1)], dim=1)
        return probs.split([len(p) for p in proposals])
