"""BatchNorm statistics for models that have never seen data (random weights)."""

import torch
from detectron2.layers import FrozenBatchNorm2d

__all__ = ["calibrate_batch_norms"]


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

    norms = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d))]
    hooks = [norm.register_forward_pre_hook(take_input_statistics) for norm in norms]
    try:
        model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
