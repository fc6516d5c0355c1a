from .detections import Detection, detections_from_instances, intersection_over_smaller
from .inputs import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Frame,
    Unreadable,
    collect_inputs,
    read_frames,
)
from .predictor import SCORE_THRESHOLD_KEYS, set_test_score_threshold
from .tiled import TiledPredictor, window_cores
from .visualize import draw_detections

__all__ = [
    "IMAGE_EXTENSIONS",
    "SCORE_THRESHOLD_KEYS",
    "VIDEO_EXTENSIONS",
    "Detection",
    "Frame",
    "TiledPredictor",
    "Unreadable",
    "collect_inputs",
    "detections_from_instances",
    "draw_detections",
    "intersection_over_smaller",
    "read_frames",
    "set_test_score_threshold",
    "window_cores",
]
