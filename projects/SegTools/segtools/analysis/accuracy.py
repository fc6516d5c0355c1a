"""
How close size distributions measured from masks come to the truth, on the synthetic ore set:
its annotations carry each particle's true equivalent-circle diameter (of the full, unoccluded
shape), its visible fraction and whether it touches the image border.

Three comparisons, each of D50 and D80 by count and by mass (mass proportional to area^1.5, so
to diameter^3, as in the reports):

* ground-truth masks of interior particles at most `max_hidden` hidden, against the true sizes
  of the same particles: the measurement itself;
* ground-truth masks of all interior particles against their true sizes: adds the bias of
  occlusion (a hidden particle shows a smaller mask);
* predicted masks not touching the border against the true sizes of all interior particles: what
  a model on the belt reports, occlusion and segmentation errors included; and against the
  ground-truth masks of the same particles, which is all a count calibration can aim at.

With a model's size correction (:mod:`.size_correction`), the predictions are compared once more,
each weighing its size bin's factor.
"""

from dataclasses import dataclass

import numpy as np

from ..data.coco_input import CocoFormatError, check_ground_truth, read_coco_json
from .coco_particles import iter_particle_tables, load_coco_instances
from .distribution import CumulativeCurve
from .size_correction import SizeCorrection

__all__ = ["DValueComparison", "psd_accuracy"]

_TRUTH_KEYS = ("true_diameter_px", "visible_fraction", "touches_border")


@dataclass(frozen=True)
class DValueComparison:
    """
    D50 and D80 of one set of measured particles against the true sizes, in pixels.

    Attributes:
        subset: which particles (see the module docstring).
        particles: measured particles; truth_particles: particles of the truth.
        weighting: "count" or "mass".
        measured, true: {"D50": ..., "D80": ...}.
        relative_error: (measured - true) / true per D-value.
    """

    subset: str
    particles: int
    truth_particles: int
    weighting: str
    measured: dict
    true: dict
    relative_error: dict


def _d_values(diameters: np.ndarray, weighting: str, counts: np.ndarray | None = None) -> dict:
    counts = np.ones_like(diameters) if counts is None else counts
    weights = counts * diameters**3 if weighting == "mass" else counts
    d50, d80 = CumulativeCurve.from_particles(diameters, weights).size_at_percent([50, 80])
    return {"D50": float(d50), "D80": float(d80)}


def _compare(
    subset: str, measured: np.ndarray, true: np.ndarray, counts: np.ndarray | None = None
) -> list:
    """`counts`: (N,) count weight of each measured particle (default 1)."""
    rows = []
    for weighting in ("count", "mass"):
        got, want = _d_values(measured, weighting, counts), _d_values(true, weighting)
        rows.append(
            DValueComparison(
                subset=subset,
                particles=len(measured),
                truth_particles=len(true),
                weighting=weighting,
                measured=got,
                true=want,
                relative_error={k: (got[k] - want[k]) / want[k] for k in got},
            )
        )
    return rows


def _measured_diameters(
    json_path: str, score_thresh: float, show_progress: bool, min_visibility=None
):
    """Per particle: (annotation id, ECD in px, touches the border)."""
    instances = load_coco_instances(json_path, score_thresh, min_visibility)
    tables = iter_particle_tables(instances, mm_per_px=1.0, show_progress=show_progress)
    records = [table.records for _, table, _ in tables]
    if not records:
        return np.zeros(0, int), np.zeros(0), np.zeros(0, bool)
    records = np.concatenate(records)
    return records["annotation_id"], records["ecd"], records["touches_border"]


def psd_accuracy(
    ground_truth_json: str,
    predictions_json: str | None = None,
    score_thresh: float = 0.0,
    max_hidden: float = 0.05,
    show_progress: bool = False,
    min_visibility: float | None = None,
    size_correction: SizeCorrection | None = None,
) -> list:
    """
    Args:
        ground_truth_json: a synthetic ore annotation file (datasets/make_synthetic_ore.py).
        predictions_json: optional COCO results on the same images (image ids of that file).
        score_thresh: predictions scoring below it are left out.
        max_hidden: largest hidden fraction of the "whole" subset.
        min_visibility: also compare the predictions estimated at least this visible (see
            :func:`load_coco_instances`).
        size_correction: also compare the predictions weighted by this model's size correction.

    Returns:
        list[DValueComparison], by count and by mass for each comparison.
    """
    data = read_coco_json(ground_truth_json)
    check_ground_truth(data, ground_truth_json, training_set=True)
    for index, annotation in enumerate(data["annotations"]):
        missing = [key for key in _TRUTH_KEYS if key not in annotation]
        if missing:
            raise CocoFormatError(
                f"{ground_truth_json}: annotations[{index}][{missing[0]!r}] is missing: expected "
                "the true sizes of a synthetic ore annotation file"
            )
    annotations = {a["id"]: a for a in data["annotations"]}
    ids, measured, _ = _measured_diameters(ground_truth_json, 0.0, show_progress)
    truth = np.array([annotations[i]["true_diameter_px"] for i in ids])
    interior = np.array([not annotations[i]["touches_border"] for i in ids], dtype=bool)
    whole = interior & np.array([annotations[i]["visible_fraction"] >= 1 - max_hidden for i in ids])
    rows = _compare(
        f"ground truth, interior, <= {max_hidden:.0%} hidden", measured[whole], truth[whole]
    )
    rows += _compare("ground truth, interior (occlusion bias)", measured[interior], truth[interior])
    if predictions_json is not None:
        _, predicted, predicted_border = _measured_diameters(
            predictions_json, score_thresh, show_progress
        )
        predicted = predicted[~predicted_border]
        visible = measured[interior]
        rows += _compare("predictions, interior", predicted, truth[interior])
        rows += _compare("predictions, interior, vs visible ground truth", predicted, visible)
        if size_correction is not None:
            counts = size_correction.factors_for(predicted)
            subset = "predictions, interior, size-corrected"
            rows += _compare(subset, predicted, truth[interior], counts)
            rows += _compare(f"{subset}, vs visible ground truth", predicted, visible, counts)
        if min_visibility is not None:
            _, whole_predicted, whole_border = _measured_diameters(
                predictions_json, score_thresh, show_progress, min_visibility
            )
            rows += _compare(
                f"predictions, interior, estimated >= {min_visibility:.0%} visible",
                whole_predicted[~whole_border],
                truth[interior],
            )
    return rows
