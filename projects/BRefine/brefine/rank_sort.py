"""
Rank & Sort loss (Oksuz et al., "Rank & Sort Loss for Object Detection and Instance
Segmentation", ICCV 2021) with its identity-update backward, and the loss balancing of BRefine's
eq. 5.

Notation (BRefine eq. 3-4): s are logits, y the IoU targets of the positives P, x_ij = s_j - s_i,
H(x) = clamp(x / (2 delta) + 1/2, 0, 1) the smoothed step (the hard step x >= 0 if delta = 0).
For a positive i:

* rank+(i) = sum_{j in P} H(x_ij) (j = i included, H(0) = 1/2), N_FP(i) = sum_{j in N} H(x_ij);
* ranking error l_R(i) = N_FP(i) / (rank+(i) + N_FP(i));
* sorting error e_S(i) = sum_{j in P} H(x_ij)(1 - y_j) / rank+(i) minus the same sum over the
  positives with y_j >= y_i only (the error a ranking sorted by IoU would leave).

The loss is the mean over the positives of l_R + e_S. Its gradient is not the derivative of that
value but the RS paper's update, computed in the forward pass: a positive gets -l_R(i); each
negative j gets its share of every l_R(i), l_R(i) H(x_ij) / N_FP(i); a positive i with
lower-IoU positives ranked above it gets -e_S(i), and those positives k share +e_S(i) in
proportion to H(x_ik). All divided by |P|. The updates over all logits sum to zero and the
negatives' sum is the mean ranking error.

Sums over the negatives (there may be 10^5 - 10^6 anchors) are exact prefix sums over sorted
logits, O((|P| + |N|) log(|P| + |N|)); the positive-by-positive terms are dense, in chunks.
"""

import torch
from detectron2.structures import Boxes
from detectron2.structures.boxes import matched_pairwise_iou
from fvcore.nn import giou_loss

__all__ = ["balance_to", "rank_sort_detection_losses", "rank_sort_loss"]

# Bound on the elements of one chunk of the |P| x |P| positive-pair matrices.
_CHUNK_ELEMENTS = 1 << 22
# Below this, a count or an error is treated as zero (the RS paper's eps).
_EPS = 1e-10


def _smoothed_step(x: torch.Tensor, delta: float) -> torch.Tensor:
    """H(x) of the module docstring, elementwise."""
    if delta == 0:
        return (x >= 0).to(x.dtype)
    return (x / (2 * delta) + 0.5).clamp(0, 1)


def _weighted_step_sums(points, weights, queries, delta: float) -> torch.Tensor:
    """
    sum_j weights_j * H(points_j - q) for every query q, with sorted points and prefix sums.

    Args:
        points, weights: tensors of shape (n,).
        queries: a tensor of shape (m,).

    Returns:
        A float64 tensor of shape (m,).
    """
    order = points.argsort()
    x, w = points[order].double(), weights[order].double()
    zero = x.new_zeros(1)
    cum_w = torch.cat([zero, w.cumsum(0)])
    cum_wx = torch.cat([zero, (w * x).cumsum(0)])
    q = queries.double()
    if delta == 0:
        return cum_w[-1] - cum_w[torch.searchsorted(x, q)]  # points >= q
    # Points in [q - delta, q + delta) are on the ramp of H, those above it count fully.
    low, high = torch.searchsorted(x, q - delta), torch.searchsorted(x, q + delta)
    ramp_w, ramp_wx = cum_w[high] - cum_w[low], cum_wx[high] - cum_wx[low]
    ramp = (ramp_wx - q * ramp_w) / (2 * delta) + 0.5 * ramp_w
    return cum_w[-1] - cum_w[high] + ramp


