import copy

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .head import LevelTower

__all__ = ["fold_batch_norms"]

_BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)


def _folded_conv(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A plain conv that computes norm(conv(x)) for a batch norm in inference mode."""
    weight, bias = fuse_conv_bn_weights(
        conv.weight,
        conv.bias,
        norm.running_mean,
        norm.running_var,
        norm.eps,
        norm.weight,
        norm.bias,
    )
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    )
    folded.weight = weight
    folded.bias = bias
    return folded


@torch.no_grad()
def fold_batch_norms(model: nn.Module) -> nn.Module:
    """
    Fold every batch norm that directly follows a convolution into that convolution, the
    deployment step for which the paper prefers BN over GN (section 3.3). Handles Detectron2
    `Conv2d(norm=...)` layers, torchvision's conv-BN sequences and LosNet's head towers, where
    a conv shared by the levels followed by a BN per level becomes one folded conv per level
    (the tower's `level_norms[i][level]` then holds that conv and `convs[i]` is an identity).
    GroupNorm has no fixed statistics and stays.

    Args:
        model: any module; it is not modified.

    Returns:
        A folded copy in eval mode whose outputs equal `model.eval()`'s up to float rounding.
    """
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        if isinstance(module, LevelTower):
            for index, (conv, norms) in enumerate(
                zip(module.convs, module.level_norms, strict=True)
            ):
                if isinstance(conv, nn.Conv2d) and all(isinstance(n, _BATCH_NORMS) for n in norms):
                    module.level_norms[index] = nn.ModuleList(_folded_conv(conv, n) for n in norms)
                    module.convs[index] = nn.Identity()
        elif isinstance(module, Conv2d) and isinstance(module.norm, _BATCH_NORMS):
            folded = _folded_conv(module, module.norm)
            module.weight, module.bias, module.norm = folded.weight, folded.bias, None
        elif isinstance(module, nn.Sequential):
            children = list(module)
            for index in range(len(children) - 1):
                conv, norm = children[index], children[index + 1]
                if type(conv) is nn.Conv2d and isinstance(norm, _BATCH_NORMS):
                    module[index] = _folded_conv(conv, norm)
                    module[index + 1] = nn.Identity()
    return model
