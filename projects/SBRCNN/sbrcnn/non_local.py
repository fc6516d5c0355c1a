import math

import torch
from detectron2.layers import Conv2d
from torch import nn

__all__ = ["NonLocalBlock"]


class NonLocalBlock(nn.Module):
    """
    The embedded-Gaussian non-local block of Wang et al. (CVPR 2018) as SBR-CNN uses it: its
    four convolutions (g, theta, phi and the output W_z) have `kernel_size` x `kernel_size`
    kernels, 7 in the paper's version, 1 in the original. The pairwise affinities are divided
    by sqrt(inter channels) before the softmax, as in the authors' (mmcv's) block.

    The output conv starts at zero, so that the block starts as the identity.
    """

    def __init__(self, channels: int, kernel_size: int = 1, reduction: int = 2):
        """
        Args:
            channels: C, channels of the input and the output.
            kernel_size: side of every internal conv kernel (odd).
            reduction: the internal embedding has max(C // reduction, 1) channels.
        """
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"non-local kernel_size={kernel_size}: use an odd size, 1 or 7")
        inter = max(channels // reduction, 1)
        padding = kernel_size // 2
        self.g, self.theta, self.phi = (
            Conv2d(channels, inter, kernel_size, padding=padding) for _ in range(3)
        )
        self.conv_out = Conv2d(inter, channels, kernel_size, padding=padding)
        for conv in (self.g, self.theta, self.phi):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (N, C, H, W).

        Returns:
            (N, C, H, W): x + W_z(softmax(theta(x)^T phi(x) / sqrt(C')) g(x)).
        """
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (N, HW, C')
        phi = self.phi(x).flatten(2)  # (N, C', HW)
        g = self.g(x).flatten(2).transpose(1, 2)  # (N, HW, C')
        affinity = torch.bmm(theta, phi) / math.sqrt(theta.shape[-1])  # (N, HW, HW)
        y = torch.bmm(affinity.softmax(dim=-1), g)  # (N, HW, C')
        y = y.transpose(1, 2).reshape(n, g.shape[-1], h, w)
        return x + self.conv_out(y)
