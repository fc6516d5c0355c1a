from .boundary import COCOBoundaryEvaluator
from .build import build_evaluator
from .cityscapes import CityscapesInstanceEvaluatorNumpyCompat, CityscapesSubsetInstanceEvaluator
from .coco import COCOEvaluatorWithVisibility
from .compat import cityscapes_evaluation_compat, removed_numpy_aliases
from .lvis import LVISEvaluatorNumpyCompat

__all__ = [
    "COCOBoundaryEvaluator",
    "COCOEvaluatorWithVisibility",
    "CityscapesInstanceEvaluatorNumpyCompat",
    "CityscapesSubsetInstanceEvaluator",
    "LVISEvaluatorNumpyCompat",
    "build_evaluator",
    "cityscapes_evaluation_compat",
    "removed_numpy_aliases",
]
