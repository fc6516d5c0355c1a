"""
CSPAM (section 2.1, Figs. 2-3): ResNet-50 with cross-stage partial stages, Mish activations and
position attention modules between stages.
"""

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from fvcore.nn import weight_init
from torch import nn

from ..config import check_choice

__all__ = [
    "CSPAM",
    "CSPBottleneck",
    "CSPStage",
    "CSPStem",
    "PositionAttention",
    "build_cspam_backbone",
]


def _conv(in_channels, out_channels, kernel_size, norm, stride=1, activation=F.mish) -> Conv2d:
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        bias=False,
        norm=get_norm(norm, out_channels),
        activation=activation,
    )
    weight_init.c2_msra_fill(conv)
    return conv


class CSPStem(CNNBlockBase):
    """ResNet's stem (7 x 7 conv with stride 2, norm, 3 x 3 max pool with stride 2), with Mish."""

    def __init__(self, in_channels: int, out_channels: int, norm: str):
        super().__init__(in_channels, out_channels, 4)
        self.conv1 = _conv(in_channels, out_channels, 7, norm, stride=2)

    def forward(self, x):
        return F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)


class CSPBottleneck(nn.Module):
    """
    ResNet's bottleneck block with Mish: 1 x 1 conv to `channels` / 4, 3 x 3 conv, 1 x 1 conv
    back to `channels`, plus the identity.
    """

    def __init__(self, channels: int, norm: str):
        super().__init__()
        width = channels // 4
        self.conv1 = _conv(channels, width, 1, norm)
        self.conv2 = _conv(width, width, 3, norm)
        self.conv3 = _conv(width, channels, 1, norm, activation=None)

    def forward(self, x):
        return F.mish(x + self.conv3(self.conv2(self.conv1(x))))


