import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import nn

__all__ = ["MaskBranch"]


class MaskBranch(nn.Module):
    """
    The mask branch of LosNet (Fig. 2): P4 and P5 pass a 1x1 linear conv, are upsampled to P3 and
    added to it; a few 3x3 conv + norm + ReLU layers and a final 1x1 conv give the mask features
    F_mask shared by all instances, at P3's stride.
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
    ):
        """
        Args:
            input_shape: shapes of the pyramid levels named in `in_features`.
            in_features: levels to merge, finest first (its stride is the output stride).
            channels: channels of the 3x3 convs.
            out_channels: channels of F_mask (C_mask in the paper's eq. 5).
        """
        super().__init__()
        self.in_features = list(in_features)
        in_channels = input_shape[self.in_features[0]].channels
        self.out_stride = input_shape[self.in_features[0]].stride
        self.coarse_projections = nn.ModuleList()
        for name in self.in_features[1:]:
            projection = Conv2d(input_shape[name].channels, in_channels, kernel_size=1)
            weight_init.c2_xavier_fill(projection)
            self.coarse_projections.append(projection)
        layers = []
        for index in range(num_convs):
            conv = Conv2d(
                in_channels if index == 0 else channels,
                channels,
                kernel_size=3,
                padding=1,
                bias=not norm,
                norm=get_norm(norm, channels),
                activation=F.relu,
            )
            weight_init.c2_msra_fill(conv)
            layers.append(conv)
        predictor = Conv2d(channels if num_convs else in_channels, out_channels, kernel_size=1)
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
        }

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: pyramid levels by name, (N, C, Hi, Wi).

        Returns:
            (N, out_channels, H0, W0) mask features at the stride of `in_features[0]`.
        """
        merged = features[self.in_features[0]]
        for name, projection in zip(self.in_features[1:], self.coarse_projections, strict=True):
            coarse = projection(features[name])
            merged = merged + F.interpolate(
                coarse, size=merged.shape[-2:], mode="bilinear", align_corners=False
            )
        return self.tower(merged)
