"""
Shape shorthand: B images; R cells of all levels; C classes; E mask feature channels; K
candidates; H_m x W_m mask features at stride 4 of the padded batch.
"""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import BitMasks, ImageList, Instances, PolygonMasks
from torch import nn

from .config import check_choice
from .head import SOLOv2InstanceHead, solov2_losses
from .mask_branch import SOLOv2MaskBranch
from .matrix_nms import matrix_nms, point_nms
from .targets import assign_grid_cells, center_of_mass, mask_targets

__all__ = ["SOLOv2"]

# Masks are resized to the output size this many at a time, to bound memory.
_PASTE_CHUNK = 32


@META_ARCH_REGISTRY.register()
class SOLOv2(nn.Module):
    """
    SOLOv2 (Wang et al., "SOLOv2: Dynamic and Fast Instance Segmentation", NeurIPS 2020) and its
    street-scene variant (Liu & Kong, KSII TIIS 2024), which changes the backbone (CSPAM,
    TWFPN), the mask feature fusion (CSMF) and the loss (AML) through the config.

    Each cell of an S x S grid per pyramid level predicts class scores and a dynamic 1 x 1
    kernel; the kernel applied to the unified mask features gives the mask of the object whose
    centre falls in the cell. At inference the masks are re-scored by their mean probability,
    Matrix NMS decays the scores of overlapping masks of a class, and the masks are returned at
    the image's resolution with their bounding boxes.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone,
        instance_head: SOLOv2InstanceHead,
        mask_branch: SOLOv2MaskBranch,
        instance_in_features: list[str],
        mask_in_features: list[str],
        num_classes: int,
        scale_ranges: list[tuple[float, float]],
        sigma: float,
        loss: str,
        focal_loss_alpha: float,
        focal_loss_gamma: float,
        focal_loss_weight: float,
        mask_loss_weight: float,
        score_thresh_test: float,
        candidate_thresh_factor: float,
        candidate_topk_test: int,
        pre_nms_topk_test: int,
        mask_thresh_test: float,
        nms_kernel: str,
        nms_sigma: float,
        max_detections_per_image: int,
        pixel_mean: list[float],
        pixel_std: list[float],
    ):
        """
        Args:
            backbone: a Detectron2 backbone with the instance and mask input features.
            instance_head, mask_branch: the category and kernel branches, the mask branch.
            scale_ranges, sigma: of :func:`assign_grid_cells`.
            loss, focal_loss_*, mask_loss_weight: of :func:`solov2_losses`.
            Other arguments: the MODEL.SOLOV2 test keys (see `solov2_street/config.py`).
        """
        super().__init__()
        check_choice("MODEL.SOLOV2.LOSS", loss, ("solov2", "aml"))
        check_choice("MODEL.SOLOV2.NMS_KERNEL", nms_kernel, ("gaussian", "linear"))
        if len(scale_ranges) != len(instance_head.num_grids):
            raise ValueError(
                f"MODEL.SOLOV2.SCALE_RANGES = {scale_ranges}: one per level of NUM_GRIDS = "
                f"{instance_head.num_grids}"
            )
        self.backbone = backbone
        self.instance_head = instance_head
        self.mask_branch = mask_branch
        self.instance_in_features = instance_in_features
        self.mask_in_features = mask_in_features
        self.num_classes = num_classes
        self.scale_ranges = [tuple(r) for r in scale_ranges]
        self.sigma = sigma
        self.loss = loss
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.focal_loss_weight = focal_loss_weight
        self.mask_loss_weight = mask_loss_weight
        self.score_thresh_test = score_thresh_test
        self.candidate_thresh_factor = candidate_thresh_factor
        self.candidate_topk_test = candidate_topk_test
        self.pre_nms_topk_test = pre_nms_topk_test
        self.mask_thresh_test = mask_thresh_test
        self.nms_kernel = nms_kernel
        self.nms_sigma = nms_sigma
        self.max_detections_per_image = max_detections_per_image
        shapes = backbone.output_shape()
        self.mask_stride = shapes[mask_in_features[0]].stride
        # Strides of the instance levels after SOLOv2's resizing (first halved, last at the
        # previous level's size): a candidate mask needs more pixels than its level's stride.
        strides = [shapes[name].stride for name in instance_in_features]
        self.level_strides = [2 * strides[0], *strides[1:-1], strides[-2]]
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        solov2 = cfg.MODEL.SOLOV2
        for key in ("INSTANCE_IN_FEATURES", "MASK_IN_FEATURES"):
            missing = [name for name in solov2[key] if name not in shapes]
            if missing:
                raise ValueError(
                    f"MODEL.SOLOV2.{key} names {missing}, which the backbone "
                    f"{cfg.MODEL.BACKBONE.NAME} does not output (it outputs {sorted(shapes)})"
                )
        instance_shapes = [shapes[name] for name in solov2.INSTANCE_IN_FEATURES]
        return {
            "backbone": backbone,
            "instance_head": SOLOv2InstanceHead(cfg, instance_shapes),
            "mask_branch": SOLOv2MaskBranch(cfg, shapes),
            "instance_in_features": list(solov2.INSTANCE_IN_FEATURES),
            "mask_in_features": list(solov2.MASK_IN_FEATURES),
            "num_classes": solov2.NUM_CLASSES,
            "scale_ranges": solov2.SCALE_RANGES,
            "sigma": solov2.SIGMA,
            "loss": solov2.LOSS,
            "focal_loss_alpha": solov2.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": solov2.FOCAL_LOSS_GAMMA,
            "focal_loss_weight": solov2.FOCAL_LOSS_WEIGHT,
            "mask_loss_weight": solov2.DICE_LOSS_WEIGHT,
            "score_thresh_test": solov2.SCORE_THRESH_TEST,
            "candidate_thresh_factor": solov2.CANDIDATE_THRESH_FACTOR,
            "candidate_topk_test": solov2.CANDIDATE_TOPK_TEST,
            "pre_nms_topk_test": solov2.PRE_NMS_TOPK_TEST,
            "mask_thresh_test": solov2.MASK_THRESH_TEST,
            "nms_kernel": solov2.NMS_KERNEL,
            "nms_sigma": solov2.NMS_SIGMA,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        return ImageList.from_tensors(
            images,
            self.backbone.size_divisibility,
            padding_constraints=self.backbone.padding_constraints,
        )

    def forward(self, batched_inputs: list[dict]):
        """
        Args:
            batched_inputs: Detectron2's model inputs: per image a dict with "image" (3, H, W),
                in training "instances" with gt_boxes, gt_classes and gt_masks, at inference
                optionally the output "height" and "width".

        Returns:
            In training, {"loss_cate", "loss_mask"}; at inference, per image
            {"instances": Instances} with pred_masks (R, height, width) bool, pred_boxes (the
            masks' boxes), scores and pred_classes.
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        category_logits, kernels = self.instance_head(
            [features[name] for name in self.instance_in_features]
        )
        mask_features = self.mask_branch([features[name] for name in self.mask_in_features])
        # (B, R, C) and (B, R, E): cells of all levels, level by level, row by row.
        category_logits = cat([x.flatten(2) for x in category_logits], dim=2).transpose(1, 2)
        kernels = cat([x.flatten(2) for x in kernels], dim=2).transpose(1, 2)
        if self.training:
            padded_size = tuple(images.tensor.shape[-2:])
            targets = [
                self._image_targets(x["instances"].to(self.device), padded_size)
                for x in batched_inputs
            ]
            return solov2_losses(
                category_logits,
                kernels,
                mask_features,
                targets,
                loss=self.loss,
                focal_alpha=self.focal_loss_alpha,
                focal_gamma=self.focal_loss_gamma,
                focal_weight=self.focal_loss_weight,
                mask_weight=self.mask_loss_weight,
            )
        return self._inference(batched_inputs, images, category_logits, kernels, mask_features)

    def _image_targets(self, instances: Instances, padded_size: tuple[int, int]) -> dict:
        """The targets of one image for :func:`solov2_losses`."""
        if not instances.has("gt_masks"):
            raise ValueError(
                "SOLOv2 trains on instance masks, but the batch has none: set MODEL.MASK_ON True "
                "so that the dataset mapper loads them"
            )
        masks = instances.gt_masks
        if isinstance(masks, PolygonMasks):
            masks = BitMasks.from_polygon_masks(masks, *instances.image_size)
        masks = masks.tensor.to(torch.bool)
        pairs = assign_grid_cells(
            masks,
            instances.gt_boxes.tensor,
            padded_size,
            self.instance_head.num_grids,
            self.scale_ranges,
            self.sigma,
        )
        # (x, y) of the pixel centres' mean, in units of the padded width and height.
        padded_wh = torch.tensor(padded_size[::-1], dtype=torch.float32, device=masks.device)
        centroids = (center_of_mass(masks).flip(1) + 0.5) / padded_wh
        return {
            "pairs": pairs,
            "classes": instances.gt_classes,
            "masks": mask_targets(masks, padded_size, self.mask_stride),
            "centroids": centroids,
        }

    # ---------------------------------------------------------------- inference

    def _inference(self, batched_inputs, images, category_logits, kernels, mask_features):
        level_sizes = [size * size for size in self.instance_head.num_grids]
        cell_strides = torch.repeat_interleave(
            torch.tensor(self.level_strides, device=self.device),
            torch.tensor(level_sizes, device=self.device),
        )
        # Point NMS on each level's (B, C, S, S) probabilities.
        probs = []
        for logits, size in zip(
            category_logits.split(level_sizes, dim=1), self.instance_head.num_grids, strict=True
        ):
            maps = logits.transpose(1, 2).reshape(len(logits), self.num_classes, size, size)
            probs.append(point_nms(maps.sigmoid()).flatten(2))
        probs = cat(probs, dim=2).transpose(1, 2)  # (B, R, C)
        results = []
        for index, (inputs, image_size) in enumerate(
            zip(batched_inputs, images.image_sizes, strict=True)
        ):
            detections = self.inference_single_image(
                probs[index], kernels[index], mask_features[index], cell_strides, image_size
            )
            height = inputs.get("height", image_size[0])
            width = inputs.get("width", image_size[1])
            results.append({"instances": self.postprocess(detections, height, width)})
        return results

    def inference_single_image(
        self,
        probs: torch.Tensor,
        kernels: torch.Tensor,
        mask_features: torch.Tensor,
        cell_strides: torch.Tensor,
        image_size: tuple[int, int],
    ) -> Instances:
        """
        Candidates, their masks, maskness re-scoring, Matrix NMS and the final threshold.

        Args:
            probs: (R, C) category probabilities after point NMS.
            kernels: (R, E).
            mask_features: (E, H_m, W_m).
            cell_strides: (R,) the stride of each cell's level.
            image_size: (H, W) of the image in the network's input.

        Returns:
            Instances of size `image_size` with `mask_probs` (N, H_m, W_m) over the padded
            image, `scores` and `pred_classes`, by descending score.
        """
        candidates = torch.nonzero(probs > self.candidate_thresh_factor * self.score_thresh_test)
        scores = probs[candidates[:, 0], candidates[:, 1]]
        if len(scores) > self.candidate_topk_test:
            scores, best = scores.topk(self.candidate_topk_test)
            candidates = candidates[best]
        cells, classes = candidates.unbind(dim=1)
        mask_probs = (kernels[cells] @ mask_features.flatten(1)).sigmoid()  # (K, H_m W_m)
        masks = mask_probs > self.mask_thresh_test
        areas = masks.sum(dim=1).to(scores.dtype)
        keep = areas > cell_strides[cells]
        mask_probs, masks, areas = mask_probs[keep], masks[keep], areas[keep]
        scores, classes = scores[keep], classes[keep]
        # Maskness: the mean probability inside the binarised mask.
        scores = scores * (mask_probs * masks).sum(dim=1) / areas
        scores, order = scores.sort(descending=True)
        order = order[: self.pre_nms_topk_test]
        scores = scores[: self.pre_nms_topk_test]
        height, width = mask_features.shape[-2:]
        scores = matrix_nms(
            masks[order].view(-1, height, width),
            classes[order],
            scores,
            kernel=self.nms_kernel,
            sigma=self.nms_sigma,
        )
        kept = torch.nonzero(scores >= self.score_thresh_test)[:, 0]
        scores, best = scores[kept].sort(descending=True)
        chosen = order[kept[best[: self.max_detections_per_image]]]
        return Instances(
            image_size,
            mask_probs=mask_probs[chosen].view(-1, height, width),
            scores=scores[: self.max_detections_per_image],
            pred_classes=classes[chosen],
        )

    def postprocess(self, results: Instances, output_height: int, output_width: int) -> Instances:
        """
        Masks from the padded stride-4 map to the requested output size: upsampled to the
        padded input, cropped to the image, resized (Detectron2's `sem_seg_postprocess`
        pattern) and binarised; boxes are the masks' bounding boxes.

        Args:
            results: from :meth:`inference_single_image`.

        Returns:
            Instances of size (output_height, output_width) with `pred_masks` (N, H, W) bool,
            `pred_boxes`, `scores` and `pred_classes`.
        """
        input_height, input_width = results.image_size
        masks = []
        for probs in results.mask_probs.split(_PASTE_CHUNK):
            probs = F.interpolate(
                probs[:, None], scale_factor=self.mask_stride, mode="bilinear", align_corners=False
            )[:, :, :input_height, :input_width]
            probs = F.interpolate(
                probs, size=(output_height, output_width), mode="bilinear", align_corners=False
            )
            masks.append(probs[:, 0] > self.mask_thresh_test)
        if masks:
            masks = cat(masks)
        else:
            masks = torch.zeros(
                (0, output_height, output_width), dtype=torch.bool, device=self.device
            )
        return Instances(
            (output_height, output_width),
            pred_masks=masks,
            pred_boxes=BitMasks(masks).get_bounding_boxes(),
            scores=results.scores,
            pred_classes=results.pred_classes,
        )
