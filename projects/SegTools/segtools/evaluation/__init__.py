from .build import build_evaluator
from .cityscapes_subset import CityscapesSubsetInstanceEvaluator
from .lvis import LVISEvaluatorNumpyCompat

__all__ = ["CityscapesSubsetInstanceEvaluator", "LVISEvaluatorNumpyCompat", "build_evaluator"]
