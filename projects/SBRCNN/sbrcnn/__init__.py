"""SBR-CNN: R3-CNN loops, FCC heads, GRoIE and the Mask IoU branch (Rossi et al., JVCIR 2022)."""

from segtools.projects import Project

from .config import add_sbrcnn_config
from .fcc import L2C, FCCBoxHead
from .groie import GRoIEPooler, GRoIEROIHeads, build_groie_module, build_roi_pooler
from .mask_head import SBRLoopMaskHead
from .mask_iou import (
    ROI_MASKIOU_HEAD_REGISTRY,
    MaskIoUHead,
    build_maskiou_head,
    mask_iou_loss,
    mask_iou_targets,
)
from .non_local import NonLocalBlock
from .roi_heads import R3ROIHeads, loop_pairs, parse_alternation

__all__ = [
    "PROJECT",
    "ROI_MASKIOU_HEAD_REGISTRY",
    "FCCBoxHead",
    "GRoIEPooler",
    "GRoIEROIHeads",
    "L2C",
    "MaskIoUHead",
    "NonLocalBlock",
    "R3ROIHeads",
    "SBRLoopMaskHead",
    "add_sbrcnn_config",
    "build_groie_module",
    "build_maskiou_head",
    "build_roi_pooler",
    "loop_pairs",
    "mask_iou_loss",
    "mask_iou_targets",
    "parse_alternation",
]

# SBR-CNN's entry in the project registry (pyproject.toml, entry points "segtools.projects"). Its
# heads plug into Detectron2's GeneralizedRCNN, so it registers no meta-architecture; no batch
# norm of its own needs a folding hook. The smoke model is the full SBR-CNN made narrow.
PROJECT = Project(
    name="SBRCNN",
    add_config=add_sbrcnn_config,
    smoke_config="configs/SBRCNN/sbr_cnn_R_18_FPN_ore_synthetic_cpu.yaml",
    smoke_opts=(
        "MODEL.FPN.OUT_CHANNELS",
        "32",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN",
        "64",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
        "32",
        "MODEL.ROI_MASK_HEAD.CONV_DIM",
        "32",
        "MODEL.SBRCNN.FCC.CONV_DIMS",
        "[16, 8]",
        "MODEL.SBRCNN.MASKIOU.CONV_DIM",
        "32",
        "MODEL.SBRCNN.MASKIOU.L2C_CONV_DIMS",
        "[16, 8]",
    ),  # fmt: skip
)
