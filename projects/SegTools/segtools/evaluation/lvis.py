"""LVIS evaluation that runs with NumPy >= 1.24."""

import contextlib

import numpy as np
from detectron2.evaluation import LVISEvaluator

__all__ = ["LVISEvaluatorNumpyCompat"]


@contextlib.contextmanager
def _numpy_float_alias():
    """
    Provide `np.float` (removed in NumPy 1.24) while the block runs, then remove it again.

    `lvis` 0.5.3, the latest release on PyPI, still calls `np.float` in `LVISEval.accumulate`
    (fixed upstream but never released); the alias is the builtin `float` it always meant.
    """
    if hasattr(np, "float"):
        yield
        return
    np.float = float
    try:
        yield
    finally:
        del np.float


class LVISEvaluatorNumpyCompat(LVISEvaluator):
    """Detectron2's :class:`LVISEvaluator`, runnable with the `lvis` release on PyPI."""

    def evaluate(self):
        with _numpy_float_alias():
            return super().evaluate()
