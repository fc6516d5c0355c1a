import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from .mask_paste import upsample_logits

__all__ = ["DynamicMaskHead", "dice_loss"]


def dice_loss(mask_probs: torch.Tensor, mask_targets: torch.Tensor, eps: float = 1e-5):
    """
    Dice loss (Milletari et al. 2016), the paper's L_dice:
    1 - 2 * sum(p * t) / (sum(p^2) + sum(t^2) + eps), per instance.

    Args:
        mask_probs: (K, H, W) predicted probabilities.
        mask_targets: (K, H, W) targets in [0, 1].

    Returns:
        (K,) loss per instance.
    """
    probs = mask_probs.flatten(1)
    targets = mask_targets.flatten(1)
    intersection = (probs * targets).sum(dim=1)
    union = (probs * probs).sum(dim=1) + (targets * targets).sum(dim=1)
    return 1.0 - 2.0 * intersection / (union + eps)


class DynamicMaskHead(nn.Module):
    """
    CondInst's dynamic mask head, LosNet's "mask FCN head": a stack of 1x1 convs whose weights
    and biases are predicted per instance by the controller. Each instance's head reads the
    shared mask features, concatenated with the coordinates of every pixel relative to the
    instance's location (normalised by its level's size of interest), and outputs one mask
    logit map, upsampled from the mask features' stride to `out_stride`.

    The controller output of one location is laid out as all weights (layer by layer, each
    (out, in) row-major), then all biases.
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        in_stride: int,
        channels: int,
        num_layers: int,
        rel_coords: bool,
        out_stride: int,
    ):
        """
        Args:
            in_channels: channels of the mask features (C_mask).
            in_stride: stride of the mask features.
            channels: channels of the hidden dynamic layers.
            num_layers: number of dynamic 1x1 convs (>= 1); the last outputs one channel.
            rel_coords: concatenate the two relative-coordinate channels.
            out_stride: stride of the returned logits; must divide `in_stride`.
        """
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MODEL.LOSNET.MASK_HEAD.NUM_LAYERS={num_layers}: need at least 1")
        if out_stride < 1 or in_stride % out_stride:
            raise ValueError(
                f"MODEL.LOSNET.MASK_HEAD.OUT_STRIDE={out_stride} must divide the mask features' "
                f"stride {in_stride}"
            )
        self.in_stride = in_stride
        self.out_stride = out_stride
        self.rel_coords = rel_coords
        first_in = in_channels + (2 if rel_coords else 0)
        in_dims = [first_in] + [channels] * (num_layers - 1)
        out_dims = [channels] * (num_layers - 1) + [1]
        self.layer_shapes: list[tuple[int, int]] = list(zip(out_dims, in_dims, strict=True))
        self.num_params = sum(o * i + o for o, i in self.layer_shapes)

    @classmethod
    def from_config(cls, cfg, in_channels: int, in_stride: int):
        head = cfg.MODEL.LOSNET.MASK_HEAD
        return {
            "in_channels": in_channels,
            "in_stride": in_stride,
            "channels": head.CHANNELS,
            "num_layers": head.NUM_LAYERS,
            "rel_coords": head.REL_COORDS,
            "out_stride": head.OUT_STRIDE,
        }

    @property
    def upsample_factor(self) -> int:
        """in_stride / out_stride: how much the mask logits are upsampled."""
        return self.in_stride // self.out_stride

    def split_params(self, params: torch.Tensor):
        """
        Args:
            params: (K, num_params) controller outputs of K instances.

        Returns:
            weights: per layer, (K, out, in).
            biases: per layer, (K, out, 1).
        """
        weight_sizes = [o * i for o, i in self.layer_shapes]
        bias_sizes = [o for o, _ in self.layer_shapes]
        chunks = torch.split(params, weight_sizes + bias_sizes, dim=1)
        weights = [
            w.reshape(-1, o, i)
            for w, (o, i) in zip(chunks[: len(weight_sizes)], self.layer_shapes, strict=True)
        ]
        biases = [b[:, :, None] for b in chunks[len(weight_sizes) :]]
        return weights, biases

    def forward(
        self,
        mask_features: torch.Tensor,
        image_indices: torch.Tensor,
        locations: torch.Tensor,
        sizes_of_interest: torch.Tensor,
        params: torch.Tensor,
        upsample: bool = True,
    ) -> torch.Tensor:
        """
        Args:
            mask_features: (N, C, H, W) shared mask features at `in_stride`.
            image_indices: (K,) image of each instance.
            locations: (K, 2) xy of each instance's location, in input-image pixels.
            sizes_of_interest: (K,) normaliser of the relative coordinates.
            params: (K, num_params) dynamic parameters.
            upsample: False leaves the logits at `in_stride`, for inference to upsample only
                where it pastes them (:func:`losnet.mask_paste.paste_masks`, `upsample_factor`).

        Returns:
            (K, H * f, W * f) mask logits at `out_stride`, f = `upsample_factor`; pixel (i, j)
            covers input pixels [i * out_stride, (i + 1) * out_stride) and likewise for j.
            With `upsample` False, (K, H, W) at `in_stride`.
        """
        _, _, height, width = mask_features.shape
        x = mask_features[image_indices].flatten(2)  # (K, C, H * W)
        if self.rel_coords:
            # Pixel centres of the mask features, in input pixels.
            ys = (torch.arange(height, device=x.device, dtype=x.dtype) + 0.5) * self.in_stride
            xs = (torch.arange(width, device=x.device, dtype=x.dtype) + 0.5) * self.in_stride
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            grid = torch.stack([grid_x, grid_y]).flatten(1)  # (2, H * W)
            rel = (locations[:, :, None] - grid[None]) / sizes_of_interest[:, None, None]
            x = torch.cat([rel.to(x.dtype), x], dim=1)

        # Each instance's 1x1 convs are matrix products over its own weights (a batched matmul
        # rather than a grouped convolution, whose group count cannot vary in an exported graph).
        weights, biases = self.split_params(params)
        for index, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
            x = torch.baddbmm(bias, weight, x)
            if index < len(weights) - 1:
                x = F.relu(x)
        logits = x.reshape(-1, height, width)
        return upsample_logits(logits, self.upsample_factor) if upsample else logits
