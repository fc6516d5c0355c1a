import math

import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, build_resnet_backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from torch import nn

from .mobilenet_v3 import MobileNetV3Small, load_torchvision_mobilenet_weights

__all__ = [
    "LightweightFPN",
    "build_mobilenet_v3_small_lightweight_fpn_backbone",
    "build_resnet_lightweight_fpn_backbone",
]


class LightweightFPN(Backbone):
    """
    The lightweight FPN of LosNet (paper section 3.2, Fig. 3b): 1x1 lateral convs bring every
    input stage to `out_channels`, and a top-down path adds each level to the nearest-upsampled
    level above it. Two switches bring back what the paper removed, for its ablations: the 3x3
    output convs of the original FPN (Table 2) and the P6/P7 levels computed from P5 (Table 3).
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features,
        out_channels: int,
        output_convs: bool = False,
        top_levels: int = 0,
        norm: str = "",
    ):
        """
        Args:
            bottom_up: backbone whose `in_features` outputs (consecutive strides) feed the FPN.
            in_features: names of those outputs, e.g. ["res3", "res4", "res5"].
            out_channels: channels of every pyramid level.
            output_convs: add a 3x3 conv after each merged level, as the original FPN does.
            top_levels: 0, or 2 for P6 and P7 (stride-2 3x3 convs on P5, as in RetinaNet).
            norm: norm of the laterals and output convs ("" for none).
        """
        super().__init__()
        if top_levels not in (0, 2):
            raise ValueError(f"MODEL.LIGHTWEIGHT_FPN.TOP_LEVELS={top_levels}: use 0 or 2")
        input_shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise ValueError(
                f"MODEL.LIGHTWEIGHT_FPN.IN_FEATURES has {missing}, which the backbone does not "
                f"output (it outputs {list(input_shapes)})"
            )
        strides = [input_shapes[f].stride for f in in_features]
        self.bottom_up = bottom_up
        self.in_features = tuple(in_features)

        use_bias = norm == ""
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList() if output_convs else None
        for name in in_features:
            lateral = Conv2d(
                input_shapes[name].channels,
                out_channels,
                kernel_size=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            weight_init.c2_xavier_fill(lateral)
            self.lateral_convs.append(lateral)
            if output_convs:
                output = Conv2d(
                    out_channels,
                    out_channels,
                    kernel_size=3,
                    padding=1,
                    bias=use_bias,
                    norm=get_norm(norm, out_channels),
                )
                weight_init.c2_xavier_fill(output)
                self.output_convs.append(output)

        self._out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        self.top_block = None
        if top_levels:
            last = f"p{int(math.log2(strides[-1]))}"
            self.top_block = LastLevelP6P7(out_channels, out_channels, in_feature=last)
            for extra in range(1, top_levels + 1):
                stride = strides[-1] * 2**extra
                self._out_feature_strides[f"p{int(math.log2(stride))}"] = stride
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {name: out_channels for name in self._out_features}
        self._size_divisibility = max(self._out_feature_strides.values())

    @property
    def size_divisibility(self):
        return self._size_divisibility

    def forward(self, x):
        """
        Args:
            x: (N, 3, H, W) normalised images, H and W divisible by `size_divisibility`.

        Returns:
            dict[str, Tensor]: "p<k>" -> (N, out_channels, H / 2^k, W / 2^k).
        """
        bottom_up_features = self.bottom_up(x)
        merged = []
        above = None
        for name, lateral in zip(
            reversed(self.in_features), reversed(self.lateral_convs), strict=True
        ):
            level = lateral(bottom_up_features[name])
            if above is not None:
                level = level + F.interpolate(above, size=level.shape[-2:], mode="nearest")
            merged.insert(0, level)
            above = level
        if self.output_convs is not None:
            merged = [conv(level) for conv, level in zip(self.output_convs, merged, strict=True)]
        if self.top_block is not None:
            merged.extend(self.top_block(merged[-1]))
        return dict(zip(self._out_features, merged, strict=True))

    def output_shape(self):
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


def _build_lightweight_fpn(cfg, bottom_up: Backbone) -> LightweightFPN:
    fpn_cfg = cfg.MODEL.LIGHTWEIGHT_FPN
    return LightweightFPN(
        bottom_up,
        in_features=fpn_cfg.IN_FEATURES,
        out_channels=fpn_cfg.OUT_CHANNELS,
        output_convs=fpn_cfg.OUTPUT_CONVS,
        top_levels=fpn_cfg.TOP_LEVELS,
        norm=fpn_cfg.NORM,
    )


@BACKBONE_REGISTRY.register()
def build_mobilenet_v3_small_lightweight_fpn_backbone(cfg, input_shape: ShapeSpec):
    """MobileNetV3-Small + lightweight FPN, LosNet's backbone."""
    bottom_up = MobileNetV3Small(out_features=cfg.MODEL.MOBILENET_V3.OUT_FEATURES)
    if cfg.MODEL.MOBILENET_V3.WEIGHTS:
        load_torchvision_mobilenet_weights(bottom_up, cfg.MODEL.MOBILENET_V3.WEIGHTS)
    return _build_lightweight_fpn(cfg, bottom_up)


@BACKBONE_REGISTRY.register()
def build_resnet_lightweight_fpn_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's ResNet + lightweight FPN, for the R-50 / R-101 rows of Tables 7 and 8."""
    return _build_lightweight_fpn(cfg, build_resnet_backbone(cfg, input_shape))
