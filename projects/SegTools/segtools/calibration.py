"""
Count calibration: the score threshold at which a trained model finds as many particles as a
calibration set holds, stored beside the weights so that predictions count right by default.

The threshold is chosen on the detections the model keeps at a low collection threshold: every
registered model thresholds scores before its top-k, NMS and detection cap, each of which keeps
the highest-scored first, so the detections above a higher threshold are exactly those collected
above it. The file names the weights by their SHA-256, and a file made for other weights is
refused.

With masks, the file also holds the model's size correction on the same images
(:mod:`segtools.analysis.size_correction`): per predicted size, how many annotated particles
each kept detection stands for, so that its sieve curve counts small particles as often as the
annotations do. Both sides are sized without the particles touching the image border, whose
masks the frame cuts.
"""

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.utils import comm

from .analysis.size_correction import SizeCorrection, fit_size_correction
from .analysis.size_measures import box_touches_border, equivalent_circle_diameter
from .atomic_io import atomic_write_json
from .config import set_test_score_threshold, test_score_threshold
from .data import CheckedDatasetMapper
from .data.coco_format import decode_in_box

__all__ = [
    "CALIBRATION_FORMAT",
    "CountCalibration",
    "CountCalibrationError",
    "calibrate_count",
    "calibration_path",
    "count_threshold",
    "load_calibration",
    "read_calibration",
    "use_count_calibration",
]

CALIBRATION_FORMAT = 2
# Format 1 files have no size correction and are still read.
READABLE_FORMATS = (1, 2)
# Detections are collected above this score; a calibrated threshold is never below it.
COLLECTION_THRESHOLD = 0.02

logger = logging.getLogger(__name__)


class CountCalibrationError(ValueError):
    """A calibration file that is unreadable or made for other weights."""


@dataclass(frozen=True)
class CountCalibration:
    """What a calibration file holds."""

    score_threshold: float
    dataset: str
    images: int
    true_count: int
    count_at_threshold: int
    weights: str  # the file name of the weights, for messages
    weights_sha256: str
    meta_architecture: str
    format: int = CALIBRATION_FORMAT
    size_correction: SizeCorrection | None = None


def calibration_path(weights: str) -> str:
    """`model_final.pth` -> `model_final.calibration.json`, in the same folder."""
    return os.path.splitext(weights)[0] + ".calibration.json"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def count_threshold(scores: np.ndarray, true_count: int, minimum: float) -> tuple:
    """
    The threshold that keeps `true_count` of `scores` (halfway between the last score kept and
    the first left out), or `minimum` when fewer than that were collected.

    Args:
        scores: (N,) scores of every detection collected above `minimum`.

    Returns:
        (threshold, number of scores >= threshold).
    """
    ordered = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if true_count >= len(ordered):
        return float(minimum), len(ordered)
    if true_count == 0:
        threshold = np.nextafter(ordered[0], np.inf)
    else:
        threshold = (ordered[true_count - 1] + ordered[true_count]) / 2
    threshold = min(max(float(threshold), minimum), 1.0)
    return threshold, int((ordered >= threshold).sum())


class _DetectionCollector(DatasetEvaluator):
    """
    Gathers, on every process, the score of every detection and, for models with masks, its
    equivalent-circle diameter in image pixels (NaN if it touches the image border).
    """

    def reset(self):
        self._scores, self._sizes = [], []

    def process(self, inputs, outputs):
        for output in outputs:
            instances = output["instances"].to("cpu")
            self._scores.append(instances.scores.numpy())
            if instances.has("pred_masks"):
                self._sizes.append(_interior_ecd(instances.pred_masks > 0.5))
            else:
                self._sizes.append(np.full(len(instances), np.nan))

    def evaluate(self):
        gathered = comm.gather((self._scores, self._sizes), dst=0)
        if not comm.is_main_process():
            return {}
        scores = [s for part in gathered for s in part[0]]
        sizes = [s for part in gathered for s in part[1]]
        return {
            "scores": np.concatenate(scores or [np.zeros(0)]),
            "sizes": np.concatenate(sizes or [np.zeros(0)]),
        }


def _interior_ecd(masks: torch.Tensor) -> np.ndarray:
    """(N,) ECD in pixels of (N, H, W) boolean masks, NaN for those touching the border."""
    area = masks.flatten(1).sum(dim=1).numpy()
    # A pixel in the first or last row or column: the mask's box touches the frame.
    edges = (masks[:, 0], masks[:, -1], masks[:, :, 0], masks[:, :, -1])
    border = torch.stack([edge.any(dim=1) for edge in edges]).any(dim=0).numpy()
    return np.where(border, np.nan, equivalent_circle_diameter(area))


def _annotated_interior_ecd(records: list) -> np.ndarray:
    """ECD in pixels of the annotated particles not touching the image border."""
    sizes = []
    for record in records:
        height, width = record["height"], record["width"]
        for annotation in record.get("annotations", []):
            if annotation.get("iscrowd", 0) or "segmentation" not in annotation:
                continue
            mask, (x0, y0) = decode_in_box(annotation["segmentation"], height, width)
            h, w = mask.shape
            if not mask.any() or box_touches_border(x0, y0, w, h, width, height):
                continue
            sizes.append(equivalent_circle_diameter(int(mask.sum())))
    return np.asarray(sizes, dtype=np.float64)


