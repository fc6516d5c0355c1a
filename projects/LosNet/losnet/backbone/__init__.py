from .lightweight_fpn import (
    LightweightFPN,
    build_mobilenet_v3_small_lightweight_fpn_backbone,
    build_resnet_lightweight_fpn_backbone,
)
from .mobilenet_v3 import MobileNetV3Small, load_torchvision_mobilenet_weights

__all__ = [
    "LightweightFPN",
    "MobileNetV3Small",
    "build_mobilenet_v3_small_lightweight_fpn_backbone",
    "build_resnet_lightweight_fpn_backbone",
    "load_torchvision_mobilenet_weights",
]
