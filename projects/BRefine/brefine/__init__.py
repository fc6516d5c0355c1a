"""BRefine: multistage fusion mask head and BRank-and-Sort loss (Yu et al., Sensors 2022)."""

from segtools.projects import Project

from .config import add_brefine_config
from .fast_rcnn import RankSortOutputLayers
from .mask_head import (
    BRefineMaskHead,
    ResidualAwareModule,
    boundary_region,
    brefine_mask_loss,
    erosion_iterations,
)
from .rank_sort import balance_to, rank_sort_detection_losses, rank_sort_loss
from .roi_heads import BRefineROIHeads, sample_regions
from .rpn import RankSortRPN

__all__ = [
    "PROJECT",
    "BRefineMaskHead",
    "BRefineROIHeads",
    "RankSortOutputLayers",
    "RankSortRPN",
    "ResidualAwareModule",
    "add_brefine_config",
    "balance_to",
    "boundary_region",
    "brefine_mask_loss",
    "erosion_iterations",
    "rank_sort_detection_losses",
    "rank_sort_loss",
    "sample_regions",
]

# BRefine's entry in the project registry (pyproject.toml, entry points "segtools.projects").
# Its heads run in Detectron2's GeneralizedRCNN, which has its test keys already.
PROJECT = Project(
    name="BRefine",
    add_config=add_brefine_config,
    smoke_config="configs/BRefine/brefine_R_18_FPN_ore_synthetic_cpu.yaml",
    smoke_opts=(
        *("MODEL.FPN.OUT_CHANNELS", "32"),
        *("MODEL.ROI_BOX_HEAD.FC_DIM", "64"),
        *("MODEL.RPN.POST_NMS_TOPK_TRAIN", "64"),
        *("MODEL.BREFINE.MASK_HEAD.CHANNELS", "[64, 32, 16]"),
        *("MODEL.BREFINE.MASK_POSITIVES_PER_BATCH", "32"),
    ),
)
