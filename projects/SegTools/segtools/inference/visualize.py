"""Pictures of predictions and of dataset annotations, drawn with Detectron2's Visualizer."""

import cv2
import numpy as np
from detectron2.utils.visualizer import ColorMode, GenericMask, Visualizer

from ..data.images import read_image

__all__ = ["draw_dataset_grid", "draw_detections"]

# Above this many instances, labels would hide the particles: masks only.
_MAX_LABELLED = 50


def _image_polygons(detection) -> list:
    """
    The outlines Detectron2 draws for `detection`'s mask, as [x0, y0, x1, y1, ...] arrays in image
    pixels, traced over the mask's box only.
    """
    # A one-pixel margin: GenericMask refuses masks two pixels wide (it would read them as
    # polygon arrays), and outlines of a mask that fills its box close inside the margin.
    mask = np.pad(detection.mask, 1)
    origin = np.array(detection.mask_origin, dtype=np.float64) - 1
    return [
        (polygon.reshape(-1, 2) + origin).reshape(-1)
        for polygon in GenericMask(mask, *mask.shape).polygons
    ]


class _OutlinedMask(GenericMask):
    """
    Detectron2's mask of one particle, built from its outlines, that knows its area.

    GenericMask.area() rasterises the mask over the whole frame and keeps it: 12 MB per particle
    on a 4000 x 3000 photo, more than memory holds for a dense belt. The Visualizer asks every
    mask its area (to draw the large ones first); here it is the pixel count of the box mask.
    """

    def __init__(self, polygons: list, area: int, height: int, width: int):
        super().__init__(polygons, height, width)
        self._pixel_count = area

    def area(self) -> int:
        return self._pixel_count


def draw_detections(image: np.ndarray, detections: list, metadata) -> np.ndarray:
    """
    Args:
        image: (H, W, 3) BGR image.
        detections: list[Detection] of this image (see `detections.py`).
        metadata: Detectron2 metadata with `thing_classes`, for the labels.

    Returns:
        (H, W, 3) BGR picture with each instance's mask (and, for a few instances, its label).
        Masks too small to give an outline (a pixel or two) are not drawn.
    """
    outlined = [(d, polygons) for d in detections if (polygons := _image_polygons(d))]
    visualizer = Visualizer(image[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
    labels = None
    if len(outlined) <= _MAX_LABELLED:
        classes = getattr(metadata, "thing_classes", None)
        labels = [
            f"{classes[d.category_id] if classes else d.category_id + 1} {d.score:.0%}"
            for d, _ in outlined
        ]
    height, width = image.shape[:2]
    masks = [_OutlinedMask(polygons, d.area, height, width) for d, polygons in outlined]
    drawn = visualizer.overlay_instances(masks=masks, labels=labels, alpha=0.4)
    return drawn.get_image()[:, :, ::-1]


def draw_dataset_grid(records: list, metadata, scale: float = 1.0) -> np.ndarray:
    """
    Args:
        records: Detectron2 dataset dicts (file_name and annotations).
        metadata: Detectron2 metadata of their dataset.
        scale: size of the drawn images relative to the originals.

    Returns:
        (H, W, 3) BGR picture: per record a column, its image above its drawn annotations.

    Raises:
        ImageReadError: if an image cannot be read whole.
    """
    columns = []
    for record in records:
        image = read_image(record["file_name"])
        visualizer = Visualizer(image[:, :, ::-1], metadata, scale, ColorMode.IMAGE)
        drawn = visualizer.draw_dataset_dict(record).get_image()[:, :, ::-1]
        raw = cv2.resize(image, (drawn.shape[1], drawn.shape[0]))
        columns.append(np.vstack([raw, drawn]))
    height = max(c.shape[0] for c in columns)
    return np.hstack([np.pad(c, ((0, height - c.shape[0]), (0, 0), (0, 0))) for c in columns])
