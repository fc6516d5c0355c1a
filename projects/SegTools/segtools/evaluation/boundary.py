"""
Boundary AP (Cheng et al., "Boundary IoU: Improving Object-Centric Image Segmentation
Evaluation", CVPR 2021) beside COCO's box and mask AP, computed by faster-coco-eval's "boundary"
IoU type: a detection matches with min(mask IoU, boundary IoU), the boundary being each mask
minus its erosion by 2 % of the image diagonal.
"""

import copy

from detectron2.utils.logger import create_small_table

from .coco import COCOEvaluatorWithVisibility

__all__ = ["COCOBoundaryEvaluator"]

# The metrics of COCOeval's stats that Detectron2 reports, in their order there.
_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class COCOBoundaryEvaluator(COCOEvaluatorWithVisibility):
    """
    Detectron2's :class:`COCOEvaluator` whose results also hold "boundary": Boundary AP, AP50,
    AP75 and by object size (by mask area, as mask AP), over the same detections as "segm";
    visibilities kept as :class:`COCOEvaluatorWithVisibility` does.
    """

    def __init__(self, *args, dilation_ratio: float = 0.02, **kwargs):
        """
        Args:
            dilation_ratio: the boundary's width as a fraction of the image diagonal.
            args, kwargs: those of Detectron2's :class:`COCOEvaluator`.
        """
        super().__init__(*args, **kwargs)
        self._dilation_ratio = dilation_ratio

    def _eval_predictions(self, predictions, img_ids=None):
        # The parent maps the results' category ids back to the dataset's in place: give it a copy.
        super()._eval_predictions(copy.deepcopy(predictions), img_ids=img_ids)
        if self._do_evaluation and (not self._tasks or "segm" in self._tasks):
            results = [r for p in predictions for r in p["instances"] if "segmentation" in r]
            self._results["boundary"] = self._boundary_ap(results, img_ids)

    def _boundary_ap(self, results, img_ids) -> dict:
        """{metric: value} of Boundary AP for COCO-format `results` (contiguous class ids)."""
        from faster_coco_eval import COCO, COCOeval_faster

        if not results:
            self._logger.warning("No predictions from the model: Boundary AP is NaN")
            return dict.fromkeys(_METRICS, float("nan"))
        to_dataset_id = {
            contiguous: dataset_id
            for dataset_id, contiguous in self._metadata.get(
                "thing_dataset_id_to_contiguous_id", {}
            ).items()
        }
        detections = []
        for result in results:
            # Without "bbox", object sizes come from the masks, as for Detectron2's mask AP.
            detection = {k: v for k, v in result.items() if k != "bbox"}
            detection["category_id"] = to_dataset_id.get(
                result["category_id"], result["category_id"]
            )
            detections.append(detection)
        ground_truth = COCO(copy.deepcopy(self._coco_api.dataset))
        evaluation = COCOeval_faster(
            ground_truth,
            ground_truth.loadRes(detections),
            iouType="boundary",
            boundary_dilation_ratio=self._dilation_ratio,
            print_function=self._logger.info,
        )
        if self._max_dets_per_image is not None:
            evaluation.params.maxDets = list(self._max_dets_per_image)
        if img_ids is not None:
            evaluation.params.imgIds = img_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        metrics = {
            name: float(value * 100) if value >= 0 else float("nan")
            for name, value in zip(_METRICS, evaluation.stats, strict=False)
        }
        self._logger.info("Evaluation results for Boundary AP:\n" + create_small_table(metrics))
        return metrics
