from .detections import Detection, detections_from_instances
from .inputs import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Frame,
    Unreadable,
    collect_inputs,
    read_frames,
)
from .tiled import TiledPredictor, stitch_views, window_cores
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
    "read_frames",
    "stitch_views",
    "window_cores",
]
