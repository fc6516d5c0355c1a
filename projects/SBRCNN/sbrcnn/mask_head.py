import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling.roi_heads import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead
from torch import nn

__all__ = ["SBRLoopMaskHead"]


@ROI_MASK_HEAD_REGISTRY.register()
class SBRLoopMaskHead(MaskRCNNConvUpsampleHead):
    """
    The mask head M1 of R3-CNN with its internal loop (eq. 3-4): Detectron2's Mask R-CNN head
    (the convs, then the x2 deconv U and the 1x1 predictor C2) plus a 1x1 conv C1 that feeds
    the previous iteration's output back:

        m^0 = M1(x + C1(0)),  m^k = M1(x + C1(m^(k-1))),  logits = C2(U(m^(j-1)))

    where M1 is the stack of 3x3 convs and m^k its (N, conv_dim, 14, 14) output. As in the
    authors' code, C1 has a bias and a ReLU, and it is applied to zeros in the first iteration.

    `refine` runs one iteration, `predict` turns its output into mask logits; the R3 ROI heads
    chain them. Called as a Detectron2 mask head, it runs one iteration.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, **kwargs):
        """
        Args:
            input_shape, kwargs: as for MaskRCNNConvUpsampleHead.
        """
        super().__init__(input_shape, **kwargs)
        # C1: from the convs' output channels back to the RoI features' channels.
        self.feedback = Conv2d(
            self.deconv.in_channels,
            input_shape.channels,
            kernel_size=1,
            activation=nn.ReLU(),
        )
        weight_init.c2_msra_fill(self.feedback)

    def refine(self, x: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """
        One iteration of the internal loop.

        Args:
            x: (N, C, S, S) RoI features.
            previous: (N, conv_dim, S, S), the previous iteration's output; None in the first.

        Returns:
            (N, conv_dim, S, S).
        """
        if previous is None:
            previous = x.new_zeros(x.shape[0], self.feedback.in_channels, *x.shape[2:])
        x = x + self.feedback(previous)
        for conv in self.conv_norm_relus:
            x = conv(x)
        return x

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: (N, conv_dim, S, S), an output of `refine`.

        Returns:
            (N, K, 2S, 2S) mask logits (K = 1 for class-agnostic masks).
        """
        return self.predictor(self.deconv_relu(self.deconv(features)))

    def layers(self, x):
        return self.predict(self.refine(x))
