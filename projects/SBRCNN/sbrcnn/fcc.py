"""FCC (section 3.2): the fully connected layers of a head replaced by L2C convolutions."""

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY
from torch import nn
from torch.nn import functional as F

from .config import check_choice
from .non_local import NonLocalBlock

__all__ = ["L2C_KERNELS", "RECT_LAYOUTS", "FCCBoxHead", "L2C"]

L2C_KERNELS = ("7x7", "7x3_3x7")
RECT_LAYOUTS = ("paper", "authors")


def _conv_relu(in_channels, out_channels, kernel_size, padding):
    conv = Conv2d(
        in_channels, out_channels, kernel_size, padding=padding, activation=nn.ReLU(inplace=True)
    )
    weight_init.c2_msra_fill(conv)
    return conv


class L2C(nn.Module):
    """
    L2C: two convolutions in place of two FC layers (Fig. 4), each followed by ReLU, with an
    optional non-local block before (NL_b) and after (NL_a) them. Every spatial size is kept,
    so a 7x7 RoI gives (N, conv_dims[-1], 7, 7).

    Kernels "7x7": conv1 and conv2, 7x7 with padding 3 (Fig. 4b). Kernels "7x3_3x7" split each
    into a 7x3 conv "a" and a 3x7 conv "b" (Fig. 4c), laid out as
      - "paper" (Table 1): a keeps the channels, b reduces them; paddings (3, 1) and (1, 3);
      - "authors" (their code): a reduces the channels, b keeps them; a 7x3 kernel with
        padding 1 turns 7x7 into 3x7, a 3x7 kernel with padding 3 turns it back into 7x7.
    Following the authors' code, a non-local block is also followed by a ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        conv_dims=(128, 64),
        *,
        kernels: str = "7x7",
        rect_layout: str = "paper",
        nl_before: bool = False,
        nl_after: bool = False,
        nl_kernel: int = 7,
    ):
        """
        Args:
            in_channels: C of the input (N, C, H, W).
            conv_dims: output channels of the two convs.
            kernels: one of L2C_KERNELS.
            rect_layout: one of RECT_LAYOUTS, for kernels "7x3_3x7".
            nl_before, nl_after, nl_kernel: the non-local blocks and their kernel size.
        """
        super().__init__()
        check_choice("L2C kernels", kernels, L2C_KERNELS)
        check_choice("L2C rectangular layout", rect_layout, RECT_LAYOUTS)
        self.nl_before = NonLocalBlock(in_channels, nl_kernel) if nl_before else None
        channels = in_channels
        for index, out_channels in enumerate(conv_dims, start=1):
            if kernels == "7x7":
                self.add_module(f"conv{index}", _conv_relu(channels, out_channels, 7, 3))
            elif rect_layout == "paper":
                self.add_module(f"conv{index}a", _conv_relu(channels, channels, (7, 3), (3, 1)))
                self.add_module(f"conv{index}b", _conv_relu(channels, out_channels, (3, 7), (1, 3)))
            else:
                self.add_module(f"conv{index}a", _conv_relu(channels, out_channels, (7, 3), 1))
                self.add_module(f"conv{index}b", _conv_relu(out_channels, out_channels, (3, 7), 3))
            channels = out_channels
        self.nl_after = NonLocalBlock(channels, nl_kernel) if nl_after else None
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (N, C, H, W) RoI features.

        Returns:
            (N, conv_dims[-1], H, W).
        """
        for name, layer in self.named_children():
            x = layer(x)
            if name.startswith("nl_"):
                x = F.relu(x)
        return x


@ROI_BOX_HEAD_REGISTRY.register()
class FCCBoxHead(L2C):
    """
    The FCC box head: L2C on the pooled RoI features; the classification and regression
    layers (Detectron2's FastRCNNOutputLayers) read its flattened output.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, **kwargs):
        """
        Args:
            input_shape: shape of the pooled RoI features.
            kwargs: the arguments of :class:`L2C`.
        """
        super().__init__(input_shape.channels, **kwargs)
        self._output_size = ShapeSpec(
            channels=self.out_channels, height=input_shape.height, width=input_shape.width
        )

    @classmethod
    def from_config(cls, cfg, input_shape):
        fcc = cfg.MODEL.SBRCNN.FCC
        check_choice("MODEL.SBRCNN.FCC.L2C", fcc.L2C, L2C_KERNELS)
        check_choice("MODEL.SBRCNN.FCC.RECT_LAYOUT", fcc.RECT_LAYOUT, RECT_LAYOUTS)
        return {
            "input_shape": input_shape,
            "conv_dims": tuple(fcc.CONV_DIMS),
            "kernels": fcc.L2C,
            "rect_layout": fcc.RECT_LAYOUT,
            "nl_before": fcc.NL_BEFORE,
            "nl_after": fcc.NL_AFTER,
            "nl_kernel": fcc.NL_KERNEL,
        }

    @property
    def output_shape(self) -> ShapeSpec:
        return self._output_size
