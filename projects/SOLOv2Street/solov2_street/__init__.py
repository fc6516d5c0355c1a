"""
SOLOv2 (Wang et al., NeurIPS 2020) and its street-scene variant (Liu & Kong, "Real-Time Instance
Segmentation Method Based on Location Attention", KSII TIIS 2024): CSPAM backbone, TWFPN, CSMF
mask features and the AML loss.
"""

from segtools.projects import InferenceKeys, Project

from . import backbone as _  # noqa: F401  (registers the backbones)
from .config import add_solov2_street_config
from .head import (
    SOLOv2InstanceHead,
    aml_mask_loss,
    dice_loss,
    minimum_loss_matching,
    solov2_losses,
)
from .mask_branch import SOLOv2MaskBranch, coordinates_like
from .matrix_nms import matrix_nms, point_nms
from .solov2 import SOLOv2
from .targets import GridPairs, assign_grid_cells, cell_labels, center_of_mass, mask_targets

__all__ = [
    "PROJECT",
    "GridPairs",
    "SOLOv2",
    "SOLOv2InstanceHead",
    "SOLOv2MaskBranch",
    "add_solov2_street_config",
    "aml_mask_loss",
    "assign_grid_cells",
    "cell_labels",
    "center_of_mass",
    "coordinates_like",
    "dice_loss",
    "mask_targets",
    "matrix_nms",
    "minimum_loss_matching",
    "point_nms",
    "solov2_losses",
]

# The entry in the project registry (pyproject.toml, entry points "segtools.projects").
# fmt: off
PROJECT = Project(
    name="SOLOv2Street",
    add_config=add_solov2_street_config,
    inference_keys={"SOLOv2": InferenceKeys("MODEL.SOLOV2.SCORE_THRESH_TEST")},
    smoke_config="configs/SOLOv2Street/solov2_street_CSPAM_50_TWFPN_ore_synthetic.yaml",
    # A tiny model, whose every candidate may be reported once the score threshold is lowered.
    smoke_opts=(
        "MODEL.CSPAM.DEPTHS", "[1, 1, 1, 1]",
        "MODEL.CSPAM.STEM_OUT_CHANNELS", "16",
        "MODEL.CSPAM.RES2_OUT_CHANNELS", "64",
        "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.SOLOV2.INSTANCE_CHANNELS", "32",
        "MODEL.SOLOV2.NUM_INSTANCE_CONVS", "1",
        "MODEL.SOLOV2.MASK_CHANNELS", "32",
        "MODEL.SOLOV2.NUM_MASKS", "32",
        "MODEL.SOLOV2.CANDIDATE_THRESH_FACTOR", "1.0",
    ),
)
# fmt: on
