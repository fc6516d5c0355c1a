"""
BatchNorms at inference: folded into the convs before them for deployment, and calibrated for
models that have never seen data (random weights).
"""

import copy

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .projects import registered_projects

__all__ = ["BATCH_NORMS", "calibrate_batch_norms", "fold_batch_norms", "folded_conv"]

# Norms with fixed statistics at inference, which a conv before them can absorb.
BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d)


def folded_conv(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
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


def _fold_generic(module: nn.Module) -> None:
    """Fold a Detectron2 Conv2d's own norm, or each conv-BN pair of a Sequential, in place."""
    if isinstance(module, Conv2d) and isinstance(module.norm, BATCH_NORMS):
        folded = folded_conv(module, module.norm)
        module.weight, module.bias, module.norm = folded.weight, folded.bias, None
    elif isinstance(module, nn.Sequential):
        for index in range(len(module) - 1):
            conv, norm = module[index], module[index + 1]
            if type(conv) is nn.Conv2d and isinstance(norm, BATCH_NORMS):
                module[index] = folded_conv(conv, norm)
                module[index + 1] = nn.Identity()


@torch.no_grad()
def fold_batch_norms(model: nn.Module, hooks=None) -> nn.Module:
    """
    Fold every batch norm that directly follows a convolution into that convolution, for
    deployment: Detectron2 `Conv2d(norm=...)` layers, conv-BN pairs in an `nn.Sequential`
    (torchvision's blocks), and what the projects' hooks handle (e.g. LosNet's head towers,
    whose shared conv is followed by one BN per pyramid level). GroupNorm has no fixed
    statistics and stays.

    Args:
        model: any module; it is not modified.
        hooks: functions called on every module that fold it in place and return True, or
            return False; default: the registered projects' `fold_batch_norms` hooks.

    Returns:
        A folded copy in eval mode whose outputs equal `model.eval()`'s up to float rounding.
    """
    if hooks is None:
        hooks = [p.fold_batch_norms for p in registered_projects() if p.fold_batch_norms]
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        if not any(hook(module) for hook in hooks):
            _fold_generic(module)
    return model


@torch.no_grad()
def calibrate_batch_norms(model: torch.nn.Module, inputs) -> None:
    """
    Give every batch norm the mean and variance of its own input on `inputs`, in one forward
    pass (each norm sees the already calibrated layers before it).

    A randomly initialised network in eval mode normalises with made-up statistics: an untrained
    FrozenBN ResNet blows its activations up until every box leaves the image, and an untrained
    MobileNetV3 loses the image altogether. Benchmarks and export tests of random-weight models
    calibrate first, so the models do the work a trained one would.

    Args:
        model: in eval mode; its norms are modified in place.
        inputs: what `model` takes, e.g. [{"image": (3, H, W) tensor}].
    """

    def take_input_statistics(norm, args):
        features = args[0]
        norm.running_mean.copy_(features.mean(dim=(0, 2, 3)))
        norm.running_var.copy_(features.var(dim=(0, 2, 3), unbiased=False))

    norms = [m for m in model.modules() if isinstance(m, BATCH_NORMS)]
    hooks = [norm.register_forward_pre_hook(take_input_statistics) for norm in norms]
    try:
        model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
