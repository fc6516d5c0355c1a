"""Pictures of predictions, drawn with Detectron2's Visualizer."""

import numpy as np
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["draw_coco_results"]

# Above this many instances, labels would hide the particles: masks only.
_MAX_LABELLED = 50


def draw_coco_results(image: np.ndarray, results: list, metadata) -> np.ndarray:
    """
    Args:
        image: (H, W, 3) BGR image.
        results: COCO results entries of this image (RLE "segmentation", 1-based category_id).
        metadata: Detectron2 metadata with `thing_classes`, for the labels.

    Returns:
        (H, W, 3) BGR picture with each instance's mask (and, for a few instances, its label).
    """
    visualizer = Visualizer(image[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
    labels = None
    if len(results) <= _MAX_LABELLED:
        classes = getattr(metadata, "thing_classes", None)
        labels = [
            f"{classes[r['category_id'] - 1] if classes else r['category_id']} {r['score']:.0%}"
            for r in results
        ]
    drawn = visualizer.overlay_instances(
        masks=[r["segmentation"] for r in results], labels=labels, alpha=0.4
    )
    return drawn.get_image()[:, :, ::-1]
