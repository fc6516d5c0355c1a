"""GRoIE (section 3.3, Fig. 5): RoI features pooled from every FPN level, processed, summed."""

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.layers import Conv2d
from detectron2.modeling.poolers import ROIPooler, convert_boxes_to_pooler_format
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Boxes
from torch import nn

from .config import check_choice
from .non_local import NonLocalBlock

__all__ = [
    "GROIE_MODULES",
    "GRoIEPooler",
    "GRoIEROIHeads",
    "build_groie_module",
    "build_roi_pooler",
]

# conv kernel sizes of the convolutional options, (height, width) of each conv in sequence
_CONVS = {
    "conv3x3": [(3, 3)],
    "conv5x5": [(5, 5)],
    "conv7x7": [(7, 7)],
    "conv7x3_3x7": [(7, 3), (3, 7)],
}
_NON_LOCALS = {"nonlocal1x1": 1, "nonlocal7x7": 7}
GROIE_MODULES = (*_CONVS, *_NON_LOCALS, "none")


def build_groie_module(name: str, channels: int, key: str = "GRoIE module") -> nn.Module:
    """
    A pre- or post-processing module of GRoIE that keeps the shape (N, C, H, W) of its input.

    Args:
        name: one of GROIE_MODULES: convs with ReLU (kernels keep the size by padding), a
            non-local block with 1x1 or 7x7 kernels, or the identity.
        channels: C.
        key: the config key that chose `name`, for the error message.
    """
    check_choice(key, name, GROIE_MODULES)
    if name in _NON_LOCALS:
        return NonLocalBlock(channels, _NON_LOCALS[name])
    if name == "none":
        return nn.Identity()
    convs = []
    for height, width in _CONVS[name]:
        conv = Conv2d(
            channels,
            channels,
            (height, width),
            padding=(height // 2, width // 2),
            activation=nn.ReLU(inplace=True),
        )
        weight_init.c2_msra_fill(conv)
        convs.append(conv)
    return nn.Sequential(*convs)


class GRoIEPooler(nn.Module):
    """
    A drop-in for Detectron2's ROIPooler (same call, same output shape) that pools every RoI
    from every feature level instead of one level chosen by its size, processes each pooled
    map with one pre-processing module shared by the levels, sums them and post-processes the
    sum (Fig. 5, stages 1-4). The sum is not normalised, as in the authors' code.
    """

    def __init__(
        self,
        output_size,
        scales,
        sampling_ratio: int,
        pooler_type: str,
        channels: int,
        pre: str = "conv7x7",
        post: str = "nonlocal7x7",
    ):
        """
        Args:
            output_size, scales, sampling_ratio, pooler_type: as for ROIPooler (the pooling
                operator of each level is ROIPooler's).
            channels: C of every feature level.
            pre, post: names of GROIE_MODULES.
        """
        super().__init__()
        pooler = ROIPooler(output_size, scales, sampling_ratio, pooler_type)
        self.output_size = pooler.output_size
        self.level_poolers = pooler.level_poolers
        self.pre = build_groie_module(pre, channels, "MODEL.SBRCNN.GROIE.PRE")
        self.post = build_groie_module(post, channels, "MODEL.SBRCNN.GROIE.POST")

    def forward(self, x: list[torch.Tensor], box_lists: list[Boxes]) -> torch.Tensor:
        """
        Args:
            x: one (N, C, H_l, W_l) feature map per level, at the scales given at construction.
            box_lists: N Boxes in input-image coordinates.

        Returns:
            (M, C, output_size, output_size) for the M boxes of all images, in order. With no
            box the modules still run (on an empty batch), so their parameters take part in
            the graph as with boxes.
        """
        if len(x) != len(self.level_poolers):
            raise ValueError(f"GRoIE has {len(self.level_poolers)} levels, got {len(x)} maps")
        rois = convert_boxes_to_pooler_format(box_lists)
        pooled = [
            self.pre(pool(level, rois)) for pool, level in zip(self.level_poolers, x, strict=True)
        ]
        return self.post(torch.stack(pooled).sum(dim=0))


def build_roi_pooler(cfg, input_shape, head: str) -> nn.Module:
    """
    The pooler of the box or mask head: GRoIE where MODEL.SBRCNN.GROIE.BOX_ON / MASK_ON asks
    for it, else Detectron2's ROIPooler, both from the head's POOLER_* keys.

    Args:
        input_shape: {feature name: ShapeSpec} of the backbone.
        head: "box" or "mask".
    """
    head_cfg = cfg.MODEL.ROI_BOX_HEAD if head == "box" else cfg.MODEL.ROI_MASK_HEAD
    in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
    args = (
        head_cfg.POOLER_RESOLUTION,
        tuple(1.0 / input_shape[f].stride for f in in_features),
        head_cfg.POOLER_SAMPLING_RATIO,
        head_cfg.POOLER_TYPE,
    )
    groie = cfg.MODEL.SBRCNN.GROIE
    if not (groie.BOX_ON if head == "box" else groie.MASK_ON):
        return ROIPooler(*args)
    channels = input_shape[in_features[0]].channels
    return GRoIEPooler(*args, channels, pre=groie.PRE, post=groie.POST)


@ROI_HEADS_REGISTRY.register()
class GRoIEROIHeads(StandardROIHeads):
    """
    Detectron2's StandardROIHeads with GRoIE in place of the box and/or mask ROIPooler
    (MODEL.SBRCNN.GROIE.BOX_ON / MASK_ON): Faster / Mask R-CNN with GRoIE (Tables 8-10).
    """

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_pooler"] = build_roi_pooler(cfg, input_shape, "box")
        return ret

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        ret = super()._init_mask_head(cfg, input_shape)
        if ret:
            ret["mask_pooler"] = build_roi_pooler(cfg, input_shape, "mask")
        return ret
