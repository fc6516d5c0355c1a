"""The RPN of BRefine's eq. 5, k = 1: Rank & Sort objectness and score-weighted GIoU boxes."""

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage

from .rank_sort import rank_sort_detection_losses

__all__ = ["RankSortRPN"]


@PROPOSAL_GENERATOR_REGISTRY.register()
class RankSortRPN(RPN):
    """
    Detectron2's RPN whose losses are :func:`rank_sort_detection_losses` over every labelled
    anchor of the batch at once: RS with the IoU of each positive anchor's decoded box as its
    target, and GIoU weighted by the positives' objectness scores (sigmoid). MODEL.RPN.LOSS_WEIGHT
    scales both (BRefine's w = 0.2); RS needs no sampling, so the Base config keeps every anchor
    (MODEL.RPN.BATCH_SIZE_PER_IMAGE larger than any image's anchors, POSITIVE_FRACTION 1).
    """

    @configurable
    def __init__(self, *, rank_sort_delta: float = 0.5, **kwargs):
        """
        Args:
            rank_sort_delta: delta of the RS loss's smoothed step.
            kwargs: those of :class:`RPN`.
        """
        super().__init__(**kwargs)
        self.rank_sort_delta = rank_sort_delta

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["rank_sort_delta"] = cfg.MODEL.BREFINE.RANK_SORT_DELTA
        return ret

    def losses(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        """
        Args and returns: those of :meth:`RPN.losses`: the losses "loss_rpn_cls" (RS) and
        "loss_rpn_loc" (balanced GIoU).
        """
        labels = torch.stack(gt_labels)  # (N, A): 1, 0, -1
        positive = labels == 1
        storage = get_event_storage()
        storage.put_scalar("rpn/num_pos_anchors", positive.sum().item() / len(labels))
        storage.put_scalar("rpn/num_neg_anchors", (labels == 0).sum().item() / len(labels))

        logits = cat(pred_objectness_logits, dim=1)  # (N, A)
        anchor_index = positive.nonzero()[:, 1]
        pred_boxes = self.box2box_transform.apply_deltas(
            cat(pred_anchor_deltas, dim=1)[positive], Boxes.cat(anchors).tensor[anchor_index]
        )
        loss_cls, loss_loc = rank_sort_detection_losses(
            logits,
            labels,
            pred_boxes,
            torch.stack(gt_boxes)[positive],
            logits[positive].detach().sigmoid(),
            self.rank_sort_delta,
        )
        losses = {"loss_rpn_cls": loss_cls, "loss_rpn_loc": loss_loc}
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}
