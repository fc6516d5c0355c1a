"""
SOLOv2's category and kernel branches, and the losses that train them with the mask features.

Shape shorthand: B images; L levels with S_l x S_l cells, R = sum of S_l^2 cells per image;
C classes; E mask feature channels (the length of a dynamic 1 x 1 kernel); M = H_m W_m pixels of
the mask features (stride 4 of the padded batch); P (cell, object) pairs.
"""

import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, cat, get_norm
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from fvcore.nn import sigmoid_focal_loss_jit
from torch import nn

from .mask_branch import coordinates_like
from .targets import GridPairs, cell_labels

__all__ = [
    "SOLOv2InstanceHead",
    "aml_mask_loss",
    "dice_loss",
    "minimum_loss_matching",
    "solov2_losses",
]


def _tower(in_channels: int, channels: int, num_convs: int, norm: str) -> nn.Sequential:
    layers = []
    for index in range(num_convs):
        conv = Conv2d(
            in_channels if index == 0 else channels,
            channels,
            kernel_size=3,
            padding=1,
            bias=not norm,
            norm=get_norm(norm, channels),
            activation=F.relu,
        )
        layers.append(conv)
    return nn.Sequential(*layers)


class SOLOv2InstanceHead(nn.Module):
    """
    The category and kernel branches. Level inputs are those of SOLOv2: the first level
    downsampled x0.5 and the last resized to the size of the one before it. Each level, with
    two coordinate channels appended, is resized bilinearly to its S x S grid; the kernel tower
    reads it with the coordinates, the category tower without. The towers (3 x 3 convs, norm,
    ReLU) are shared by the levels and end in 3 x 3 convs to E kernel values and C class
    logits per cell.
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_kernels: int,
        num_grids: list[int],
        channels: int,
        num_convs: int,
        norm: str,
        prior_prob: float,
    ):
        """
        Args:
            in_channels: of every input level.
            num_kernels: E, the mask branch's output channels.
            num_grids: S of each level.
            channels, num_convs, norm: of each tower.
            prior_prob: initial foreground probability of every class.
        """
        super().__init__()
        self.num_grids = list(num_grids)
        self.kernel_tower = _tower(in_channels + 2, channels, num_convs, norm)
        self.category_tower = _tower(in_channels, channels, num_convs, norm)
        tower_out = channels if num_convs > 0 else in_channels
        self.kernel_pred = nn.Conv2d(tower_out + 2 * (num_convs == 0), num_kernels, 3, padding=1)
        self.category_pred = nn.Conv2d(tower_out, num_classes, 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        nn.init.constant_(self.category_pred.bias, -math.log((1 - prior_prob) / prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shape: list[ShapeSpec]):
        solov2 = cfg.MODEL.SOLOV2
        channels = {shape.channels for shape in input_shape}
        if len(channels) != 1:
            raise ValueError(
                f"MODEL.SOLOV2.INSTANCE_IN_FEATURES = {solov2.INSTANCE_IN_FEATURES}: the levels "
                f"must have one number of channels, they have {sorted(channels)}"
            )
        if len(solov2.NUM_GRIDS) != len(input_shape):
            raise ValueError(
                f"MODEL.SOLOV2.NUM_GRIDS = {solov2.NUM_GRIDS}: one per level of "
                f"INSTANCE_IN_FEATURES = {solov2.INSTANCE_IN_FEATURES}"
            )
        return {
            "in_channels": channels.pop(),
            "num_classes": solov2.NUM_CLASSES,
            "num_kernels": solov2.NUM_MASKS,
            "num_grids": solov2.NUM_GRIDS,
            "channels": solov2.INSTANCE_CHANNELS,
            "num_convs": solov2.NUM_INSTANCE_CONVS,
            "norm": solov2.NORM,
            "prior_prob": solov2.PRIOR_PROB,
        }

    @staticmethod
    def level_inputs(features: list[torch.Tensor]) -> list[torch.Tensor]:
        """SOLOv2's level inputs: the first level halved, the last at the previous one's size."""
        first = F.interpolate(features[0], scale_factor=0.5, mode="bilinear", align_corners=False)
        last = F.interpolate(
            features[-1], size=features[-2].shape[-2:], mode="bilinear", align_corners=False
        )
        return [first, *features[1:-1], last]

    def forward(self, features: list[torch.Tensor]):
        """
        Args:
            features: L levels (B, C_in, H_l, W_l), finest first.

        Returns:
            category_logits: L tensors (B, C, S_l, S_l).
            kernels: L tensors (B, E, S_l, S_l).
        """
        category_logits, kernels = [], []
        for x, size in zip(self.level_inputs(features), self.num_grids, strict=True):
            x = torch.cat([x, coordinates_like(x)], dim=1)
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            kernels.append(self.kernel_pred(self.kernel_tower(x)))
            category_logits.append(self.category_pred(self.category_tower(x[:, :-2])))
        return category_logits, kernels


def dice_loss(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """
    SOLOv2's dice loss, 1 - 2 sum(p t) / (sum(p^2) + sum(t^2) + 0.002).

    Args:
        probs, targets: (P, M) mask probabilities and 0/1 targets.

    Returns:
        (P,) loss of each pair.
    """
    overlap = (probs * targets).sum(dim=1)
    return 1 - 2 * overlap / ((probs * probs).sum(dim=1) + (targets * targets).sum(dim=1) + 2e-3)


def aml_mask_loss(
    probs: torch.Tensor,
    targets: torch.Tensor,
    target_centroids: torch.Tensor,
    pixel_coordinates: torch.Tensor,
) -> torch.Tensor:
    """
    The AML mask term of one pair (eq. 1 and 2):
    1 - (2 sum(m g) + 1) / (sum(m) + sum(g) + 1) + epsilon, with
    epsilon = |C_P - C_G|^2 / (|sum(m g)| + 1), C_P the probability-weighted centroid of the
    predicted mask and C_G the ground truth's, in units of the padded image's width and height
    (so that epsilon only matters where the masks barely overlap).

    Args:
        probs, targets: (P, M) mask probabilities and 0/1 targets.
        target_centroids: (P, 2) (x, y) ground-truth centroid of each pair, in [0, 1].
        pixel_coordinates: (M, 2) (x, y) centre of each mask pixel, in [0, 1].

    Returns:
        (P,) loss of each pair.
    """
    overlap = (probs * targets).sum(dim=1)
    dice = 1 - (2 * overlap + 1) / (probs.sum(dim=1) + targets.sum(dim=1) + 1)
    # An all-zero predicted mask has its centroid at the origin: epsilon stays finite.
    centroids = (probs @ pixel_coordinates) / probs.sum(dim=1, keepdim=True).clamp(min=1e-6)
    epsilon = ((centroids - target_centroids) ** 2).sum(dim=1) / (overlap.abs() + 1)
    return dice + epsilon


def minimum_loss_matching(cells: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
    """
    Adaptive minimum-loss matching: of the pairs of each cell, keep the one of lowest cost
    (the first one on ties).

    Args:
        cells: (P,) cell of each pair.
        costs: (P,) loss of each pair.

    Returns:
        (P,) bool, the kept pairs.
    """
    by_cost = costs.argsort(stable=True)
    order = by_cost[cells[by_cost].argsort(stable=True)]  # grouped by cell, cheapest first
    first = torch.ones_like(cells, dtype=torch.bool)
    first[1:] = cells[order][1:] != cells[order][:-1]
    keep = torch.zeros_like(first)
    keep[order[first]] = True
    return keep


def _pixel_centres(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(H W, 2) (x, y) centre of each pixel of an H x W map, in units of its width and height."""
    ys = (torch.arange(height, device=device) + 0.5) / height
    xs = (torch.arange(width, device=device) + 0.5) / width
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x, y], dim=-1).flatten(0, 1)