def _positive_pair_terms(s, y, delta: float):
    """
    The positive-by-positive sums, for each positive i (rows in chunks of the |P| x |P| matrix).

    Args:
        s, y: the positives' logits and IoU targets, float64 tensors of shape (P,).

    Returns:
        (rank+ (P,), e_S (P,), the sorting updates (P,)): the last is -e_S(i) for each i with
        misranked lower-IoU positives, plus each positive's share of the other positives' e_S.
    """
    num = len(s)
    rank_pos, sort_error, sort_grad = s.new_zeros(num), s.new_zeros(num), s.new_zeros(num)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // num)
    for start in range(0, num, rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        h = _smoothed_step(s[None, :] - s[rows, None], delta)  # (c, P): H(x_ij)
        not_lower = y[None, :] >= y[rows, None]  # (c, P): y_j >= y_i
        rank_pos[rows] = h.sum(1)
        current = (h * (1 - y)).sum(1) / rank_pos[rows]
        h_target = h * not_lower
        target = (h_target * (1 - y)).sum(1) / h_target.sum(1)
        sort_error[rows] = current - target
        # Lower-IoU positives ranked above i cause its error, and share it.
        missorted = h * ~not_lower
        denominator = missorted.sum(1)
        share = torch.where(denominator > _EPS, sort_error[rows] / denominator.clamp(min=_EPS), 0)
        sort_grad[rows] -= torch.where(denominator > _EPS, sort_error[rows], 0)
        sort_grad += (missorted * share[:, None]).sum(0)
    return rank_pos, sort_error, sort_grad


@torch.no_grad()
def _rank_sort_value_and_grad(logits, targets, delta: float):
    """
    Args:
        logits, targets: float64 tensors of shape (n,).

    Returns:
        (loss, gradient): a float64 scalar and a float64 tensor of shape (n,).
    """
    positive, negative = targets > 0, targets == 0
    s, y, s_neg = logits[positive], targets[positive], logits[negative]
    num = len(s)
    grad = torch.zeros_like(logits)
    if num == 0:
        return grad.sum(), grad

    rank_pos, sort_error, sort_grad = _positive_pair_terms(s, y, delta)
    false_positives = _weighted_step_sums(s_neg, torch.ones_like(s_neg), s, delta)
    rank_error = false_positives / (rank_pos + false_positives)
    has_fp = false_positives > _EPS
    # Each negative j takes sum_i l_R(i) H(x_ij) / N_FP(i); H(s_j - s_i) = H(-s_i - (-s_j)).
    negative_share = torch.where(has_fp, rank_error / false_positives.clamp(min=_EPS), 0)
    grad[negative] = _weighted_step_sums(-s, negative_share, -s_neg, delta) / num
    grad[positive] = (sort_grad - torch.where(has_fp, rank_error, 0)) / num
    return (rank_error.sum() + sort_error.sum()) / num, grad


class _RankSort(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, delta):
        # In float64 whatever the input's precision (autocast included).
        flat_logits, flat_targets = logits.detach().double().flatten(), targets.double().flatten()
        loss, grad = _rank_sort_value_and_grad(flat_logits, flat_targets, delta)
        ctx.save_for_backward(grad.view(logits.shape).to(logits.dtype))
        return loss.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None


def rank_sort_loss(logits: torch.Tensor, targets: torch.Tensor, delta: float = 0.5):
    """
    The Rank & Sort loss of the module docstring, with the RS paper's gradients.

    Args:
        logits: a float tensor of any shape: pre-sigmoid scores, e.g. (anchors,) or (R, K),
            every image of the batch together.
        targets: a tensor of the same shape: the IoU, in (0, 1], for positives; 0 for negatives;
            negative values for entries to ignore (they get no gradient).
        delta: delta of the smoothed step H (0: the hard step).

    Returns:
        A scalar: the mean over the positives of ranking plus sorting error; zero, with a zero
        gradient, when there is no positive.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    if delta < 0:
        raise ValueError(f"delta = {delta}: expected a value >= 0")
    return _RankSort.apply(logits, targets, float(delta))


def balance_to(loss: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """
    lambda * `loss` with lambda = reference / loss, a constant (BRefine eq. 5; no tuned weights):
    the value of `reference` with the gradient of `loss` scaled by lambda.

    Args:
        loss, reference: non-negative scalars.
    """
    return loss * (reference.detach() / loss.detach().clamp(min=_EPS))


def rank_sort_detection_losses(logits, labels, pred_boxes, gt_boxes, box_weights, delta=0.5):
    """
    One detection term of eq. 5 (k = 1: RPN, k = 2: box head): L_RS^k on the classification
    logits with IoU targets, and lambda^k L^k, the GIoU loss of the positives' boxes averaged
    with weights w_i (eq. 6), balanced to the value of L_RS^k.

    Args:
        logits: classification logits of any shape (e.g. (N, anchors) or (R, K)).
        labels: a tensor of the same shape: 1 for positives, 0 for negatives, -1 to ignore.
            The positives, in row-major order, are the rows of the three tensors below.
        pred_boxes: (P, 4) the positives' decoded predicted boxes (XYXY), differentiable.
        gt_boxes: (P, 4) their ground-truth boxes.
        box_weights: (P,) w_i, the positives' classification scores, not differentiated.
        delta: delta of the smoothed step H.

    Returns:
        (L_RS, lambda L): two scalars. A positive whose predicted box misses its ground truth
        (IoU 0) counts as a negative, as in the RS authors' code. When every positive misses,
        L_RS is 0 and the GIoU term is balanced to 1, the value the RS code gives L_RS without
        positives: balanced to 0 it would lose its gradient, and boxes that once diverged (from
        scratch, within a few iterations) would never come back.
    """
    targets = labels.to(logits.dtype)
    ious = matched_pairwise_iou(Boxes(pred_boxes.detach()), Boxes(gt_boxes))
    targets = targets.masked_scatter(labels == 1, ious.to(logits.dtype))
    loss_rank_sort = rank_sort_loss(logits, targets, delta)
    giou = giou_loss(pred_boxes, gt_boxes, reduction="none")
    total = box_weights.sum()
    loss_box = (box_weights * giou).sum() / torch.where(total > _EPS, total, 1.0)
    reference = loss_rank_sort if (targets > 0).any() else torch.ones_like(loss_rank_sort)
    return loss_rank_sort, balance_to(loss_box, reference)
