"""
R3-CNN (section 3.1, Fig. 2b): box and mask heads reused in loops, each loop trained at its own
IoU threshold on the boxes the previous loop regressed.

Shape shorthand: N images, R RoIs over all images, K classes, S the mask pooler's resolution.
"""

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    FastRCNNOutputLayers,
    StandardROIHeads,
    build_box_head,
    build_mask_head,
    select_foreground_proposals,
)
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_loss
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage
from torch import nn

from .config import check_choice
from .groie import build_roi_pooler
from .mask_head import SBRLoopMaskHead
from .mask_iou import build_maskiou_head, mask_iou_loss, mask_iou_targets

__all__ = ["R3ROIHeads", "loop_pairs", "parse_alternation"]


def parse_alternation(alternation: str) -> list[int]:
    """
    The head pair of each letter of an alternation string: "aab" -> [0, 0, 1].

    Raises:
        ValueError: naming MODEL.SBRCNN.ALTERNATION unless the string is made of letters that
            first appear in the order a, b, c, ... (so that H = the number of letters).
    """
    pairs = [ord(letter) - ord("a") for letter in alternation]
    first_seen = list(dict.fromkeys(pairs))
    if not pairs or first_seen != list(range(len(first_seen))):
        raise ValueError(
            f"MODEL.SBRCNN.ALTERNATION={alternation!r}: use letters a, b, ... that first appear "
            "in that order, one per loop (e.g. 'a', 'aab', 'abab')"
        )
    return pairs


def loop_pairs(alternation: str, num_loops: int) -> list[int]:
    """The head pair of each of `num_loops` loops; loops beyond the string take its last."""
    pairs = parse_alternation(alternation)
    return (pairs + pairs[-1:] * num_loops)[:num_loops]


def _check_loops(cfg) -> None:
    node = cfg.MODEL.SBRCNN
    ious, weights = list(node.LOOP_IOUS), list(node.LOOP_WEIGHTS)
    if not ious or not all(0 < u <= 1 for u in ious):
        raise ValueError(f"MODEL.SBRCNN.LOOP_IOUS={ious}: give IoU thresholds in (0, 1]")
    if len(weights) != len(ious):
        raise ValueError(
            f"MODEL.SBRCNN.LOOP_WEIGHTS={weights}: give one weight per entry of "
            f"MODEL.SBRCNN.LOOP_IOUS={ious}"
        )
    if len(node.ALTERNATION) > len(ious):
        raise ValueError(
            f"MODEL.SBRCNN.ALTERNATION={node.ALTERNATION!r} names {len(node.ALTERNATION)} loops, "
            f"but MODEL.SBRCNN.LOOP_IOUS={ious} gives {len(ious)}: one threshold per loop"
        )
    if node.TEST_LOOPS < 0:
        raise ValueError(f"MODEL.SBRCNN.TEST_LOOPS={node.TEST_LOOPS}: use 0 (= L_t) or more")
    check_choice("MODEL.SBRCNN.TEST_SCORE_AVERAGE", node.TEST_SCORE_AVERAGE, ("logits", "probs"))
    if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
        raise ValueError(
            "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG=False: R3ROIHeads refines one box per RoI "
            "between loops; set it to True"
        )
    if cfg.MODEL.KEYPOINT_ON:
        raise ValueError("MODEL.KEYPOINT_ON=True: R3ROIHeads has no keypoint head")
    if node.MASKIOU.ENABLED and not cfg.MODEL.MASK_ON:
        raise ValueError("MODEL.SBRCNN.MASKIOU.ENABLED=True needs MODEL.MASK_ON=True")


