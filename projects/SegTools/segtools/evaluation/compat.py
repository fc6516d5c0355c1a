"""
Run the evaluation code of the latest `lvis` and `cityscapesscripts` releases on PyPI with
today's NumPy. Each fix is active only while an evaluation runs and is undone afterwards.
"""

import contextlib
import json
import os

import numpy as np

__all__ = ["removed_numpy_aliases", "cityscapes_evaluation_compat"]


def _in1d(ar1, ar2, assume_unique=False, invert=False):
    return np.isin(ar1, ar2, assume_unique=assume_unique, invert=invert).ravel()


# Names the releases still call, with what they always meant:
# `lvis` 0.5.3 calls np.float (removed in NumPy 1.24) in LVISEval.accumulate;
# `cityscapesscripts` 2.3.0 calls np.in1d (removed in NumPy 2.4) in its instance evaluation.
_REMOVED_ALIASES = {"float": float, "in1d": _in1d}


@contextlib.contextmanager
def removed_numpy_aliases():
    """Provide the NumPy names above while the block runs; names NumPy still has are left alone."""
    added = [name for name in _REMOVED_ALIASES if not hasattr(np, name)]
    for name in added:
        setattr(np, name, _REMOVED_ALIASES[name])
    try:
        yield
    finally:
        for name in added:
            delattr(np, name)


@contextlib.contextmanager
def cityscapes_evaluation_compat():
    """
    Fixes for `cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling` 2.3.0:

    * the NumPy aliases of :func:`removed_numpy_aliases`;
    * its JSON writer fails on NumPy 2 scalars (np.count_nonzero returns np.int64 now) and writes
      `matches.json` into the working folder: the replacement converts NumPy scalars and puts
      files given by a bare name into the evaluation's prediction folder instead.
    """
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cityscapes_eval

    def write_json(dictionary, file_name):
        if not os.path.dirname(file_name):
            file_name = os.path.join(cityscapes_eval.args.predictionPath, file_name)
        with open(file_name, "w") as f:
            json.dump(
                dictionary,
                f,
                default=lambda o: o.item() if isinstance(o, np.generic) else o.__dict__,
                sort_keys=True,
                indent=4,
            )

    original = cityscapes_eval.writeDict2JSON
    cityscapes_eval.writeDict2JSON = write_json
    try:
        with removed_numpy_aliases():
            yield
    finally:
        cityscapes_eval.writeDict2JSON = original
