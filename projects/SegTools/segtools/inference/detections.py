"""Detections in image coordinates whose masks are kept over their own box only."""

import numpy as np

from ..data.coco_format import encode_mask, mask_box

__all__ = ["Detection", "detections_from_instances"]


class Detection:
    """
    One predicted instance of an image. Its mask is kept over its tight box, bit-packed: a
    detection takes (box pixels) / 8 bytes plus about 450 bytes of Python objects, so that the
    tens of thousands of particles of a dense 8000 x 6000 photo fit in memory.

    Attributes:
        score: the model's score.
        category_id: the model's (contiguous) class index.
        box: (x0, y0, x1, y1) predicted box in image pixels.
        mask_origin: (x, y) image pixel of mask[0, 0].
        mask_shape: (h, w) of the mask.
        area: pixels of the mask.
        visibility: the model's estimate of the particle's visible fraction, None if it makes
            none.
    """

    __slots__ = (
        "score", "category_id", "box", "mask_origin", "mask_shape", "area", "visibility", "_bits"
    )  # fmt: skip

    def __init__(
        self,
        score: float,
        category_id: int,
        box: tuple,
        mask_origin: tuple,
        mask,
        visibility: float | None = None,
    ):
        """
        Args:
            score, category_id, box, mask_origin, visibility: see the attributes.
            mask: (h, w) boolean mask over its tight box, at least one pixel set.
        """
        self.visibility = visibility
        self.score = score
        self.category_id = category_id
        self.box = box
        self.mask_origin = mask_origin
        self.mask_shape = mask.shape
        self.area = int(np.count_nonzero(mask))
        self._bits = np.packbits(mask, axis=None)

    @property
    def mask(self) -> np.ndarray:
        """(h, w) boolean mask over its tight box, unpacked anew on each access."""
        height, width = self.mask_shape
        return np.unpackbits(self._bits, count=height * width).view(bool).reshape(height, width)

    @property
    def mask_box(self) -> tuple:
        """(x0, y0, x1, y1) of the mask's pixels, end-exclusive."""
        x, y = self.mask_origin
        return (x, y, x + self.mask_shape[1], y + self.mask_shape[0])

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
        """
        A COCO results entry: image_id, category_id (1-based), bbox XYWH, score, RLE, and the
        visibility if the model estimates it.
        """
        x0, y0, x1, y1 = self.box
        result = {
            "image_id": image_id,
            "category_id": self.category_id + 1,
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "score": float(self.score),
            "segmentation": encode_mask(self.mask, self.mask_origin, (height, width)),
        }
        if self.visibility is not None:
            result["visibility"] = float(self.visibility)
        return result


def detections_from_instances(instances, offset=(0, 0)) -> list:
    """
    Args:
        instances: Detectron2 Instances on the CPU with `pred_boxes`, `scores`, `pred_classes`,
            boolean `pred_masks` (N, H, W) and optionally `pred_visibility` (N,).
        offset: (x, y) of the instances' image within a larger image.

    Returns:
        list[Detection] in image coordinates, in the input order; instances whose mask is empty
        are left out.
    """
    dx, dy = offset
    masks = instances.pred_masks.numpy()
    boxes = instances.pred_boxes.tensor.tolist()
    visibilities = (
        instances.pred_visibility.tolist()
        if instances.has("pred_visibility")
        else [None] * len(instances)
    )
    detections = []
    for mask, box, score, category, visibility in zip(
        masks,
        boxes,
        instances.scores.tolist(),
        instances.pred_classes.tolist(),
        visibilities,
        strict=True,
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
                mask=mask[y0:y1, x0:x1],
                visibility=visibility,
            )
        )
    return detections