@ROI_HEADS_REGISTRY.register()
class R3ROIHeads(StandardROIHeads):
    """
    The ROI heads of R3-CNN and SBR-CNN: H pairs of box and mask heads used in L_t training
    loops and L_e test loops, an optional Mask IoU branch, and ROIPooler or GRoIE poolers.

    Training loop t (t = 0, ..., L_t - 1), with the head pair p(t) of the alternation:
      1. label the loop's proposals (RPN's for t = 0) and the ground-truth boxes at the IoU
         threshold u^t (eq. 1), and sample them like Mask R-CNN;
      2. box head p(t): classification and regression losses (eq. 2);
      3. regress the sampled boxes (without gradient), dropping those that were ground-truth
         boxes: the proposals of loop t + 1;
      4. label and sample those boxes again at u^t; the mask head's internal loop runs t + 1
         times on the positives, iteration k with loop k's mask head (eq. 3), and the last
         one's logits give the BCE loss (eq. 4-5);
      5. the loop's losses are weighted by alpha_t (eq. 6). The Mask IoU loss is computed in
         the last loop only, unweighted.
    Inference runs L_e loops; the class scores of all loops are averaged (logits, then softmax,
    or probabilities), the boxes are the last loop's, and the mask probabilities are averaged
    over L_e internal iterations; a predicted mask IoU rescales the score.
    """

    @configurable
    def __init__(
        self,
        *,
        box_heads: list[nn.Module],
        box_predictors: list[nn.Module],
        mask_heads: list[nn.Module] | None = None,
        maskiou_head: nn.Module | None = None,
        proposal_matchers: list[Matcher],
        loop_weights: list[float],
        train_pairs: list[int],
        test_pairs: list[int],
        mask_loop_in_training: bool = True,
        test_score_average: str = "logits",
        maskiou_loss_weight: float = 0.5,
        maskiou_logit_thresh: float = 0.5,
        **kwargs,
    ):
        """
        Args:
            box_heads, box_predictors: one per head pair (H).
            mask_heads: one SBRLoopMaskHead per head pair, or None without masks.
            maskiou_head: the Mask IoU branch, or None.
            proposal_matchers: one per training loop (L_t), at its IoU threshold.
            loop_weights: alpha_t of each training loop.
            train_pairs, test_pairs: the head pair of each training (L_t) and test (L_e) loop.
            mask_loop_in_training: run the internal mask loop t + 1 times in loop t (else once).
            test_score_average: "logits" or "probs".
            maskiou_loss_weight, maskiou_logit_thresh: of the Mask IoU loss and its targets.
            kwargs: the other arguments of StandardROIHeads.
        """
        kwargs["proposal_matcher"] = proposal_matchers[0]
        super().__init__(
            box_head=nn.ModuleList(box_heads),
            box_predictor=nn.ModuleList(box_predictors),
            mask_head=nn.ModuleList(mask_heads) if mask_heads else None,
            **kwargs,
        )
        self.proposal_matchers = proposal_matchers
        self.loop_weights = loop_weights
        self.train_pairs = train_pairs
        self.test_pairs = test_pairs
        self.mask_loop_in_training = mask_loop_in_training
        self.test_score_average = test_score_average
        self.maskiou_head = maskiou_head
        self.maskiou_loss_weight = maskiou_loss_weight
        self.maskiou_logit_thresh = maskiou_logit_thresh

    @classmethod
    def from_config(cls, cfg, input_shape):
        _check_loops(cfg)
        node = cfg.MODEL.SBRCNN
        ret = super().from_config(cfg, input_shape)
        ret.pop("proposal_matcher")
        num_train_loops = len(node.LOOP_IOUS)
        ret.update(
            proposal_matchers=[
                Matcher([iou], [0, 1], allow_low_quality_matches=False) for iou in node.LOOP_IOUS
            ],
            loop_weights=list(node.LOOP_WEIGHTS),
            train_pairs=loop_pairs(node.ALTERNATION, num_train_loops),
            test_pairs=loop_pairs(node.ALTERNATION, node.TEST_LOOPS or num_train_loops),
            mask_loop_in_training=node.MASK_LOOP_IN_TRAINING,
            test_score_average=node.TEST_SCORE_AVERAGE,
            maskiou_loss_weight=node.MASKIOU.LOSS_WEIGHT,
            maskiou_logit_thresh=node.MASKIOU.TARGET_LOGIT_THRESH,
        )
        return ret

    @classmethod
    def _num_pairs(cls, cfg) -> int:
        return max(parse_alternation(cfg.MODEL.SBRCNN.ALTERNATION)) + 1

    @classmethod
    def _roi_shape(cls, cfg, input_shape, resolution) -> ShapeSpec:
        channels = input_shape[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].channels
        return ShapeSpec(channels=channels, height=resolution, width=resolution)

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        shape = cls._roi_shape(cfg, input_shape, cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION)
        box_heads = [build_box_head(cfg, shape) for _ in range(cls._num_pairs(cfg))]
        return {
            "box_in_features": cfg.MODEL.ROI_HEADS.IN_FEATURES,
            "box_pooler": build_roi_pooler(cfg, input_shape, "box"),
            "box_heads": box_heads,
            "box_predictors": [FastRCNNOutputLayers(cfg, h.output_shape) for h in box_heads],
        }

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        if not cfg.MODEL.MASK_ON:
            return {}
        shape = cls._roi_shape(cfg, input_shape, cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION)
        mask_heads = [build_mask_head(cfg, shape) for _ in range(cls._num_pairs(cfg))]
        if not isinstance(mask_heads[0], SBRLoopMaskHead):
            raise ValueError(
                f"MODEL.ROI_MASK_HEAD.NAME={cfg.MODEL.ROI_MASK_HEAD.NAME!r}: R3ROIHeads needs "
                "'SBRLoopMaskHead' (or a subclass), whose internal loop it runs"
            )
        maskiou = build_maskiou_head(cfg, shape) if cfg.MODEL.SBRCNN.MASKIOU.ENABLED else None
        return {
            "mask_in_features": cfg.MODEL.ROI_HEADS.IN_FEATURES,
            "mask_pooler": build_roi_pooler(cfg, input_shape, "mask"),
            "mask_heads": mask_heads,
            "maskiou_head": maskiou,
        }

    def forward(self, images, features, proposals, targets=None):
        del images
        if self.training:
            return proposals, self._training_losses(features, proposals, targets)
        instances = self._forward_box(features, proposals)
        return self.forward_with_given_boxes(features, instances), {}

    def _training_losses(
        self, features: dict[str, torch.Tensor], proposals, targets
    ) -> dict[str, torch.Tensor]:
        """The losses of every training loop (see the class docstring)."""
        box_features = [features[f] for f in self.box_in_features]
        storage = get_event_storage()
        losses = {}
        for loop, pair in enumerate(self.train_pairs):
            with storage.name_scope(f"loop{loop}"):
                samples = self._label_and_sample(proposals, targets, loop, "roi_head")
                predictions = self._run_box_head(box_features, samples, pair)
                loop_losses = self.box_predictor[pair].losses(predictions, samples)
                proposals = self._refine(predictions, samples, pair)
                if self.mask_on:
                    mask_samples = self._label_and_sample(proposals, targets, loop, "mask_head")
                    loop_losses.update(self._mask_losses(features, mask_samples, loop))
            for name, value in loop_losses.items():
                if name == "loss_maskiou":  # the last loop's, unweighted as in the authors' code
                    losses[name] = value
                else:
                    losses[f"{name}_loop{loop}"] = value * self.loop_weights[loop]
        return losses

    @torch.no_grad()
    def _label_and_sample(
        self, proposals: list[Instances], targets: list[Instances], loop: int, scope: str
    ) -> list[Instances]:
        """
        Detectron2's label_and_sample_proposals with the matcher of `loop` (eq. 1), which also
        marks the ground-truth boxes it adds as proposals (field "from_gt"). The numbers of
        samples are logged under `scope`.
        """
        sizes = [len(p) for p in proposals]
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)
        sampled, num_fg, num_bg = [], [], []
        for size, proposals_per_image, targets_per_image in zip(
            sizes, proposals, targets, strict=True
        ):
            device = proposals_per_image.proposal_boxes.device
            proposals_per_image.from_gt = torch.arange(len(proposals_per_image), device=device)
            proposals_per_image.from_gt = proposals_per_image.from_gt >= size
            iou = pairwise_iou(targets_per_image.gt_boxes, proposals_per_image.proposal_boxes)
            matched_idxs, matched_labels = self.proposal_matchers[loop](iou)
            idxs, gt_classes = self._sample_proposals(
                matched_idxs, matched_labels, targets_per_image.gt_classes
            )
            proposals_per_image = proposals_per_image[idxs]
            proposals_per_image.gt_classes = gt_classes
            if len(targets_per_image) > 0:
                for name, value in targets_per_image.get_fields().items():
                    if name.startswith("gt_") and not proposals_per_image.has(name):
                        proposals_per_image.set(name, value[matched_idxs[idxs]])
            num_bg.append((gt_classes == self.num_classes).sum().item())
            num_fg.append(len(gt_classes) - num_bg[-1])
            sampled.append(proposals_per_image)
        storage = get_event_storage()
        storage.put_scalar(f"{scope}/num_fg_samples", sum(num_fg) / len(num_fg))
        storage.put_scalar(f"{scope}/num_bg_samples", sum(num_bg) / len(num_bg))
        return sampled

    def _run_box_head(self, features: list[torch.Tensor], proposals, pair: int):
        """FastRCNNOutputLayers' (scores (R, K + 1), deltas (R, 4)) of head pair `pair`."""
        x = self.box_pooler(features, [p.proposal_boxes for p in proposals])
        return self.box_predictor[pair](self.box_head[pair](x))

    @torch.no_grad()
    def _refine(self, predictions, proposals: list[Instances], pair: int) -> list[Instances]:
        """
        The regressed boxes as the next loop's proposals, clipped to the image. In training,
        the boxes regressed from ground-truth boxes and empty boxes are dropped; in inference
        every box is kept, so that the loops' scores stay aligned.
        """
        boxes = self.box_predictor[pair].predict_boxes(predictions, proposals)
        refined = []
        for boxes_per_image, proposals_per_image in zip(boxes, proposals, strict=True):
            boxes_per_image = Boxes(boxes_per_image.detach())
            boxes_per_image.clip(proposals_per_image.image_size)
            if self.training:
                keep = ~proposals_per_image.from_gt & boxes_per_image.nonempty()
                boxes_per_image = boxes_per_image[keep]
            refined.append(
                Instances(
                    proposals_per_image.image_size,
                    proposal_boxes=boxes_per_image,
                    objectness_logits=boxes_per_image.tensor.new_zeros(len(boxes_per_image)),
                )
            )
        return refined

    def _mask_losses(self, features, samples: list[Instances], loop: int) -> dict:
        """
        The mask loss of training loop `loop` on the positives of `samples` and, in the last
        loop, the Mask IoU loss.
        """
        instances, _ = select_foreground_proposals(samples, self.num_classes)
        x = self.mask_pooler(
            [features[f] for f in self.mask_in_features], [i.proposal_boxes for i in instances]
        )
        iterations = loop + 1 if self.mask_loop_in_training else 1
        pairs = self.train_pairs[loop + 1 - iterations : loop + 1]
        mask_features = None
        for pair in pairs:
            mask_features = self.mask_head[pair].refine(x, mask_features)
        head = self.mask_head[pairs[-1]]
        logits = head.predict(mask_features)
        losses = {"loss_mask": mask_rcnn_loss(logits, instances, head.vis_period)}
        if self.maskiou_head is not None and loop == len(self.train_pairs) - 1:
            gt_classes = cat([i.gt_classes for i in instances])
            class_logits = _select_class(logits, gt_classes)
            targets = mask_iou_targets(class_logits[:, 0], instances, self.maskiou_logit_thresh)
            pred_iou = self.maskiou_head(x, class_logits)
            losses.update(mask_iou_loss(pred_iou, gt_classes, targets, self.maskiou_loss_weight))
        return losses

    def _forward_box(self, features: dict[str, torch.Tensor], proposals: list[Instances]):
        """
        Inference: L_e loops; scores averaged over the loops, boxes of the last loop.

        Returns:
            list[Instances]: the detections of each image.
        """
        box_features = [features[f] for f in self.box_in_features]
        outputs = []  # (pair, predictions, proposals) of each loop
        for loop, pair in enumerate(self.test_pairs):
            if loop > 0:
                proposals = self._refine(outputs[-1][1], outputs[-1][2], outputs[-1][0])
            outputs.append((pair, self._run_box_head(box_features, proposals, pair), proposals))
        pair, predictions, proposals = outputs[-1]
        predictor = self.box_predictor[pair]
        scores = self._average_scores(outputs)
        boxes = predictor.predict_boxes(predictions, proposals)
        instances, _ = fast_rcnn_inference(
            boxes,
            scores,
            [p.image_size for p in proposals],
            predictor.test_score_thresh,
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
        )
        return instances

    def _average_scores(self, outputs) -> list[torch.Tensor]:
        """
        The class probabilities (R_i, K + 1) of each image, averaged over the loops: their
        logits then softmax ("logits", the authors' code) or their probabilities ("probs").
        """
        proposals = outputs[-1][2]
        if self.test_score_average == "logits":
            logits = torch.stack([predictions[0] for _, predictions, _ in outputs]).mean(dim=0)
            return self.box_predictor[outputs[-1][0]].predict_probs((logits, None), proposals)
        per_loop = [self.box_predictor[p].predict_probs(pred, props) for p, pred, props in outputs]
        return [torch.stack(probs).mean(dim=0) for probs in zip(*per_loop, strict=True)]

    def _forward_mask(self, features, instances: list[Instances]) -> list[Instances]:
        """
        Inference: pred_masks (R_i, 1, 2S, 2S), the mask probabilities averaged over L_e
        internal iterations (iteration k with loop k's mask head); with the Mask IoU branch,
        scores multiplied by the predicted IoU of the last iteration's mask, and detections
        that then fall below the test score threshold dropped.
        """
        if not self.mask_on:
            return instances
        x = self.mask_pooler(
            [features[f] for f in self.mask_in_features], [i.pred_boxes for i in instances]
        )
        classes = cat([i.pred_classes for i in instances])
        mask_features, probs = None, 0.0
        for pair in self.test_pairs:
            mask_features = self.mask_head[pair].refine(x, mask_features)
            logits = _select_class(self.mask_head[pair].predict(mask_features), classes)
            probs = probs + logits.sigmoid() / len(self.test_pairs)
        sizes = [len(i) for i in instances]
        for instances_per_image, probs_per_image in zip(instances, probs.split(sizes), strict=True):
            instances_per_image.pred_masks = probs_per_image
        if self.maskiou_head is None:
            return instances
        pred_iou = self.maskiou_head(x, logits)
        rows = torch.arange(len(classes), device=classes.device)
        mask_iou = pred_iou[rows, classes].clamp(0.0, 1.0).split(sizes)
        threshold = self.box_predictor[self.test_pairs[-1]].test_score_thresh
        rescored = []
        for instances_per_image, iou in zip(instances, mask_iou, strict=True):
            instances_per_image.scores = instances_per_image.scores * iou
            rescored.append(instances_per_image[instances_per_image.scores >= threshold])
        return rescored


def _select_class(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """
    Args:
        logits: (R, K, M, M) mask logits, or (R, 1, M, M) class-agnostic ones.
        classes: (R,) the class of each RoI.

    Returns:
        (R, 1, M, M) the logits of each RoI's class.
    """
    if logits.shape[1] == 1:
        return logits
    rows = torch.arange(len(classes), device=logits.device)
    return logits[rows, classes][:, None]
