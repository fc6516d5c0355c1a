"""The unified mask feature branch of SOLOv2, and the street variant's CSMF fusion (Fig. 4)."""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import nn

from .config import check_choice

__all__ = ["SOLOv2MaskBranch", "coordinates_like"]


def coordinates_like(features: torch.Tensor) -> torch.Tensor:
    """
    CoordConv's extra channels.

    Args:
        features: (B, C, H, W).

    Returns:
        (B, 2, H, W): x, then y, each from -1 at the first pixel to 1 at the last.
    """
    batch, _, height, width = features.shape
    ys = torch.linspace(-1, 1, height, device=features.device, dtype=features.dtype)
    xs = torch.linspace(-1, 1, width, device=features.device, dtype=features.dtype)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x, y]).expand(batch, -1, -1, -1)


def _conv(in_channels: int, out_channels: int, norm: str, kernel_size: int = 3) -> Conv2d:
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        padding=kernel_size // 2,
        bias=not norm,
        norm=get_norm(norm, out_channels),
        activation=F.relu,
    )
    nn.init.normal_(conv.weight, std=0.01)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0)
    return conv


def _upsample(scale: int) -> nn.Upsample:
    return nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False)


class SOLOv2MaskBranch(nn.Module):
    """
    Mask features at the stride of the first of four input levels (strides s, 2s, 4s, 8s) with
    `num_masks` channels E, read by the dynamic 1 x 1 kernels of the kernel branch.

    "sum" (SOLOv2): level k passes max(k, 1) convs (3 x 3, norm, ReLU, to `channels`), each
    but the first level's followed by a x2 bilinear upsampling; the deepest level gets the
    coordinate channels first (CoordConv); the four are summed.

    "csmf" (street variant, Fig. 4), inputs N2, N3, N4, P5: N2 and N3 as in "sum"; P5 is
    upsampled x2 and concatenated with N4 and the coordinates, then passes two convs with
    upsampling (replacing the separate paths of the two deepest levels, which saves
    computation); P5 through a 1 x 1 conv, upsampled x8, is added as a global guide at the
    first level's stride.

    Both end with a 1 x 1 conv to E channels, norm and ReLU.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shapes: list[ShapeSpec],
        channels: int,
        num_masks: int,
        norm: str,
        fusion: str,
    ):
        """
        Args:
            input_shapes: the four input levels, finest first.
            channels: of the per-level convs.
            num_masks: E, the output channels.
            norm: after each conv (see :func:`detectron2.layers.get_norm`).
            fusion: "sum" or "csmf".
        """
        super().__init__()
        check_choice("MODEL.SOLOV2.MASK_FUSION", fusion, ("sum", "csmf"))
        strides = [shape.stride for shape in input_shapes]
        if len(strides) != 4 or strides != [strides[0] * 2**k for k in range(4)]:
            raise ValueError(
                f"MODEL.SOLOV2.MASK_IN_FEATURES: four levels of strides s, 2s, 4s, 8s are "
                f"needed; they have strides {strides}"
            )
        in_channels = [shape.channels for shape in input_shapes]
        self.fusion = fusion
        self.levels = nn.ModuleList()
        num_separate = 4 if fusion == "sum" else 2
        for level in range(num_separate):
            layers = [_conv(in_channels[level] + 2 * (level == 3), channels, norm)]
            for _ in range(1, level):
                layers += [_upsample(2), _conv(channels, channels, norm)]
            layers += [_upsample(2)] if level > 0 else []
            self.levels.append(nn.Sequential(*layers))
        if fusion == "csmf":
            self.fused = nn.Sequential(
                _conv(in_channels[2] + in_channels[3] + 2, channels, norm),
                _upsample(2),
                _conv(channels, channels, norm),
                _upsample(2),
            )
            self.guide = _conv(in_channels[3], channels, norm, kernel_size=1)
        self.predictor = _conv(channels, num_masks, norm, kernel_size=1)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]):
        solov2 = cfg.MODEL.SOLOV2
        return {
            "input_shapes": [input_shape[name] for name in solov2.MASK_IN_FEATURES],
            "channels": solov2.MASK_CHANNELS,
            "num_masks": solov2.NUM_MASKS,
            "norm": solov2.NORM,
            "fusion": solov2.MASK_FUSION,
        }

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: four (B, C_k, H_k, W_k) levels, finest first, H_k = 2^k H_0.

        Returns:
            (B, E, H_0, W_0) mask features.
        """
        deepest = features[3]
        if self.fusion == "sum":
            features = [*features[:3], torch.cat([deepest, coordinates_like(deepest)], dim=1)]
        fused = sum(level(x) for level, x in zip(self.levels, features, strict=False))
        if self.fusion == "csmf":
            upsampled = F.interpolate(deepest, scale_factor=2, mode="bilinear", align_corners=False)
            cross_stage = torch.cat([features[2], upsampled], dim=1)
            fused = fused + self.fused(torch.cat([cross_stage, coordinates_like(cross_stage)], 1))
            fused = fused + F.interpolate(
                self.guide(deepest), size=fused.shape[-2:], mode="bilinear", align_corners=False
            )
        return self.predictor(fused)
