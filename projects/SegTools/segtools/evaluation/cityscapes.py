"""Cityscapes instance evaluation with today's NumPy, and over a subset of the classes."""

import glob
import os
from collections import OrderedDict

import numpy as np
from detectron2.evaluation import CityscapesInstanceEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from .compat import cityscapes_evaluation_compat

__all__ = ["CityscapesInstanceEvaluatorNumpyCompat", "CityscapesSubsetInstanceEvaluator"]


class CityscapesInstanceEvaluatorNumpyCompat(CityscapesInstanceEvaluator):
    """
    Detectron2's :class:`CityscapesInstanceEvaluator`, runnable with `cityscapesscripts` 2.3.0
    and NumPy 2 (see :func:`cityscapes_evaluation_compat`).
    """

    def evaluate(self):
        with cityscapes_evaluation_compat():
            return super().evaluate()


class CityscapesSubsetInstanceEvaluator(CityscapesInstanceEvaluator):
    """
    Detectron2's :class:`CityscapesInstanceEvaluator` for a dataset with a subset of the 8
    Cityscapes instance classes (such as the 5 street classes): the Cityscapes API scores all 8
    classes against the ground-truth PNGs, which still hold the dropped classes; this evaluator
    averages AP and AP50 over the dataset's `thing_classes` only, and reports each of them.

    Results are under the key "segm_cityscapes", so they sit beside COCO-style "segm" results.
    """

    def evaluate(self):
        comm.synchronize()
        if comm.get_rank() > 0:
            return None
        import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cityscapes_eval

        args = cityscapes_eval.args
        args.predictionPath = os.path.abspath(self._temp_dir)
        args.predictionWalk = None
        args.JSONOutput = False
        args.colorized = False
        args.quiet = True
        args.gtInstancesFile = os.path.join(self._temp_dir, "gtInstances.json")

        gt_dir = PathManager.get_local_path(self._metadata.gt_dir)
        gt_files = sorted(glob.glob(os.path.join(gt_dir, "*", "*_gtFine_instanceIds.png")))
        if not gt_files:
            raise FileNotFoundError(f"No *_gtFine_instanceIds.png under {gt_dir}/<city>/")
        prediction_files = [cityscapes_eval.getPrediction(gt, args) for gt in gt_files]
        with cityscapes_evaluation_compat():
            results = cityscapes_eval.evaluateImgLists(prediction_files, gt_files, args)
        per_class = results["averages"]["classes"]
        self._working_dir.cleanup()

        classes = list(self._metadata.thing_classes)
        ap = np.array([per_class[c]["ap"] for c in classes])
        ap50 = np.array([per_class[c]["ap50%"] for c in classes])
        # A class with neither ground truth nor predictions scores NaN and is left out, as the
        # Cityscapes API does for its own average.
        segm = {"AP": float(np.nanmean(ap) * 100), "AP50": float(np.nanmean(ap50) * 100)}
        segm.update({f"AP-{c}": float(v * 100) for c, v in zip(classes, ap, strict=True)})
        return OrderedDict(segm_cityscapes=segm)
