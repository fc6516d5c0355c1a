"""TWFPN (section 2.2): an FPN with a bottom-up path, and the backbones of Table 1 built on it."""

import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone import FPN, build_resnet_backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from fvcore.nn import weight_init
from torch import nn

from .cspam import build_cspam_backbone

__all__ = [
    "TWFPN",
    "build_cspam_fpn_backbone",
    "build_cspam_twfpn_backbone",
    "build_resnet_twfpn_backbone",
]


class TWFPN(Backbone):
    """
    The two-way FPN: Detectron2's FPN (top-down, P2-P5) followed by a bottom-up path that
    carries the shallow levels' location information up (PANet's): N2 = P2, and
    N_{k+1} = conv3x3(conv3x3_stride2(N_k) + P_{k+1}), each conv with the FPN's norm and a ReLU;
    N6 is N5 max-pooled with stride 2. The outputs are P2-P5 and N2-N6.
    """

    def __init__(self, fpn: FPN, norm: str = ""):
        """
        Args:
            fpn: Detectron2's FPN without a top block; its outputs are the P levels.
            norm: of the bottom-up convs (see :func:`detectron2.layers.get_norm`).
        """
        super().__init__()
        if fpn.top_block is not None:
            raise ValueError("TWFPN adds its own top level (N6): give it an FPN without top block")
        self.fpn = fpn
        shapes = fpn.output_shape()
        self._top_down_features = list(shapes)
        channels = shapes[self._top_down_features[0]].channels
        self.downsample_convs, self.fuse_convs = nn.ModuleList(), nn.ModuleList()
        for _ in self._top_down_features[1:]:
            for convs, stride in ((self.downsample_convs, 2), (self.fuse_convs, 1)):
                conv = Conv2d(
                    channels,
                    channels,
                    kernel_size=3,
                    stride=stride,
                    padding=1,
                    bias=not norm,
                    norm=get_norm(norm, channels),
                    activation=F.relu,
                )
                weight_init.c2_msra_fill(conv)
                convs.append(conv)
        strides = {name: shape.stride for name, shape in shapes.items()}
        strides.update({"n" + name[1:]: stride for name, stride in strides.items()})
        self._top_name = f"n{int(self._top_down_features[-1][1:]) + 1}"
        strides[self._top_name] = strides[self._top_down_features[-1]] * 2
        self._out_features = list(strides)
        self._out_feature_strides = strides
        self._out_feature_channels = dict.fromkeys(strides, channels)

    @property
    def size_divisibility(self) -> int:
        return self.fpn.size_divisibility

    @property
    def padding_constraints(self) -> dict:
        return self.fpn.padding_constraints

    def forward(self, x):
        """
        Args:
            x: (B, 3, H, W) images.

        Returns:
            {"p2": ..., "p5", "n2": ..., "n6"}: (B, C, H / stride, W / stride).
        """
        results = self.fpn(x)
        bottom_up = [results[self._top_down_features[0]]]
        for name, downsample, fuse in zip(
            self._top_down_features[1:], self.downsample_convs, self.fuse_convs, strict=True
        ):
            bottom_up.append(fuse(downsample(bottom_up[-1]) + results[name]))
        for name, features in zip(self._top_down_features, bottom_up, strict=True):
            results["n" + name[1:]] = features
        results[self._top_name] = F.max_pool2d(bottom_up[-1], kernel_size=1, stride=2)
        return results


def _fpn_kwargs(cfg) -> dict:
    return {
        "in_features": cfg.MODEL.FPN.IN_FEATURES,
        "out_channels": cfg.MODEL.FPN.OUT_CHANNELS,
        "norm": cfg.MODEL.FPN.NORM,
        "fuse_type": cfg.MODEL.FPN.FUSE_TYPE,
    }


def _twfpn(cfg, bottom_up: Backbone) -> TWFPN:
    return TWFPN(FPN(bottom_up, **_fpn_kwargs(cfg)), norm=cfg.MODEL.FPN.NORM)


@BACKBONE_REGISTRY.register()
def build_cspam_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """CSPAM with Detectron2's FPN (P2-P6, P6 max-pooled from P5): Table 1's CSPAM rows."""
    return FPN(
        build_cspam_backbone(cfg, input_shape), top_block=LastLevelMaxPool(), **_fpn_kwargs(cfg)
    )


@BACKBONE_REGISTRY.register()
def build_resnet_twfpn_backbone(cfg, input_shape: ShapeSpec) -> TWFPN:
    """Detectron2's ResNet (MODEL.RESNETS) with the TWFPN: Table 1's TWFPN + CSMF rows."""
    return _twfpn(cfg, build_resnet_backbone(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_cspam_twfpn_backbone(cfg, input_shape: ShapeSpec) -> TWFPN:
    """CSPAM with the TWFPN: the street-scene model's backbone (CSPAM-50-TWFPN)."""
    return _twfpn(cfg, build_cspam_backbone(cfg, input_shape))
