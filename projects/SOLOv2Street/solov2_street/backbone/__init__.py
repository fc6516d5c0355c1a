from .cspam import (
    CSPAM,
    CSPBottleneck,
    CSPStage,
    CSPStem,
    PositionAttention,
    build_cspam_backbone,
)
from .twfpn import (
    TWFPN,
    build_cspam_fpn_backbone,
    build_cspam_twfpn_backbone,
    build_resnet_twfpn_backbone,
)

__all__ = [
    "CSPAM",
    "CSPBottleneck",
    "CSPStage",
    "CSPStem",
    "PositionAttention",
    "TWFPN",
    "build_cspam_backbone",
    "build_cspam_fpn_backbone",
    "build_cspam_twfpn_backbone",
    "build_resnet_twfpn_backbone",
]
