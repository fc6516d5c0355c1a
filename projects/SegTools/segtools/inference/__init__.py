from .detections import Detection, detections_from_instances, intersection_over_smaller
from .inputs import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Frame,
    Unreadable,
    collect_inputs,
    read_frames,
)
from .tiled import TiledPredictor, window_cores
from .visualize import draw_detections

__all__ = [
    "IMAGE_EXTENSIONS",
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
    "window_cores",
]