def _true_count(records: list) -> tuple:
    """(images, annotated instances that are not crowd regions) of a dataset's records."""
    count = sum(
        1 for record in records for a in record.get("annotations", []) if not a.get("iscrowd", 0)
    )
    return len(records), count


def calibrate_count(
    cfg: CfgNode, state_dict: dict, weights: str, dataset_name: str, size_bins: int = 8
):
    """
    Find the count-calibrated threshold of the model of `cfg` with `state_dict` (the contents
    of the file `weights`) on `dataset_name`, and the size correction of the detections kept
    there (at most `size_bins` bins; 0: none), and write both to :func:`calibration_path`.

    Returns:
        The :class:`CountCalibration` on the main process, None on the others.
    """
    collecting = cfg.clone()
    collecting.defrost()
    try:
        set_test_score_threshold(collecting, COLLECTION_THRESHOLD)
    except KeyError as e:
        raise CountCalibrationError(e.args[0]) from None
    model = build_model(collecting)
    model.load_state_dict(state_dict)
    loader = build_detection_test_loader(
        collecting, dataset_name, mapper=CheckedDatasetMapper(collecting, is_train=False)
    )
    collected = inference_on_dataset(model, loader, _DetectionCollector())
    if not comm.is_main_process():
        return None
    records = DatasetCatalog.get(dataset_name)
    images, true_count = _true_count(records)
    threshold, kept = count_threshold(collected["scores"], true_count, COLLECTION_THRESHOLD)
    if kept < true_count:
        logger.warning(
            f"{dataset_name}: the model finds {kept} detections above "
            f"{COLLECTION_THRESHOLD} where {true_count} are annotated: it undercounts at any "
            "threshold"
        )
    sizes = collected["sizes"][collected["scores"] >= threshold]
    size_correction = None
    if size_bins and cfg.MODEL.MASK_ON:
        annotated = _annotated_interior_ecd(records)
        size_correction = fit_size_correction(sizes[np.isfinite(sizes)], annotated, size_bins)
    calibration = CountCalibration(
        score_threshold=threshold,
        dataset=dataset_name,
        images=images,
        true_count=true_count,
        count_at_threshold=kept,
        weights=os.path.basename(weights),
        weights_sha256=_sha256(weights),
        meta_architecture=cfg.MODEL.META_ARCHITECTURE,
        size_correction=size_correction,
    )
    atomic_write_json(calibration_path(weights), asdict(calibration), indent=2)
    logger.info(
        f"Count calibration on {dataset_name}: score threshold {threshold:.4f} keeps {kept} "
        f"detections for {true_count} annotated particles; size correction "
        f"{_describe(size_correction)}; written to {calibration_path(weights)}"
    )
    return calibration


def _describe(size_correction: SizeCorrection | None) -> str:
    if size_correction is None:
        return "none"
    factors = ", ".join(f"{f:.2f}" for f in size_correction.factors)
    edges = ", ".join(f"{e:.1f}" for e in size_correction.edges_px)
    return f"factors {factors} between ECD edges {edges} px"


def load_calibration(path: str) -> CountCalibration:
    """
    The calibration in `path`, whatever weights it was made for (see :func:`read_calibration`).

    Raises:
        CountCalibrationError: naming `path`.
    """
    try:
        with open(path) as f:
            fields = json.load(f)
        correction = fields.pop("size_correction", None)
        calibration = CountCalibration(
            **fields,
            size_correction=None if correction is None else SizeCorrection.from_dict(correction),
        )
        threshold = float(calibration.score_threshold)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise CountCalibrationError(f"{path}: not a count calibration file ({e})") from None
    if calibration.format not in READABLE_FORMATS or not 0 <= threshold <= 1:
        raise CountCalibrationError(
            f"{path}: format {calibration.format!r}, threshold {threshold!r}: expected a format "
            f"in {READABLE_FORMATS} and a threshold in [0, 1]"
        )
    return calibration


def read_calibration(path: str, weights: str) -> CountCalibration:
    """
    The calibration in `path`, checked to be made for the file `weights`.

    Raises:
        CountCalibrationError: naming `path` and, for other weights, both weights files.
    """
    calibration = load_calibration(path)
    if calibration.weights_sha256 != _sha256(weights):
        raise CountCalibrationError(
            f"{path} was made for the weights {calibration.weights} (SHA-256 "
            f"{calibration.weights_sha256[:12]}...), not for {weights}: calibrate these weights "
            "(scripts/calibrate_count.py) or give --score-thresh"
        )
    return calibration


def use_count_calibration(cfg: CfgNode, weights: str) -> CountCalibration | None:
    """
    Set the score threshold of `cfg` (not frozen) to the calibrated one of `weights` if a
    calibration file is beside them; else leave the config's, with a warning that says how to
    calibrate.

    Returns:
        The calibration used, or None where the config's threshold stays.
    """
    try:
        key, value = test_score_threshold(cfg)
    except KeyError:
        return None  # no project registered the model's threshold: nothing to calibrate
    path = calibration_path(weights)
    if os.path.exists(path):
        calibration = read_calibration(path, weights)
        set_test_score_threshold(cfg, calibration.score_threshold)
        return calibration
    logger.warning(
        f"{weights} has no count calibration ({path}): detections use the config's {key} "
        f"{value}, which may count far too many or too few "
        "particles. Calibrate on a few annotated images: python scripts/calibrate_count.py "
        f"--config-file CONFIG --weights {weights} --annotations annotations.json "
        "--image-root images/"
    )
    return None
