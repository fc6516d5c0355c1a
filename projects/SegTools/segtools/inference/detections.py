"""Detections in image coordinates whose masks are kept over their own box only."""

from dataclasses import dataclass

import numpy as np

from ..data.coco_format import encode_mask, mask_box

__all__ = ["Detection", "detections_from_instances"]


@dataclass
class Detection:
    """
    One predicted instance of an image. The mask is stored over its tight box, so that thousands
    of particles of a 4000 x 3000 photo fit in memory.

    Attributes:
        score: the model's score.
        category_id: the model's (contiguous) class index.
        box: (x0, y0, x1, y1) predicted box in image pixels.
        mask_origin: (x, y) image pixel of mask[0, 0].
        mask: (h, w) boolean mask over its tight box, at least one pixel set.
    """

    score: float
    category_id: int
    box: tuple
    mask_origin: tuple
    mask: np.ndarray

    @property
    def mask_box(self) -> tuple:
        """(x0, y0, x1, y1) of the mask's pixels, end-exclusive."""
        x, y = self.mask_origin
        return (x, y, x + self.mask.shape[1], y + self.mask.shape[0])

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def centroid(self) -> tuple:
        """(x, y) mean of the pixel centres, in image pixels."""
        rows, columns = np.nonzero(self.mask)
        return (
            self.mask_origin[0] + columns.mean() + 0.5,
            self.mask_origin[1] + rows.mean() + 0.5,
        )

    def full_mask(self, height: int, width: int) -> np.ndarray:
        """(height, width) boolean mask of the whole image."""
        full = np.zeros((height, width), dtype=bool)
        x0, y0, x1, y1 = self.mask_box
        full[y0:y1, x0:x1] = self.mask
        return full

    def to_coco_result(self, image_id, height: int, width: int) -> dict:
        """A COCO results entry: image_id, category_id (1-based), bbox XYWH, score, RLE."""
        x0, y0, x1, y1 = self.box
        return {
            "image_id": image_id,
            "category_id": self.category_id + 1,
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "score": float(self.score),
            "segmentation": encode_mask(self.mask, self.mask_origin, (height, width)),
        }


def detections_from_instances(instances, offset=(0, 0)) -> list:
    """
    Args:
        instances: Detectron2 Instances on the CPU with `pred_boxes`, `scores`, `pred_classes`
            and boolean `pred_masks` (N, H, W).
        offset: (x, y) of the instances' image within a larger image.

    Returns:
        list[Detection] in image coordinates, in the input order; instances whose mask is empty
        are left out.
    """
    dx, dy = offset
    masks = instances.pred_masks.numpy()
    boxes = instances.pred_boxes.tensor.numpy()
    detections = []
    for mask, box, score, category in zip(
        masks, boxes, instances.scores.tolist(), instances.pred_classes.tolist(), strict=True
    ):
        pixels_box = mask_box(mask)
        if pixels_box is None:
            continue
        x0, y0, x1, y1 = pixels_box
        detections.append(
            Detection(
                score=score,
                category_id=category,
                box=(box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy),
                mask_origin=(x0 + dx, y0 + dy),
                mask=mask[y0:y1, x0:x1].copy(),
            )
        )
    return detections
