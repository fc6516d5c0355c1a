from detectron2.evaluation import LVISEvaluator

from .compat import removed_numpy_aliases

__all__ = ["LVISEvaluatorNumpyCompat"]


class LVISEvaluatorNumpyCompat(LVISEvaluator):
    """Detectron2's :class:`LVISEvaluator`, runnable with `lvis` 0.5.3 and NumPy >= 1.24."""

    def evaluate(self):
        with removed_numpy_aliases():
            return super().evaluate()
