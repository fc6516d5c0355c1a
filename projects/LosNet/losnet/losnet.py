import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import batched_nms, cat
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.structures import BitMasks, Boxes, ImageList, Instances, PolygonMasks
from detectron2.structures.boxes import matched_pairwise_iou, pairwise_point_box_distance
from detectron2.utils.events import get_event_storage
from fvcore.nn import giou_loss, sigmoid_focal_loss_jit
from torch.profiler import record_function

from .config import check_choice
from .dynamic_mask_head import DynamicMaskHead, dice_loss
from .head import LosNetHead
from .mask_branch import MaskBranch
from .mask_paste import PASTE_REGIONS, paste_masks

__all__ = ["LosNet", "select_mask_positives"]


def select_mask_positives(
    gt_indices: torch.Tensor, scores: torch.Tensor, cap: int, quota: str = "over_cap"
) -> torch.Tensor:
    """
    Choose the positive locations of one image that train the mask head: each ground-truth
    instance offers its `max(cap // #instances, 1)` highest-scoring positives.

    With `quota="always"` (the authors' code, CondInst's TOPK_PROPOSALS_PER_IM) every image
    keeps exactly those: fewer than `cap` when an instance has fewer positives than its quota,
    more when there are more instances than `cap`. With "over_cap" only an image with more than
    `cap` positives is cut down to them; if they still exceed `cap` (more instances than `cap`,
    dense ore), a random `cap` of them is kept, so that over the iterations every instance
    trains the mask head (keeping the best-scoring ones would starve the same instances).

    Args:
        gt_indices: (P,) matched instance of each positive location.
        scores: (P,) detection score of each positive location.
        cap: the per-image budget; negative keeps all.
        quota: "over_cap" or "always" (`MODEL.LOSNET.MASK_POSITIVES_QUOTA`).

    Returns:
        (P',) indices into the P positives.
    """
    if cap < 0 or (quota == "over_cap" and len(gt_indices) <= cap):
        return torch.arange(len(gt_indices), device=gt_indices.device)
    num_instances = len(torch.unique(gt_indices))
    per_instance = max(cap // num_instances, 1)
    by_score = scores.argsort(descending=True)
    order = by_score[gt_indices[by_score].argsort(stable=True)]  # grouped by instance
    _, counts = torch.unique_consecutive(gt_indices[order], return_counts=True)
    group_starts = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    rank_in_group = torch.arange(len(order), device=order.device) - group_starts
    offered = order[rank_in_group < per_instance]
    if quota == "always" or len(offered) <= cap:
        return offered
    return offered[torch.randperm(len(offered), device=offered.device)[:cap]]


@META_ARCH_REGISTRY.register()
class LosNet(FCOS):
    """
    LosNet (Sun et al., "Efficient and Lightweight Framework for Real-Time Ore Image Segmentation
    Based on Deep Learning", Minerals 2022): a CondInst-style one-stage instance segmenter.

    Detection follows FCOS with the anchor-point assignment of Detectron2's :class:`FCOS`
    (centre sampling, a size range per level, the smallest box wins); the last level's range is
    open-ended, so an object of any size gets positives. The centre-sampling region surrounds
    the box centre (FCOS) or the mask's centre of mass (CondInst). Each location also
    predicts the parameters of a dynamic mask head that turns the shared mask-branch features
    into that instance's mask.

    Losses (eq. 3-5): focal loss on classes, GIoU on boxes, BCE on box quality, dice on masks,
    all but dice normalised by the (EMA of the) number of positive locations.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone,
        head: LosNetHead,
        head_in_features: list[str],
        mask_branch: MaskBranch,
        mask_head: DynamicMaskHead,
        num_classes: int,
        box_quality: str,
        center_sampling_radius: float,
        center_sampling_around: str,
        focal_loss_alpha: float,
        focal_loss_gamma: float,
        mask_loss_weight: float,
        mask_positives_per_image: int,
        mask_positives_quota: str,
        test_score_thresh: float,
        test_topk_candidates: int,
        test_nms_thresh: float,
        max_detections_per_image: int,
        mask_paste_region: str,
        visibility_loss_weight: float,
        pixel_mean,
        pixel_std,
    ):
        """
        Args:
            box_quality: "centerness" (paper) or "iou" (authors' code), the target of the
                quality branch.
            center_sampling_around: "box_center" or "mask_centroid", the centre of each
                instance's centre-sampling region.
            mask_positives_per_image, mask_positives_quota: `cap` and `quota` of
                :func:`select_mask_positives`.
            mask_paste_region: `region` of :func:`paste_masks`.
            visibility_loss_weight: weight of :meth:`visibility_loss` (with a head that
                predicts visibility).
            Other arguments mean the same as in :class:`FCOS`.
        """
        super().__init__(
            backbone=backbone,
            head=head,
            head_in_features=head_in_features,
            num_classes=num_classes,
            center_sampling_radius=center_sampling_radius,
            focal_loss_alpha=focal_loss_alpha,
            focal_loss_gamma=focal_loss_gamma,
            test_score_thresh=test_score_thresh,
            test_topk_candidates=test_topk_candidates,
            test_nms_thresh=test_nms_thresh,
            max_detections_per_image=max_detections_per_image,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
        )
        check_choice("MODEL.LOSNET.BOX_QUALITY", box_quality, ("centerness", "iou"))
        check_choice(
            "MODEL.LOSNET.CENTER_SAMPLING_AROUND",
            center_sampling_around,
            ("box_center", "mask_centroid"),
        )
        check_choice(
            "MODEL.LOSNET.MASK_POSITIVES_QUOTA", mask_positives_quota, ("over_cap", "always")
        )
        check_choice("MODEL.LOSNET.MASK_PASTE_REGION", mask_paste_region, PASTE_REGIONS)
        strides = [backbone.output_shape()[f].stride for f in self.head_in_features]
        # Anchor points at pixel centres ((j + 0.5) * stride), the convention the mask head's
        # relative coordinates and the mask upsampling share.
        self.anchor_generator = DefaultAnchorGenerator(
            sizes=[[s] for s in strides], aspect_ratios=[1.0], strides=strides, offset=0.5
        )
        # Relative coordinates of a level are divided by its size of interest: the upper end
        # of the FCOS size range of the level (8 x stride), 64, 128, 256 for P3-P5.
        self.sizes_of_interest = [8 * s for s in strides]
        self.mask_branch = mask_branch
        self.mask_head = mask_head
        self.box_quality = box_quality
        self.center_sampling_around = center_sampling_around
        self.mask_loss_weight = mask_loss_weight
        self.mask_positives_per_image = mask_positives_per_image
        self.mask_positives_quota = mask_positives_quota
        self.mask_paste_region = mask_paste_region
        self.visibility_loss_weight = visibility_loss_weight

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        losnet = cfg.MODEL.LOSNET
        for key, names in (
            ("IN_FEATURES", losnet.IN_FEATURES),
            ("MASK_BRANCH.IN_FEATURES", losnet.MASK_BRANCH.IN_FEATURES),
        ):
            missing = [name for name in names if name not in shapes]
            if missing:
                raise ValueError(
                    f"MODEL.LOSNET.{key} names {missing}, which the backbone does not output "
                    f"(it outputs {list(shapes)})"
                )
        mask_branch = MaskBranch(
            cfg, {name: shapes[name] for name in losnet.MASK_BRANCH.IN_FEATURES}
        )
        mask_head = DynamicMaskHead(
            cfg, in_channels=mask_branch.out_channels, in_stride=mask_branch.out_stride
        )
        head = LosNetHead(
            cfg,
            [shapes[name] for name in losnet.IN_FEATURES],
            num_controller_params=mask_head.num_params,
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": losnet.IN_FEATURES,
            "mask_branch": mask_branch,
            "mask_head": mask_head,
            "num_classes": losnet.NUM_CLASSES,
            "box_quality": losnet.BOX_QUALITY,
            "center_sampling_radius": losnet.CENTER_SAMPLING_RADIUS,
            "center_sampling_around": losnet.CENTER_SAMPLING_AROUND,
            "focal_loss_alpha": losnet.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": losnet.FOCAL_LOSS_GAMMA,
            "mask_loss_weight": losnet.MASK_LOSS_WEIGHT,
            "mask_positives_per_image": losnet.MASK_POSITIVES_PER_IMAGE,
            "mask_positives_quota": losnet.MASK_POSITIVES_QUOTA,
            "test_score_thresh": losnet.SCORE_THRESH_TEST,
            "test_topk_candidates": losnet.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": losnet.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "mask_paste_region": losnet.MASK_PASTE_REGION,
            "visibility_loss_weight": losnet.VISIBILITY.LOSS_WEIGHT,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    def forward(self, batched_inputs: list[dict[str, torch.Tensor]]):
        """
        Args:
            batched_inputs: as for every Detectron2 model (see :class:`DenseDetector`); training
                needs "instances" with `gt_boxes`, `gt_classes` and `gt_masks`.

        Returns:
            In training, a dict of losses. In inference, per image {"instances": Instances} with
            `pred_boxes`, `scores`, `pred_classes` and boolean `pred_masks` (R, height, width) at
            the requested output size.
        """
        images = self.preprocess_image(batched_inputs)
        with record_function("region:backbone"):
            features = self.backbone(images.tensor)
        head_features = [features[name] for name in self.head_in_features]
        with record_function("region:head"):
            predictions = self.head(head_features)
        with record_function("region:mask_branch"):
            mask_features = self.mask_branch(features)
        if self.training:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            return self.forward_training(
                images, head_features, predictions, mask_features, gt_instances
            )
        results = self.forward_inference(images, head_features, predictions, mask_features)
        return [
            {
                "instances": self.postprocess(
                    result, x.get("height", image_size[0]), x.get("width", image_size[1])
                )
            }
            for result, x, image_size in zip(
                results, batched_inputs, images.image_sizes, strict=True
            )
        ]

    def preprocess_image(self, batched_inputs: list[dict[str, torch.Tensor]]) -> ImageList:
        """Normalise, pad and batch the images (:meth:`DenseDetector.preprocess_image`)."""
        images = super().preprocess_image(batched_inputs)
        if not self.training:
            # Every conv then runs in oneDNN's native channels-last layout, without reordering
            # each input: about 7 % less CPU latency at 640 x 800, the same values.
            tensor = images.tensor.contiguous(memory_format=torch.channels_last)
            return ImageList(tensor, images.image_sizes)
        # A BatchNorm cannot train on one value per channel: for a single image smaller than
        # the largest stride, pad so that the coarsest level is at least 2 x 2.
        min_size = 2 * self.backbone.size_divisibility
        height, width = images.tensor.shape[-2:]
        if height >= min_size and width >= min_size:
            return images
        padded = F.pad(images.tensor, (0, max(min_size - width, 0), 0, max(min_size - height, 0)))
        return ImageList(padded, images.image_sizes)

    # ---------------------------------------------------------------- training

    def forward_training(
        self,
        images: ImageList,
        features: list[torch.Tensor],
        predictions,
        mask_features: torch.Tensor,
        gt_instances: list[Instances],
    ):
        pred_logits, pred_deltas, pred_quality, pred_controller, *pred_visibility = (
            self._transpose_dense_predictions(predictions, self._prediction_dims())
        )
        anchors = self.anchor_generator(features)
        # Labelled regions, for segtools.profiling.
        with record_function("region:label_anchors"):
            gt_labels, gt_boxes, matched_indices = self.label_anchors(anchors, gt_instances)
        with record_function("region:detection_losses"):
            losses = self.losses(
                anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_quality
            )
        with record_function("region:mask_losses"):
            losses.update(
                self.mask_losses(
                    anchors,
                    pred_logits,
                    pred_quality,
                    pred_controller,
                    gt_labels,
                    matched_indices,
                    gt_instances,
                    mask_features,
                    images.tensor.shape[-2:],
                )
            )
        if pred_visibility:
            losses["loss_visibility"] = self.visibility_loss(
                pred_visibility[0], matched_indices, gt_instances
            )
        return losses

    def _prediction_dims(self) -> list[int]:
        """Channels of the head's outputs: classes, box, quality, controller, [visibility]."""
        dims = [self.num_classes, 4, 1, self.mask_head.num_params]
        return dims + [1] if self.head.visibility is not None else dims

    def visibility_loss(
        self,
        pred_visibility: list[torch.Tensor],
        matched_indices: list[torch.Tensor],
        gt_instances: list[Instances],
    ) -> torch.Tensor:
        """
        Binary cross-entropy of the visibility logit at every positive location against the
        visible fraction of the instance it matched, over the positives whose instance has
        one (`gt_visibility`, not NaN), times the loss weight.

        Args:
            pred_visibility: per level, (N, Ri, 1) logits.
            matched_indices: per image, (R,) the instance each location matched, -1 for none.
        """
        logits = cat(pred_visibility, dim=1)[..., 0]  # (N, R)
        chosen_logits, targets = [], []
        for image_index, (instances, matched) in enumerate(
            zip(gt_instances, matched_indices, strict=True)
        ):
            positives = torch.nonzero(matched >= 0)[:, 0]
            if not instances.has("gt_visibility") or len(positives) == 0:
                continue
            fractions = instances.gt_visibility[matched[positives]]
            known = torch.isfinite(fractions)
            chosen_logits.append(logits[image_index, positives[known]])
            targets.append(fractions[known].clamp(0, 1))
        if not targets or sum(map(len, targets)) == 0:
            # Keep the predictor in the graph (DDP needs every parameter used).
            return logits.sum() * 0.0
        loss = F.binary_cross_entropy_with_logits(cat(chosen_logits), cat(targets))
        return loss * self.visibility_loss_weight

    @torch.no_grad()
    def label_anchors(self, anchors: list[Boxes], gt_instances: list[Instances]):
        """
        FCOS assignment (:meth:`match_anchors`), keeping which instance each anchor point
        matched.

        Returns:
            Three lists over images: class labels (R,) with `num_classes` for background,
            matched boxes (R, 4), and matched instance indices (R,) with -1 for background;
            R is the number of anchor points of all levels.
        """
        num_anchors = sum(len(a) for a in anchors)
        gt_labels, matched_boxes, matched_indices = [], [], []
        for instances in gt_instances:
            if len(instances) > 0:
                match_quality, matched = self.match_anchors(
                    instances.gt_boxes, self._sampling_centers(instances), anchors
                ).max(dim=0)
                matched[match_quality < 1e-5] = -1
                boxes = instances.gt_boxes.tensor[matched.clip(min=0)]
                labels = instances.gt_classes[matched.clip(min=0)]
                labels[matched < 0] = self.num_classes
            else:
                matched = torch.full((num_anchors,), -1, dtype=torch.long, device=self.device)
                boxes = torch.zeros((num_anchors, 4), device=self.device)
                labels = torch.full_like(matched, self.num_classes)
            gt_labels.append(labels)
            matched_boxes.append(boxes)
            matched_indices.append(matched)
        return gt_labels, matched_boxes, matched_indices

    @torch.no_grad()
    def match_anchors(
        self, gt_boxes: Boxes, gt_centers: torch.Tensor, anchors: list[Boxes]
    ) -> torch.Tensor:
        """
        Detectron2's FCOS rule (:meth:`FCOS._match_anchors`, which always samples around the
        box centre) with the centre of each instance's sampling region given: an anchor point
        matches an instance if it lies inside its box, less than `center_sampling_radius`
        strides from `gt_centers` along x and y, and its largest distance to the box's sides
        is within its level's range, (4, 8) strides, open below on the first level and above on
        the last.

        Args:
            gt_boxes: the M boxes of an image.
            gt_centers: (M, 2) xy centres of their sampling regions.
            anchors: per level, Boxes of the Ri anchor points (squares of side = stride).

        Returns:
            (M, R) match quality: 0 where an anchor point does not match an instance, else
            1e8 - the box area, so that the smallest box wins.
        """
        num_per_level = [len(a) for a in anchors]
        anchors = Boxes.cat(anchors)
        points = anchors.get_centers()  # (R, 2)
        strides = anchors.tensor[:, 2] - anchors.tensor[:, 0]  # (R,)
        lower, upper = strides * 4, strides * 8
        lower[: num_per_level[0]] = 0
        upper[-num_per_level[-1] :] = float("inf")
        offsets = (points[None] - gt_centers[:, None]).abs().amax(dim=2)  # (M, R)
        distances = pairwise_point_box_distance(points, gt_boxes).permute(1, 0, 2)  # (M, R, 4)
        extent = distances.amax(dim=2)
        matches = (
            (offsets < self.center_sampling_radius * strides)
            & (distances.amin(dim=2) > 0)
            & (extent > lower)
            & (extent < upper)
        )
        return matches.to(torch.float32) * (1e8 - gt_boxes.area()[:, None])

    def _sampling_centers(self, instances: Instances) -> torch.Tensor:
        """
        Returns:
            (M, 2) xy centre of each instance's centre-sampling region, in input pixels: its
            box centre, or its mask's centre of mass with pixel (i, j) at (j + 0.5, i + 0.5),
            so that a rectangle's equals its box centre. An empty mask has no centre of mass
            and falls back to its box centre.
        """
        box_centers = instances.gt_boxes.get_centers()
        if self.center_sampling_around == "box_center":
            return box_centers
        masks = self._gt_bitmasks(instances)  # (M, H, W) bool
        column_mass = masks.sum(dim=1).to(torch.float32)  # (M, W)
        row_mass = masks.sum(dim=2).to(torch.float32)  # (M, H)
        xs = torch.arange(masks.shape[2], device=masks.device) + 0.5
        ys = torch.arange(masks.shape[1], device=masks.device) + 0.5
        area = column_mass.sum(dim=1, keepdim=True)  # (M, 1)
        centroids = torch.stack([column_mass @ xs, row_mass @ ys], dim=1) / area.clamp(min=1)
        return torch.where(area > 0, centroids, box_centers)

    def losses(self, anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_quality):
        """
        Detection losses (eq. 4 and the quality term).

        Args:
            anchors: per level, Boxes of the Ri anchor points.
            pred_logits, pred_deltas, pred_quality: per level, (N, Ri, K), (N, Ri, 4), (N, Ri, 1).
            gt_labels, gt_boxes: per image, (R,) and (R, 4) from :meth:`label_anchors`.
        """
        gt_labels = torch.stack(gt_labels)  # (N, R)
        positive = gt_labels != self.num_classes
        num_positive = positive.sum().item()
        get_event_storage().put_scalar("num_pos_anchors", num_positive / len(gt_labels))
        normalizer = self._ema_update("loss_normalizer", max(num_positive, 1), 300)

        class_targets = F.one_hot(gt_labels, num_classes=self.num_classes + 1)[:, :, :-1]
        loss_cls = sigmoid_focal_loss_jit(
            cat(pred_logits, dim=1),
            class_targets.to(pred_logits[0].dtype),
            alpha=self.focal_loss_alpha,
            gamma=self.focal_loss_gamma,
            reduction="sum",
        )

        anchor_boxes = Boxes.cat(anchors).tensor.expand(len(gt_labels), -1, -1)  # (N, R, 4)
        pred_boxes = self.box2box_transform.apply_deltas(
            cat(pred_deltas, dim=1)[positive], anchor_boxes[positive]
        )
        target_boxes = torch.stack(gt_boxes)[positive]
        loss_box = giou_loss(pred_boxes, target_boxes, reduction="sum")

        if self.box_quality == "centerness":
            quality_targets = self.compute_ctrness_targets(anchors, gt_boxes)[positive]
        else:
            quality_targets = matched_pairwise_iou(Boxes(pred_boxes.detach()), Boxes(target_boxes))
        loss_quality = F.binary_cross_entropy_with_logits(
            cat(pred_quality, dim=1)[..., 0][positive], quality_targets, reduction="sum"
        )
        return {
            "loss_cls": loss_cls / normalizer,
            "loss_box_giou": loss_box / normalizer,
            "loss_quality": loss_quality / normalizer,
        }

    def mask_losses(
        self,
        anchors: list[Boxes],
        pred_logits: list[torch.Tensor],
        pred_quality: list[torch.Tensor],
        pred_controller: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
        matched_indices: list[torch.Tensor],
        gt_instances: list[Instances],
        mask_features: torch.Tensor,
        padded_size: tuple[int, int],
    ):
        """
        Dice loss (eq. 5) of the dynamic mask head run at the selected positive locations
        against the ground-truth masks downsampled to the head's output stride.

        Args:
            pred_controller: per level, (N, Ri, P) dynamic parameters.
            mask_features: (N, C, H / s, W / s) mask-branch output for the padded batch.
            padded_size: (H, W) of the padded batch.
        """
        anchor_centers = Boxes.cat(anchors).get_centers()  # (R, 2)
        anchor_sizes_of_interest = cat(
            [
                torch.full((len(a),), float(size), device=self.device)
                for a, size in zip(anchors, self.sizes_of_interest, strict=True)
            ]
        )
        logits = cat(pred_logits, dim=1)  # (N, R, K)
        quality = cat(pred_quality, dim=1)[..., 0]  # (N, R)
        controller = cat(pred_controller, dim=1)  # (N, R, P)

        image_indices, anchor_indices, targets = [], [], []
        for image_index, (instances, labels, matched) in enumerate(
            zip(gt_instances, gt_labels, matched_indices, strict=True)
        ):
            positives = torch.nonzero(matched >= 0)[:, 0]
            if len(positives) == 0:
                continue
            scores = torch.sigmoid(logits[image_index, positives, labels[positives]]) * (
                torch.sigmoid(quality[image_index, positives])
            )
            chosen = select_mask_positives(
                matched[positives],
                scores.detach(),
                self.mask_positives_per_image,
                self.mask_positives_quota,
            )
            positives = positives[chosen]
            # Targets of the instances the chosen positives matched only: dense belts hold
            # more instances than the cap keeps.
            needed, target_indices = matched[positives].unique(return_inverse=True)
            gt_masks = self._mask_targets(instances[needed], padded_size)
            targets.append(gt_masks[target_indices])
            anchor_indices.append(positives)
            image_indices.append(torch.full_like(positives, image_index))

        if not targets:
            # Keep the mask branch and controller in the graph (DDP needs every parameter used).
            return {"loss_mask": mask_features.sum() * 0.0 + controller.sum() * 0.0}
        get_event_storage().put_scalar("losnet/num_mask_positives", sum(map(len, targets)))
        image_indices = cat(image_indices)
        anchor_indices = cat(anchor_indices)
        mask_logits = self.mask_head(
            mask_features,
            image_indices,
            anchor_centers[anchor_indices],
            anchor_sizes_of_interest[anchor_indices],
            controller[image_indices, anchor_indices],
        )
        loss = dice_loss(mask_logits.sigmoid(), cat(targets)).mean()
        return {"loss_mask": loss * self.mask_loss_weight}

    @staticmethod
    def _gt_bitmasks(instances: Instances) -> torch.Tensor:
        """
        Returns:
            (G, H, W) boolean ground-truth masks at the image size of `instances`.
        """
        if not instances.has("gt_masks"):
            raise ValueError(
                "LosNet trains on instance masks, but the batch has none: set MODEL.MASK_ON True "
                "so that the dataset mapper loads them."
            )
        masks = instances.gt_masks
        if isinstance(masks, PolygonMasks):
            masks = BitMasks.from_polygon_masks(masks, *instances.image_size)
        return masks.tensor

    def _mask_targets(self, instances: Instances, padded_size: tuple[int, int]) -> torch.Tensor:
        """
        Returns:
            (G, H / s, W / s) ground-truth masks of the padded image, area-averaged over each
            s x s block (s = the mask head's output stride), in [0, 1].
        """
        masks = self._gt_bitmasks(instances)
        count, height, width = masks.shape
        stride = self.mask_head.out_stride
        padded = masks.new_zeros((count, *padded_size), dtype=torch.uint8)
        padded[:, :height, :width] = masks
        # Block sums of bytes (at most stride^2 <= 255 per block), one axis at a time: 4x
        # faster than a float avg_pool on CPU.
        rows, columns = padded_size[0] // stride, padded_size[1] // stride
        sums = padded.view(count, padded_size[0], columns, stride).sum(-1, dtype=torch.uint8)
        sums = sums.view(count, rows, stride, columns).sum(2, dtype=torch.uint8)
        return sums.to(torch.float32) / stride**2

    # ---------------------------------------------------------------- inference

    def forward_inference(
        self,
        images: ImageList,
        features: list[torch.Tensor],
        predictions,
        mask_features: torch.Tensor,
    ) -> list[Instances]:
        """
        Returns:
            Per image, detections at the network's input size with `pred_boxes`, `scores`,
            `pred_classes` and `mask_logits` (R, H / s, W / s) over the padded image, s the
            mask features' stride (:meth:`postprocess` upsamples them where it pastes them).
            The dynamic mask head runs per image, on that image's detections.
        """
        pred_logits, pred_deltas, pred_quality, pred_controller, *pred_visibility = (
            self._transpose_dense_predictions(predictions, self._prediction_dims())
        )
        anchors = self.anchor_generator(features)
        outputs = []
        for index, image_size in enumerate(images.image_sizes):
            detections = self.inference_single_image(
                anchors,
                [x[index] for x in pred_logits],
                [x[index] for x in pred_deltas],
                [x[index] for x in pred_quality],
                [x[index] for x in pred_controller],
                image_size,
                [x[index] for x in pred_visibility[0]] if pred_visibility else None,
            )
            mask_logits = self.mask_head(
                mask_features[index : index + 1],
                torch.zeros_like(detections.pred_classes),
                detections.locations,
                detections.sizes_of_interest,
                detections.mask_params,
                upsample=False,
            )
            output = Instances(
                detections.image_size,
                pred_boxes=detections.pred_boxes,
                scores=detections.scores,
                pred_classes=detections.pred_classes,
                mask_logits=mask_logits,
            )
            if detections.has("visibility_logits"):
                output.pred_visibility = detections.visibility_logits.sigmoid()
            outputs.append(output)
        return outputs

    def inference_single_image(
        self,
        anchors: list[Boxes],
        logits: list[torch.Tensor],
        deltas: list[torch.Tensor],
        quality: list[torch.Tensor],
        controller: list[torch.Tensor],
        image_size: tuple[int, int],
        visibility: list[torch.Tensor] | None = None,
    ) -> Instances:
        """
        Score every location by sqrt(cls x quality) (eq. 2), keep those above the threshold,
        the top-k per level, then class-aware NMS and the `max_detections_per_image` best.

        Args:
            logits, deltas, quality, controller: per level, (Ri, K), (Ri, 4), (Ri, 1), (Ri, P).
            visibility: per level, (Ri, 1) logits, if the head predicts them.

        Returns:
            Instances with `pred_boxes`, `scores`, `pred_classes`, the `locations`,
            `sizes_of_interest` and `mask_params` the dynamic mask head needs, and with
            `visibility` their `visibility_logits`.
        """
        candidates = []
        levels = zip(
            anchors, logits, deltas, quality, controller, self.sizes_of_interest, strict=True
        )
        for level, (
            anchors_i,
            logits_i,
            deltas_i,
            quality_i,
            controller_i,
            size_of_interest,
        ) in enumerate(levels):
            scores = torch.sqrt(logits_i.sigmoid() * quality_i.sigmoid())  # (Ri, K)
            keep = scores > self.test_score_thresh
            scores = scores[keep]
            kept = torch.nonzero(keep)  # (M, 2): anchor, class
            # shape[0] is a tensor while tracing for export: keep the count data-dependent.
            num_kept = scores.shape[0]
            if isinstance(num_kept, torch.Tensor):
                num_topk = torch.clamp(num_kept, max=self.test_topk_candidates)
            else:
                num_topk = min(num_kept, self.test_topk_candidates)
            scores, order = scores.topk(num_topk)
            anchor_indices, classes = kept[order].unbind(dim=1)
            boxes = self.box2box_transform.apply_deltas(
                deltas_i[anchor_indices], anchors_i.tensor[anchor_indices]
            )
            candidate = Instances(
                image_size,
                pred_boxes=Boxes(boxes),
                scores=scores,
                pred_classes=classes,
                locations=anchors_i.get_centers()[anchor_indices],
                sizes_of_interest=torch.full_like(scores, float(size_of_interest)),
                mask_params=controller_i[anchor_indices],
            )
            if visibility is not None:
                candidate.visibility_logits = visibility[level][anchor_indices, 0]
            candidates.append(candidate)
        detections = Instances.cat(candidates)
        keep = batched_nms(
            detections.pred_boxes.tensor,
            detections.scores,
            detections.pred_classes,
            self.test_nms_thresh,
        )
        return detections[keep[: self.max_detections_per_image]]

    def postprocess(self, results: Instances, output_height: int, output_width: int) -> Instances:
        """
        Bring detections from the network's input size to the requested output size.

        Args:
            results: from :meth:`forward_inference`, for one image.

        Returns:
            Instances of size (output_height, output_width) with `pred_boxes`, `scores`,
            `pred_classes`, boolean `pred_masks` (R, output_height, output_width) and, if the
            model predicts it, `pred_visibility` (R,) in [0, 1].
        """
        input_height, input_width = results.image_size
        boxes = results.pred_boxes.clone()
        boxes.scale(output_width / input_width, output_height / input_height)
        boxes.clip((output_height, output_width))
        masks = paste_masks(
            results.mask_logits,
            boxes.tensor,
            self.mask_head.in_stride,
            (input_height, input_width),
            (output_height, output_width),
            self.mask_paste_region,
            self.mask_head.upsample_factor,
        )
        processed = Instances(
            (output_height, output_width),
            pred_boxes=boxes,
            scores=results.scores,
            pred_classes=results.pred_classes,
            pred_masks=masks,
        )
        if results.has("pred_visibility"):
            processed.pred_visibility = results.pred_visibility
        return processed