class CSPStage(CNNBlockBase):
    """
    A cross-stage partial ResNet stage (Fig. 2): a 1 x 1 conv (with the stage's stride, where
    MSRA's ResNet puts it) gives `out_channels` that are split in two halves; the second passes
    `depth` bottleneck blocks of half ResNet's width, the first skips them; both are
    concatenated and mixed by a 1 x 1 transition conv.
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int, stride: int, norm: str):
        super().__init__(in_channels, out_channels, stride)
        self.split = _conv(in_channels, out_channels, 1, norm, stride=stride)
        self.blocks = nn.Sequential(*(CSPBottleneck(out_channels // 2, norm) for _ in range(depth)))
        self.transition = _conv(out_channels, out_channels, 1, norm)

    def forward(self, x):
        skipped, processed = self.split(x).chunk(2, dim=1)
        return self.transition(torch.cat([skipped, self.blocks(processed)], dim=1))


class PositionAttention(nn.Module):
    """
    The position attention module (Fig. 3). A 1 x 1 conv reduces the C input channels to
    C1 = C / `reduction`: the map T1, read as the C1 x N maps P, A and M (N = H W). Each
    position i gathers M over all positions j with the weights softmax_j(P_i . A_j); a 1 x 1
    conv takes the result to C2 = C - C1 channels, T2. The output T3 = concat(theta T1, T2),
    theta learnable and initialised to 0, is added to the input (`residual`) or replaces it.
    """

    def __init__(self, channels: int, reduction: int = 8, residual: bool = True):
        super().__init__()
        reduced = channels // reduction
        if reduced < 1:
            raise ValueError(
                f"MODEL.CSPAM.PAM_REDUCTION = {reduction}: more than the {channels} channels "
                "of the stage it follows"
            )
        self.reduce = nn.Conv2d(channels, reduced, kernel_size=1)
        self.expand = nn.Conv2d(reduced, channels - reduced, kernel_size=1)
        for conv in (self.reduce, self.expand):
            weight_init.c2_msra_fill(conv)
        self.theta = nn.Parameter(torch.zeros(()))
        self.residual = residual

    def forward(self, x):
        """
        Args:
            x: (B, C, H, W).

        Returns:
            (B, C, H, W).
        """
        batch, _, height, width = x.shape
        reduced = self.reduce(x)  # T1: (B, C1, H, W)
        positions = reduced.flatten(2)  # P = A = M: (B, C1, N)
        weights = torch.softmax(positions.transpose(1, 2) @ positions, dim=2)  # (B, N, N)
        attended = positions @ weights.transpose(1, 2)  # (B, C1, N)
        expanded = self.expand(attended.view(batch, -1, height, width))  # T2
        output = torch.cat([self.theta * reduced, expanded], dim=1)  # T3
        return x + output if self.residual else output


class CSPAM(Backbone):
    """
    The CSPAM backbone: a stem and the cross-stage partial stages res2-res5 (strides 4-32), a
    :class:`PositionAttention` after each stage of `pam_stages`; each stage reads the output of
    the attention before it, and that output is the stage's feature.
    """

    def __init__(
        self,
        *,
        depths: list[int],
        stem_out_channels: int,
        res2_out_channels: int,
        norm: str,
        out_features: list[str],
        pam_stages: list[str],
        pam_reduction: int,
        pam_residual: bool,
        freeze_at: int = 0,
    ):
        super().__init__()
        names = [f"res{index}" for index in range(2, 2 + len(depths))]
        for key, values in (("OUT_FEATURES", out_features), ("PAM_STAGES", pam_stages)):
            unknown = [v for v in values if v not in names]
            if unknown or (key == "OUT_FEATURES" and not values):
                raise ValueError(f"MODEL.CSPAM.{key} = {values}: name some of {names}")
        self.stem = CSPStem(3, stem_out_channels, norm)
        self._out_features = list(out_features)
        self._out_feature_strides, self._out_feature_channels = {}, {}
        self.stage_names, self.pams = [], nn.ModuleDict()
        in_channels, channels, stride = stem_out_channels, res2_out_channels, 4
        last = max(names.index(name) for name in out_features)
        for index, (name, depth) in enumerate(zip(names[: last + 1], depths, strict=False)):
            stage_stride = 1 if index == 0 else 2
            stride *= stage_stride
            self.add_module(name, CSPStage(in_channels, channels, depth, stage_stride, norm))
            self.stage_names.append(name)
            if name in pam_stages:
                self.pams[name] = PositionAttention(channels, pam_reduction, pam_residual)
            self._out_feature_strides[name], self._out_feature_channels[name] = stride, channels
            in_channels, channels = channels, channels * 2
        self.freeze(freeze_at)

    def forward(self, x):
        """
        Args:
            x: (B, 3, H, W).

        Returns:
            {name: (B, C, H / stride, W / stride)} of the out features.
        """
        outputs = {}
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.pams:
                x = self.pams[name](x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self):
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    def freeze(self, freeze_at: int = 0):
        """
        Freeze the stem (`freeze_at` >= 1) and the stages res2 ... res<freeze_at> with their
        attention modules, as Detectron2's ResNet does (MODEL.BACKBONE.FREEZE_AT).
        """
        if freeze_at >= 1:
            self.stem.freeze()
        for index, name in enumerate(self.stage_names, start=2):
            if freeze_at >= index:
                getattr(self, name).freeze()
                if name in self.pams:
                    self.pams[name].requires_grad_(False)
        return self


@BACKBONE_REGISTRY.register()
def build_cspam_backbone(cfg, input_shape: ShapeSpec) -> CSPAM:
    """The CSPAM backbone of MODEL.CSPAM (3 input channels)."""
    cspam = cfg.MODEL.CSPAM
    if input_shape.channels != 3:
        raise ValueError(
            f"CSPAM takes 3-channel images; MODEL.PIXEL_MEAN has {input_shape.channels}"
        )
    check_choice("MODEL.CSPAM.NORM", cspam.NORM, ("BN", "SyncBN", "FrozenBN", "GN", ""))
    return CSPAM(
        depths=list(cspam.DEPTHS),
        stem_out_channels=cspam.STEM_OUT_CHANNELS,
        res2_out_channels=cspam.RES2_OUT_CHANNELS,
        norm=cspam.NORM,
        out_features=list(cspam.OUT_FEATURES),
        pam_stages=list(cspam.PAM_STAGES),
        pam_reduction=cspam.PAM_REDUCTION,
        pam_residual=cspam.PAM_RESIDUAL,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )
