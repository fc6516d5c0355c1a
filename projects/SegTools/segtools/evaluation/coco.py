from detectron2.evaluation import COCOEvaluator

__all__ = ["COCOEvaluatorWithVisibility"]


class COCOEvaluatorWithVisibility(COCOEvaluator):
    """
    Detectron2's :class:`COCOEvaluator` whose results file (coco_instances_results.json) keeps
    each detection's estimated visible fraction as "visibility", for a model that predicts it
    (`pred_visibility`), so that particle-size tools can size the particles seen nearly whole.
    """

    def process(self, inputs, outputs):
        count = len(self._predictions)
        super().process(inputs, outputs)
        # COCOEvaluator appends one entry per output that has instances, in order.
        with_instances = [output for output in outputs if "instances" in output]
        for prediction, output in zip(self._predictions[count:], with_instances, strict=True):
            instances = output["instances"]
            if not instances.has("pred_visibility"):
                continue
            visibilities = instances.pred_visibility.tolist()
            for result, visibility in zip(prediction["instances"], visibilities, strict=True):
                result["visibility"] = visibility