def _mean_over_workers(value: float, device: torch.device) -> float:
    """`value` averaged over the training processes (the same on one process)."""
    if comm.get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float32, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.item() / comm.get_world_size()


def solov2_losses(
    category_logits: torch.Tensor,
    kernels: torch.Tensor,
    mask_features: torch.Tensor,
    targets: list[dict],
    *,
    loss: str,
    focal_alpha: float,
    focal_gamma: float,
    focal_weight: float,
    mask_weight: float,
) -> dict[str, torch.Tensor]:
    """
    The losses of a batch.

    "solov2": loss_cate = focal_weight x sigmoid focal loss summed over all cells and classes /
    (positive cells + 1); loss_mask = mask_weight x the dice loss (:func:`dice_loss`) averaged
    over all (cell, object) pairs; a cell of several objects takes the class of the last one
    and learns all their masks.

    "aml": each cell of several objects first keeps only its pair of smallest loss
    sigmoid(focal) + sigmoid(mask_weight x :func:`aml_mask_loss`) (:func:`minimum_loss_matching`);
    then loss_cate = sigmoid(L_cate) and loss_mask = sigmoid(mask_weight x L_mask), with L_cate
    as above and L_mask the mean of :func:`aml_mask_loss` over the kept pairs (eq. 3).

    Args:
        category_logits: (B, R, C).
        kernels: (B, R, E).
        mask_features: (B, E, H_m, W_m).
        targets: per image, {"pairs": GridPairs, "classes": (G,), "masks": (G, H_m, W_m) 0/1,
            "centroids": (G, 2) (x, y) in [0, 1]}.
        loss: "solov2" or "aml".

    Returns:
        {"loss_cate": scalar, "loss_mask": scalar}.
    """
    num_images, num_cells, num_classes = category_logits.shape
    height, width = mask_features.shape[-2:]
    pixels = _pixel_centres(height, width, kernels.device)
    labels, pair_losses = [], []
    for index, target in enumerate(targets):
        pairs: GridPairs = target["pairs"]
        logits = kernels[index, pairs.cells] @ mask_features[index].flatten(1)  # (P, M)
        probs, masks = logits.sigmoid(), target["masks"][pairs.objects].flatten(1)
        if loss == "solov2":
            pair_losses.append(dice_loss(probs, masks))
        else:
            losses = aml_mask_loss(probs, masks, target["centroids"][pairs.objects], pixels)
            # The focal loss of each pair's cell against the pair's class: (P,).
            one_hot = F.one_hot(target["classes"][pairs.objects], num_classes).to(logits.dtype)
            focal = sigmoid_focal_loss_jit(
                category_logits[index, pairs.cells],
                one_hot,
                alpha=focal_alpha,
                gamma=focal_gamma,
                reduction="none",
            ).sum(dim=1)
            costs = (focal.sigmoid() + (mask_weight * losses).sigmoid()).detach()
            keep = minimum_loss_matching(pairs.cells, costs)
            pairs = pairs[keep]
            pair_losses.append(losses[keep])
        labels.append(cell_labels(pairs, target["classes"], num_cells, background=num_classes))

    labels = torch.stack(labels)  # (B, R)
    num_positive = _mean_over_workers((labels != num_classes).sum().item(), labels.device)
    get_event_storage().put_scalar("solov2/num_positive_cells", num_positive / num_images)
    class_targets = F.one_hot(labels, num_classes + 1)[..., :num_classes].to(category_logits.dtype)
    loss_cate = sigmoid_focal_loss_jit(
        category_logits, class_targets, alpha=focal_alpha, gamma=focal_gamma, reduction="sum"
    ) * (focal_weight / (num_positive + 1))
    pair_losses = cat(pair_losses)
    if len(pair_losses) == 0:
        # No object in the batch: keep the kernel and mask branches in the graph for DDP.
        mask_loss = kernels.sum() * 0 + mask_features.sum() * 0
    else:
        mask_loss = pair_losses.mean()
    if loss == "aml":
        return {"loss_cate": loss_cate.sigmoid(), "loss_mask": (mask_weight * mask_loss).sigmoid()}
    return {"loss_cate": loss_cate, "loss_mask": mask_weight * mask_loss}
