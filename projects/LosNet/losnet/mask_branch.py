import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import nn

from .config import check_choice

__all__ = ["MaskBranch"]

LEVEL_CONVS = ("1x1_linear", "3x3_norm_relu")


def _level_projection(in_channels: int, out_channels: int, level_convs: str, norm: str):
    """
    The conv that brings one pyramid level to the width of the sum: a 1x1 linear conv, or a
    3x3 conv + norm + ReLU (see `MODEL.LOSNET.MASK_BRANCH.LEVEL_CONVS`).
    """
    if level_convs == "1x1_linear":
        projection = Conv2d(in_channels, out_channels, kernel_size=1)
        weight_init.c2_xavier_fill(projection)
        return projection
    return _conv3x3_norm_relu(in_channels, out_channels, norm)


def _conv3x3_norm_relu(in_channels: int, out_channels: int, norm: str) -> Conv2d:
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size=3,
        padding=1,
        bias=not norm,
        norm=get_norm(norm, out_channels),
        activation=F.relu,
    )
    weight_init.c2_msra_fill(conv)
    return conv


class MaskBranch(nn.Module):
    """
    The mask branch of LosNet (Fig. 2): every pyramid level is brought to a common width, the
    coarser ones are upsampled to the finest (P3) and all are added; a few 3x3 conv + norm +
    ReLU layers and a final 1x1 conv give the mask features F_mask shared by all instances, at
    P3's stride.

    `level_convs` chooses how the levels are brought to a common width: "1x1_linear" (the
    paper's "added to P3 after the linear calculation": P3 as it is, the others through a 1x1
    conv without activation to P3's channels) or "3x3_norm_relu" (CondInst, the authors' code:
    every level through a 3x3 conv + norm + ReLU to `channels`).
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: dict[str, ShapeSpec],
        in_features: list[str],
        channels: int,
        num_convs: int,
        out_channels: int,
        norm: str,
        level_convs: str = "1x1_linear",
    ):
        """
        Args:
            input_shape: shapes of the pyramid levels named in `in_features`.
            in_features: levels to merge, finest first (its stride is the output stride).
            channels: channels of the 3x3 convs.
            out_channels: channels of F_mask (C_mask in the paper's eq. 5).
            level_convs: "1x1_linear" or "3x3_norm_relu", see the class docstring.
        """
        super().__init__()
        check_choice("MODEL.LOSNET.MASK_BRANCH.LEVEL_CONVS", level_convs, LEVEL_CONVS)
        self.in_features = list(in_features)
        finest = input_shape[self.in_features[0]]
        self.out_stride = finest.stride
        linear = level_convs == "1x1_linear"
        merged_channels = finest.channels if linear else channels
        # An identity for the linear fusion keeps the state dict of checkpoints from before
        # the switch existed.
        self.finest_projection = (
            nn.Identity() if linear else _conv3x3_norm_relu(finest.channels, channels, norm)
        )
        self.coarse_projections = nn.ModuleList(
            _level_projection(input_shape[name].channels, merged_channels, level_convs, norm)
            for name in self.in_features[1:]
        )
        layers = [
            _conv3x3_norm_relu(merged_channels if index == 0 else channels, channels, norm)
            for index in range(num_convs)
        ]
        predictor = Conv2d(channels if num_convs else merged_channels, out_channels, kernel_size=1)
        weight_init.c2_msra_fill(predictor)
        layers.append(predictor)
        self.tower = nn.Sequential(*layers)
        self.out_channels = out_channels

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]):
        branch = cfg.MODEL.LOSNET.MASK_BRANCH
        return {
            "input_shape": input_shape,
            "in_features": branch.IN_FEATURES,
            "channels": branch.CHANNELS,
            "num_convs": branch.NUM_CONVS,
            "out_channels": branch.OUT_CHANNELS,
            "norm": branch.NORM,
            "level_convs": branch.LEVEL_CONVS,
        }

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: pyramid levels by name, (N, C, Hi, Wi).

        Returns:
            (N, out_channels, H0, W0) mask features at the stride of `in_features[0]`.
        """
        merged = self.finest_projection(features[self.in_features[0]])
        for name, projection in zip(self.in_features[1:], self.coarse_projections, strict=True):
            # Bilinear with align_corners=False keeps pixel centres ((j + 0.5) x stride) aligned
            # across levels, the convention of the whole model.
            merged = merged + F.interpolate(
                projection(features[name]),
                size=merged.shape[-2:],
                mode="bilinear",
                align_corners=False,
            )
        return self.tower(merged)
