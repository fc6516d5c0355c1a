import math

import torch
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils

from .images import ImageReadError

__all__ = ["CheckedDatasetMapper"]


class CheckedDatasetMapper(DatasetMapper):
    """
    Detectron2's :class:`DatasetMapper` whose image-reading errors name the file (PIL's message
    for a truncated image does not), and whose instances carry `gt_visibility` (N,) when the
    annotations give a "visible_fraction" (synthetic ore; NaN for an annotation without one).
    """

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except OSError as e:
            raise ImageReadError(f"Cannot read image {dataset_dict['file_name']}: {e}") from e

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        """Detectron2's, keeping each instance's visible fraction beside it."""
        for annotation in dataset_dict["annotations"]:
            if not self.use_instance_mask:
                annotation.pop("segmentation", None)
            if not self.use_keypoint:
                annotation.pop("keypoints", None)
        annotations = [
            utils.transform_instance_annotations(
                a, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
            )
            for a in dataset_dict.pop("annotations")
            if a.get("iscrowd", 0) == 0
        ]
        instances = utils.annotations_to_instances(
            annotations, image_shape, mask_format=self.instance_mask_format
        )
        if any("visible_fraction" in a for a in annotations):
            fractions = [float(a.get("visible_fraction", math.nan)) for a in annotations]
            instances.gt_visibility = torch.tensor(fractions, dtype=torch.float32)
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
