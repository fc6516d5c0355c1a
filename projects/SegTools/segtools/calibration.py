"""
Count calibration: the score threshold at which a trained model finds as many particles as a
calibration set holds, stored beside the weights so that predictions count right by default.

The threshold is chosen on the detections the model keeps at a low collection threshold: every
registered model thresholds scores before its top-k, NMS and detection cap, each of which keeps
the highest-scored first, so the detections above a higher threshold are exactly those collected
above it. The file names the weights by their SHA-256, and a file made for other weights is
refused.
"""

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.utils import comm

from .atomic_io import atomic_write_json
from .config import set_test_score_threshold, test_score_threshold
from .data import CheckedDatasetMapper

__all__ = [
    "CALIBRATION_FORMAT",
    "CountCalibration",
    "CountCalibrationError",
    "calibrate_count",
    "calibration_path",
    "count_threshold",
    "read_calibration",
    "use_count_calibration",
]

CALIBRATION_FORMAT = 1
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


class _ScoreCollector(DatasetEvaluator):
    """Gathers the scores of every detection on every process."""

    def reset(self):
        self._scores = []

    def process(self, inputs, outputs):
        for output in outputs:
            self._scores.append(output["instances"].scores.detach().cpu().numpy())

    def evaluate(self):
        gathered = comm.gather(self._scores, dst=0)
        if not comm.is_main_process():
            return {}
        return {"scores": np.concatenate([s for part in gathered for s in part] or [np.zeros(0)])}


def _true_count(dataset_name: str) -> tuple:
    """(images, annotated instances that are not crowd regions) of a registered dataset."""
    records = DatasetCatalog.get(dataset_name)
    count = sum(
        1 for record in records for a in record.get("annotations", []) if not a.get("iscrowd", 0)
    )
    return len(records), count


def calibrate_count(cfg: CfgNode, state_dict: dict, weights: str, dataset_name: str):
    """
    Find the count-calibrated threshold of the model of `cfg` with `state_dict` (the contents
    of the file `weights`) on `dataset_name`, and write it to :func:`calibration_path`.

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
    collected = inference_on_dataset(model, loader, _ScoreCollector())
    if not comm.is_main_process():
        return None
    images, true_count = _true_count(dataset_name)
    threshold, kept = count_threshold(collected["scores"], true_count, COLLECTION_THRESHOLD)
    if kept < true_count:
        logger.warning(
            f"{dataset_name}: the model finds {kept} detections above "
            f"{COLLECTION_THRESHOLD} where {true_count} are annotated: it undercounts at any "
            "threshold"
        )
    calibration = CountCalibration(
        score_threshold=threshold,
        dataset=dataset_name,
        images=images,
        true_count=true_count,
        count_at_threshold=kept,
        weights=os.path.basename(weights),
        weights_sha256=_sha256(weights),
        meta_architecture=cfg.MODEL.META_ARCHITECTURE,
    )
    atomic_write_json(calibration_path(weights), asdict(calibration), indent=2)
    logger.info(
        f"Count calibration on {dataset_name}: score threshold {threshold:.4f} keeps {kept} "
        f"detections for {true_count} annotated particles; written to {calibration_path(weights)}"
    )
    return calibration


def read_calibration(path: str, weights: str) -> CountCalibration:
    """
    The calibration in `path`, checked to be made for the file `weights`.

    Raises:
        CountCalibrationError: naming `path` and, for other weights, both weights files.
    """
    try:
        with open(path) as f:
            fields = json.load(f)
        calibration = CountCalibration(**fields)
        threshold = float(calibration.score_threshold)
    except (OSError, ValueError, TypeError) as e:
        raise CountCalibrationError(f"{path}: not a count calibration file ({e})") from None
    if calibration.format != CALIBRATION_FORMAT or not 0 <= threshold <= 1:
        raise CountCalibrationError(
            f"{path}: format {calibration.format!r}, threshold {threshold!r}: expected format "
            f"{CALIBRATION_FORMAT} and a threshold in [0, 1]"
        )
    if calibration.weights_sha256 != _sha256(weights):
        raise CountCalibrationError(
            f"{path} was made for the weights {calibration.weights} (SHA-256 "
            f"{calibration.weights_sha256[:12]}...), not for {weights}: calibrate these weights "
            "(scripts/calibrate_count.py) or give --score-thresh"
        )
    return calibration


def use_count_calibration(cfg: CfgNode, weights: str) -> str:
    """
    Set the score threshold of `cfg` (not frozen) to the calibrated one of `weights` if a
    calibration file is beside them; else leave the config's, with a warning that says how to
    calibrate.

    Returns:
        Where the threshold comes from: the calibration file's path, or "config".
    """
    try:
        key, value = test_score_threshold(cfg)
    except KeyError:
        return "config"  # no project registered the model's threshold: nothing to calibrate
    path = calibration_path(weights)
    if os.path.exists(path):
        set_test_score_threshold(cfg, read_calibration(path, weights).score_threshold)
        return path
    logger.warning(
        f"{weights} has no count calibration ({path}): detections use the config's {key} "
        f"{value}, which may count far too many or too few "
        "particles. Calibrate on a few annotated images: python scripts/calibrate_count.py "
        f"--config-file CONFIG --weights {weights} --annotations annotations.json "
        "--image-root images/"
    )
    return "config"
