"""LosNet: a light CondInst-style ore segmenter (Sun et al., Minerals 2022)."""

from . import backbone as _  # noqa: F401  (registers the backbones)
from .bn_folding import fold_batch_norms
from .config import add_losnet_config
from .dynamic_mask_head import DynamicMaskHead, dice_loss
from .head import LevelTower, LosNetHead
from .losnet import LosNet, select_mask_positives
from .mask_branch import MaskBranch

__all__ = [
    "DynamicMaskHead",
    "LevelTower",
    "LosNet",
    "LosNetHead",
    "MaskBranch",
    "add_losnet_config",
    "dice_loss",
    "fold_batch_norms",
    "select_mask_positives",
]
