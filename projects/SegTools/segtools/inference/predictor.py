"""Test-time settings that a predictor of any model in this repository shares."""

__all__ = ["SCORE_THRESHOLD_KEYS", "set_test_score_threshold"]

# The test score thresholds of the meta-architectures in this repository and in Detectron2.
SCORE_THRESHOLD_KEYS = (
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "MODEL.RETINANET.SCORE_THRESH_TEST",
    "MODEL.LOSNET.SCORE_THRESH_TEST",
)


def set_test_score_threshold(cfg, value: float) -> list:
    """
    Set every test score threshold that `cfg` has to `value`.

    Returns:
        The keys that were set.
    """
    changed = []
    for key in SCORE_THRESHOLD_KEYS:
        *parents, leaf = key.split(".")
        node = cfg
        for name in parents:
            node = node.get(name, {})
        if leaf in node:
            node[leaf] = float(value)
            changed.append(key)
    return changed
