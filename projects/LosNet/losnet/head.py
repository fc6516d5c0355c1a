import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from torch import nn

from .config import check_choice

__all__ = ["LosNetHead", "LevelTower", "Scale"]


class Scale(nn.Module):
    """A learnable scalar, initialised to `init`, that multiplies its input (FCOS's `Scale`)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class LevelTower(nn.Module):
    """
    A stack of 3x3 convs shared by all pyramid levels, each followed by a norm and ReLU.

    With a BatchNorm, each level has its own norm after the shared conv (the "three BN layers"
    of the paper's Fig. 5b): levels have different statistics, and a per-level BN folds into a
    per-level conv at inference (see :func:`losnet.fold_batch_norms`). A GroupNorm has no running
    statistics and is shared.
    """

    def __init__(self, channels: int, num_convs: int, norm: str, num_levels: int):
        super().__init__()
        per_level_norm = norm in ("BN", "SyncBN")
        self.convs = nn.ModuleList()
        self.level_norms = nn.ModuleList()
        for _ in range(num_convs):
            conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=not norm)
            nn.init.normal_(conv.weight, std=0.01)
            if conv.bias is not None:
                nn.init.constant_(conv.bias, 0)
            self.convs.append(conv)
            # One norm per level, or a single one that every level shares.
            num_norms = num_levels if per_level_norm else 1
            norms = [get_norm(norm, channels) or nn.Identity() for _ in range(num_norms)]
            self.level_norms.append(nn.ModuleList(norms))

    def forward(self, x, level: int):
        """
        Args:
            x: (N, C, H, W) features of pyramid level `level` (0 = finest).
        """
        for conv, norms in zip(self.convs, self.level_norms, strict=True):
            x = F.relu(norms[level if len(norms) > 1 else 0](conv(x)))
        return x


class LosNetHead(nn.Module):
    """
    LosNet's optimized detection head (section 3.3): a classification tower and a box tower,
    each of a few 3x3 convs shared across levels, and four predictors: class logits and the
    four box distances (normalised by stride) on their towers, the box quality (centerness or
    IoU) on the box tower in parallel with the regression, and the controller that predicts each
    location's dynamic mask-head parameters, on its own tower (paper) or on the box tower.
    Optionally each level's box distances pass a learnable scale (authors' code, FCOS).
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: list[ShapeSpec],
        num_classes: int,
        num_cls_convs: int,
        num_box_convs: int,
        norm: str,
        num_controller_params: int,
        controller_on_box_tower: bool,
        prior_prob: float,
        box_reg_scale: bool = False,
        visibility: bool = False,
    ):
        """
        Args:
            input_shape: shapes of the pyramid levels, finest first; all with the same channels.
            num_controller_params: parameters of the dynamic mask head per location.
            controller_on_box_tower: put the controller on the box tower instead of a tower of
                its own with `num_cls_convs` convs.
            box_reg_scale: multiply each level's box distances by a learnable :class:`Scale`.
            visibility: also predict each location's visible fraction on the box tower.
        """
        super().__init__()
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(f"LosNet head needs levels of equal channels, got {input_shape}")
        channels = channels.pop()
        num_levels = len(input_shape)
        self.cls_tower = LevelTower(channels, num_cls_convs, norm, num_levels)
        self.box_tower = LevelTower(channels, num_box_convs, norm, num_levels)
        self.controller_tower = (
            None
            if controller_on_box_tower
            else LevelTower(channels, num_cls_convs, norm, num_levels)
        )
        self.cls_score = nn.Conv2d(channels, num_classes, kernel_size=3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, 4, kernel_size=3, padding=1)
        self.quality = nn.Conv2d(channels, 1, kernel_size=3, padding=1)
        self.controller = nn.Conv2d(channels, num_controller_params, kernel_size=3, padding=1)
        self.visibility = nn.Conv2d(channels, 1, kernel_size=3, padding=1) if visibility else None
        predictors = [self.cls_score, self.bbox_pred, self.quality, self.controller]
        for predictor in predictors + ([self.visibility] if visibility else []):
            nn.init.normal_(predictor.weight, std=0.01)
            nn.init.constant_(predictor.bias, 0)
        # Start with every location predicting background with probability 1 - prior_prob.
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))
        # Levels regress distances in their own strides; a scale lets each level adjust the
        # range the shared predictor has to cover.
        self.box_scales = (
            nn.ModuleList(Scale() for _ in range(num_levels)) if box_reg_scale else None
        )

    @classmethod
    def from_config(cls, cfg, input_shape: list[ShapeSpec], num_controller_params: int):
        losnet = cfg.MODEL.LOSNET
        check_choice(
            "MODEL.LOSNET.CONTROLLER_INPUT", losnet.CONTROLLER_INPUT, ("own_tower", "box_tower")
        )
        return {
            "input_shape": input_shape,
            "num_classes": losnet.NUM_CLASSES,
            "num_cls_convs": losnet.NUM_CLS_CONVS,
            "num_box_convs": losnet.NUM_BOX_CONVS,
            "norm": losnet.HEAD_NORM,
            "num_controller_params": num_controller_params,
            "controller_on_box_tower": losnet.CONTROLLER_INPUT == "box_tower",
            "prior_prob": losnet.PRIOR_PROB,
            "box_reg_scale": check_choice(
                "MODEL.LOSNET.BOX_REG_SCALE", losnet.BOX_REG_SCALE, (False, True)
            ),
            "visibility": check_choice(
                "MODEL.LOSNET.VISIBILITY.ENABLED", losnet.VISIBILITY.ENABLED, (False, True)
            ),
        }

    def forward(self, features: list[torch.Tensor]):
        """
        Args:
            features: per level, (N, C, Hi, Wi), finest first.

        Returns:
            Four lists over levels: class logits (N, K, Hi, Wi), box distances in strides
            before their ReLU (N, 4, Hi, Wi), quality logits (N, 1, Hi, Wi) and controller
            outputs (N, P, Hi, Wi); with visibility a fifth, its logits (N, 1, Hi, Wi).
        """
        logits, box_deltas, quality, controller, visibility = [], [], [], [], []
        for level, feature in enumerate(features):
            box_feature = self.box_tower(feature, level)
            logits.append(self.cls_score(self.cls_tower(feature, level)))
            deltas = self.bbox_pred(box_feature)
            box_deltas.append(deltas if self.box_scales is None else self.box_scales[level](deltas))
            quality.append(self.quality(box_feature))
            controller_feature = (
                box_feature
                if self.controller_tower is None
                else self.controller_tower(feature, level)
            )
            controller.append(self.controller(controller_feature))
            if self.visibility is not None:
                visibility.append(self.visibility(box_feature))
        if self.visibility is None:
            return logits, box_deltas, quality, controller
        return logits, box_deltas, quality, controller, visibility
