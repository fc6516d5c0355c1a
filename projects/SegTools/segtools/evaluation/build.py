"""Choose the evaluator(s) of a dataset from its metadata."""

import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluators

from ..data.cityscapes_street import ensure_cityscapes_supported
from .boundary import COCOBoundaryEvaluator
from .cityscapes import CityscapesInstanceEvaluatorNumpyCompat, CityscapesSubsetInstanceEvaluator
from .coco import COCOEvaluatorWithVisibility
from .lvis import LVISEvaluatorNumpyCompat

__all__ = ["build_evaluator"]


def build_evaluator(cfg, dataset_name: str, output_folder: str):
    """
    The evaluator for `dataset_name`, chosen by its metadata's `evaluator_type`:

    * "coco": COCOEvaluator (box and mask AP), counting up to TEST.DETECTIONS_PER_IMAGE
      detections per image, so dense ore images are not cut at COCO's default 100, its results
      file keeping the detections' estimated visibility if the model gives one;
    * "lvis": LVISEvaluator;
    * "cityscapes_instance": CityscapesInstanceEvaluator (the 8 classes);
    * "cityscapes_instance_subset": the Cityscapes evaluator averaged over the dataset's own
      classes, plus COCO-style AP.

    With SEGTOOLS.EVAL.BOUNDARY_AP, the COCO-style evaluators also give Boundary AP (results key
    "boundary"); a config without the SEGTOOLS node (plain Detectron2) does not ask for it.
    """
    evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
    max_dets = cfg.TEST.DETECTIONS_PER_IMAGE
    boundary_ap = "SEGTOOLS" in cfg and cfg.SEGTOOLS.EVAL.BOUNDARY_AP
    if boundary_ap and evaluator_type not in ("coco", "cityscapes_instance_subset"):
        raise ValueError(
            f"SEGTOOLS.EVAL.BOUNDARY_AP = True, but dataset '{dataset_name}' is evaluated by "
            f"evaluator_type={evaluator_type!r}: Boundary AP needs a COCO-style evaluator "
            "(coco, cityscapes_instance_subset); set it to False"
        )
    coco_evaluator = COCOBoundaryEvaluator if boundary_ap else COCOEvaluatorWithVisibility
    os.makedirs(output_folder, exist_ok=True)
    if evaluator_type == "coco":
        return coco_evaluator(dataset_name, output_dir=output_folder, max_dets_per_image=max_dets)
    if evaluator_type == "lvis":
        return LVISEvaluatorNumpyCompat(
            dataset_name, output_dir=output_folder, max_dets_per_image=max_dets
        )
    if evaluator_type == "cityscapes_instance":
        ensure_cityscapes_supported()
        return CityscapesInstanceEvaluatorNumpyCompat(dataset_name)
    if evaluator_type == "cityscapes_instance_subset":
        ensure_cityscapes_supported()
        return DatasetEvaluators(
            [
                CityscapesSubsetInstanceEvaluator(dataset_name),
                coco_evaluator(dataset_name, output_dir=output_folder, max_dets_per_image=max_dets),
            ]
        )
    raise NotImplementedError(
        f"No evaluator for dataset '{dataset_name}' with evaluator_type={evaluator_type!r}; "
        "register it with one of: coco, lvis, cityscapes_instance, cityscapes_instance_subset."
    )
