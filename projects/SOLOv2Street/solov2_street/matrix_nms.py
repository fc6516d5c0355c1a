"""
Matrix NMS and point NMS of SOLOv2 (Wang et al., NeurIPS 2020), as pure tensor functions.

Shape shorthand: N masks of H x W pixels; S x S grid cells; C classes.
"""

import torch
import torch.nn.functional as F

__all__ = ["matrix_nms", "point_nms"]

# Keeps the linear kernel finite where a suppressor is itself a duplicate (compensation 1).
_LINEAR_MIN_DENOMINATOR = 1e-6


def _pairwise_mask_iou(masks: torch.Tensor) -> torch.Tensor:
    """
    Args:
        masks: (N, H, W) bool.

    Returns:
        (N, N) IoU; 0 between two empty masks.
    """
    flat = masks.flatten(1).to(torch.float32)
    # Sums of 0/1 values are exact in float32 up to 2^24 pixels.
    intersection = flat @ flat.T
    areas = flat.sum(dim=1)
    union = areas[:, None] + areas[None, :] - intersection
    return intersection / union.clamp(min=1)


def matrix_nms(
    masks: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    kernel: str = "gaussian",
    sigma: float = 2.0,
) -> torch.Tensor:
    """
    Matrix NMS: every mask's score decays by its overlap with the higher-scoring masks of its
    label, each suppressor's decay compensated by how much that suppressor is itself
    suppressed. Nothing is removed: the caller thresholds the decayed scores.

    For masks sorted by descending score and j below i, with IoU_ij the IoU of two masks of the
    same label (0 across labels) and comp_i = max over k above i of IoU_ki:

        decay_j = min(1, min over i above j of f(IoU_ij) / f(comp_i))

    where f(x) = exp(-sigma x^2) ("gaussian"; sigma multiplies, as in the SOLOv2 authors' code)
    or 1 - x ("linear"; a denominator of 0, a suppressor identical to a higher mask, counts as
    1e-6). Equal scores are ranked by input position.

    Args:
        masks: (N, H, W) bool, in any order.
        labels: (N,) integer class of each mask.
        scores: (N,) float.
        kernel: "gaussian" or "linear".
        sigma: of the Gaussian kernel.

    Returns:
        (N,) decayed scores, in the input order; the highest score of each label is kept.
    """
    if kernel not in ("gaussian", "linear"):
        raise ValueError(f"Matrix NMS kernel = {kernel!r}: use 'gaussian' or 'linear'")
    if len(scores) == 0:
        return scores.clone()
    order = scores.argsort(descending=True, stable=True)
    above = torch.ones(len(order), len(order), dtype=torch.bool, device=scores.device).triu(1)
    same_label = labels[order][:, None] == labels[order][None, :]
    # decay_iou[i, j]: IoU of sorted mask j with the higher-scoring mask i of its label.
    decay_iou = _pairwise_mask_iou(masks[order]) * (above & same_label)
    compensation = decay_iou.amax(dim=0)[:, None]  # (N, 1): comp_i, per row i
    if kernel == "gaussian":
        ratios = torch.exp(-sigma * (decay_iou**2 - compensation**2))
    else:
        ratios = (1 - decay_iou) / (1 - compensation).clamp(min=_LINEAR_MIN_DENOMINATOR)
    # Only masks above j decay it; the entries for i >= j are 1.
    ratios = torch.where(above, ratios, torch.ones_like(ratios))
    decay = ratios.amin(dim=0).clamp(max=1)
    decayed = torch.empty_like(scores)
    decayed[order] = scores[order] * decay
    return decayed


def point_nms(heatmaps: torch.Tensor) -> torch.Tensor:
    """
    SOLOv2's point NMS: keep a cell's score only where it is the maximum of the 2 x 2 window
    of itself and its upper, left and upper-left neighbours.

    Args:
        heatmaps: (N, C, S, S) category probabilities.

    Returns:
        (N, C, S, S): `heatmaps` with the other cells set to 0.
    """
    window_max = F.max_pool2d(heatmaps, kernel_size=2, stride=1, padding=1)[:, :, :-1, :-1]
    return heatmaps * (window_max == heatmaps)
