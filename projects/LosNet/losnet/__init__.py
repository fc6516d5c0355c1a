"""LosNet: a light CondInst-style ore segmenter (Sun et al., Minerals 2022)."""

from segtools.projects import InferenceKeys, Project

from . import backbone as _  # noqa: F401  (registers the backbones)
from .bn_folding import fold_level_tower
from .config import add_losnet_config
from .dynamic_mask_head import DynamicMaskHead, dice_loss
from .head import LevelTower, LosNetHead
from .losnet import LosNet, select_mask_positives
from .mask_branch import MaskBranch

__all__ = [
    "PROJECT",
    "DynamicMaskHead",
    "LevelTower",
    "LosNet",
    "LosNetHead",
    "MaskBranch",
    "add_losnet_config",
    "dice_loss",
    "fold_level_tower",
    "select_mask_positives",
]

# LosNet's entry in the project registry (pyproject.toml, entry points "segtools.projects").
PROJECT = Project(
    name="LosNet",
    add_config=add_losnet_config,
    inference_keys={"LosNet": InferenceKeys("MODEL.LOSNET.SCORE_THRESH_TEST")},
    fold_batch_norms=fold_level_tower,
    smoke_config="configs/LosNet/losnet_MV3S_ore_synthetic.yaml",
)
