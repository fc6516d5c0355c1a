"""The Rank & Sort loss against a direct O(N^2) reference, its gradients, and eq. 5's balancing."""

import pytest
import torch

from brefine import balance_to, rank_sort_detection_losses, rank_sort_loss
from brefine import rank_sort as rank_sort_module

EPS = 1e-10


def reference_rank_sort(logits, targets, delta):
    """
    Loss and gradient by the RS paper's definitions, one pair at a time (BRefine eq. 3-4; the
    identity update of Oksuz et al. 2021), over flat lists.
    """
    s, y = logits.flatten().tolist(), targets.flatten().tolist()
    positives = [i for i, t in enumerate(y) if t > 0]
    negatives = [j for j, t in enumerate(y) if t == 0]

    def step(x):
        return float(x >= 0) if delta == 0 else min(max(x / (2 * delta) + 0.5, 0.0), 1.0)

    loss, grad = 0.0, [0.0] * len(s)
    for i in positives:
        h = {j: step(s[j] - s[i]) for j in positives + negatives}
        rank_pos = sum(h[j] for j in positives)
        false_positives = sum(h[j] for j in negatives)
        ranking = false_positives / (rank_pos + false_positives)
        current = sum(h[j] * (1 - y[j]) for j in positives) / rank_pos
        not_lower = [j for j in positives if y[j] >= y[i]]
        target = sum(h[j] * (1 - y[j]) for j in not_lower) / sum(h[j] for j in not_lower)
        sorting = current - target
        loss += ranking + sorting
        if false_positives > EPS:
            grad[i] -= ranking
            for j in negatives:
                grad[j] += ranking * h[j] / false_positives
        lower = [j for j in positives if y[j] < y[i]]
        missorted = sum(h[j] for j in lower)
        if missorted > EPS:
            grad[i] -= sorting
            for j in lower:
                grad[j] += sorting * h[j] / missorted
    num = len(positives)
    return loss / num, torch.tensor(grad, dtype=torch.float64).view(logits.shape) / num


def random_problem(seed, shape=(40, 6), positive_rate=0.15, ignore_rate=0.1):
    """Logits and IoU targets (0: negative, -1: ignored), some IoUs tied."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator, dtype=torch.float64) * 1.5
    draw = torch.rand(shape, generator=generator)
    ious = torch.rand(shape, generator=generator).mul(10).ceil().div(10).clamp(0.1, 1.0)
    targets = torch.where(draw < positive_rate, ious, torch.zeros_like(ious))
    targets = torch.where(draw > 1 - ignore_rate, -torch.ones_like(ious), targets)
    return logits, targets.double()


def loss_and_grad(logits, targets, delta=0.5):
    logits = logits.clone().requires_grad_(True)
    loss = rank_sort_loss(logits, targets, delta)
    loss.backward()
    return loss.detach(), logits.grad


@pytest.mark.parametrize("delta", [0.5, 0.25, 1.0, 0.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_direct_reference_on_random_inputs(seed, delta):
    logits, targets = random_problem(seed)
    expected_loss, expected_grad = reference_rank_sort(logits, targets, delta)
    loss, grad = loss_and_grad(logits, targets, delta)
    assert loss.item() == pytest.approx(expected_loss, abs=1e-9)
    torch.testing.assert_close(grad, expected_grad, atol=1e-9, rtol=0)


def test_equals_the_reference_with_tied_logits_and_many_positives():
    logits = torch.tensor([0.0, 0.0, 0.0, 0.3, 0.3, -0.2, 1.0, 0.0], dtype=torch.float64)
    targets = torch.tensor([0.9, 0.5, 0.0, 0.5, 0.0, 0.7, 0.0, 1.0], dtype=torch.float64)
    expected_loss, expected_grad = reference_rank_sort(logits, targets, 0.5)
    loss, grad = loss_and_grad(logits, targets)
    assert loss.item() == pytest.approx(expected_loss, abs=1e-12)
    torch.testing.assert_close(grad, expected_grad, atol=1e-12, rtol=0)


@pytest.mark.parametrize("seed", [3, 4])
def test_gradients_sum_to_zero_and_negatives_carry_the_ranking_error(seed):
    logits, targets = random_problem(seed, shape=(500,), positive_rate=0.05)
    _, grad = loss_and_grad(logits, targets)
    positive, negative = targets > 0, targets == 0
    assert grad.sum().item() == pytest.approx(0.0, abs=1e-12)
    assert grad[targets < 0].abs().max() == 0  # ignored entries
    # The negatives' updates add up to the mean ranking error, the positives' to minus it.
    ranking_error = torch.stack(
        [
            (torch.clamp((logits[negative] - s) / 1.0 + 0.5, 0, 1).sum())
            / (
                torch.clamp((logits[positive] - s) / 1.0 + 0.5, 0, 1).sum()
                + torch.clamp((logits[negative] - s) / 1.0 + 0.5, 0, 1).sum()
            )
            for s in logits[positive]
        ]
    ).mean()
    assert grad[negative].sum().item() == pytest.approx(ranking_error.item(), abs=1e-12)
    assert grad[positive].sum().item() == pytest.approx(-ranking_error.item(), abs=1e-12)
    assert (grad[negative] >= 0).all()


def test_zero_for_a_perfect_ranking_with_perfect_sorting():
    # Positives ordered by IoU, 2 delta apart; negatives more than delta below all of them.
    ious = torch.tensor([1.0, 0.8, 0.6, 0.55, 0.3], dtype=torch.float64)
    logits = torch.cat([torch.arange(5, 0, -1, dtype=torch.float64), torch.tensor([-1.0, -3.0])])
    targets = torch.cat([ious, torch.zeros(2, dtype=torch.float64)])
    loss, grad = loss_and_grad(logits, targets)
    assert loss.item() == 0.0
    assert grad.abs().max() == 0.0


def test_positive_for_a_negative_above_a_positive_or_a_missorted_pair():
    targets = torch.tensor([0.9, 0.6, 0.0], dtype=torch.float64)
    # A negative above the positives: a ranking error.
    ranking, _ = loss_and_grad(torch.tensor([2.0, 0.0, 3.0], dtype=torch.float64), targets)
    # Ranked right, but the lower-IoU positive above the higher: a sorting error only.
    sorting, grad = loss_and_grad(torch.tensor([0.0, 2.0, -3.0], dtype=torch.float64), targets)
    assert ranking.item() > 0 and sorting.item() > 0
    assert grad[0] < 0 < grad[1] and grad[2] == 0  # the higher-IoU positive is pushed up


def test_invariant_to_the_order_of_the_inputs():
    logits, targets = random_problem(5, shape=(300,))
    loss, grad = loss_and_grad(logits, targets)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    permuted_loss, permuted_grad = loss_and_grad(logits[order], targets[order])
    assert permuted_loss.item() == pytest.approx(loss.item(), abs=1e-12)
    torch.testing.assert_close(permuted_grad, grad[order], atol=1e-12, rtol=0)


def test_no_positive_gives_zero_without_nan():
    logits = torch.randn(4, 5, requires_grad=True)
    for targets in (torch.zeros(4, 5), -torch.ones(4, 5), torch.zeros(0, 5)):
        inputs = logits[: len(targets)]
        loss = rank_sort_loss(inputs, targets)
        loss.backward()
        assert loss.item() == 0.0
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().max() == 0


def test_float32_logits_and_upstream_gradient_scale():
    logits, targets = random_problem(6)
    loss, grad = loss_and_grad(logits.float(), targets.float())
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    leaf = logits.clone().requires_grad_(True)
    (3 * rank_sort_loss(leaf, targets)).backward()
    torch.testing.assert_close(leaf.grad, 3 * loss_and_grad(logits, targets)[1])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"logits \(3,\) and targets \(4,\)"):
        rank_sort_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="delta = -0.1"):
        rank_sort_loss(torch.zeros(3), torch.zeros(3), delta=-0.1)


def test_balancing_ratio_is_detached():
    """lambda L: the value of the reference, the gradient of L times lambda (a constant)."""
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    reference = (x**2).sum()  # 5
    loss = 2 * x.sum()  # 6
    balanced = balance_to(loss, reference)
    assert balanced.item() == pytest.approx(5.0)
    balanced.backward()
    torch.testing.assert_close(x.grad, torch.full((2,), 2 * 5 / 6))


def test_detection_losses_use_iou_targets_and_weighted_giou():
    logits = torch.tensor([[2.0], [0.0], [-1.0]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1], [1], [0]])
    gt = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]], dtype=torch.float64)
    # The first box overlaps its ground truth by half (IoU 0.5), the second exactly (IoU 1).
    pred = torch.tensor([[0.0, 0, 10, 5], [0, 0, 10, 10]], dtype=torch.float64)
    pred.requires_grad_(True)
    weights = torch.tensor([0.25, 0.75], dtype=torch.float64)
    loss_rs, loss_box = rank_sort_detection_losses(logits, labels, pred, gt, weights)
    expected, _ = reference_rank_sort(
        logits.detach(), torch.tensor([[0.5], [1.0], [0.0]], dtype=torch.float64), 0.5
    )
    assert loss_rs.item() == pytest.approx(expected)
    assert loss_box.item() == pytest.approx(loss_rs.item())  # balanced to the RS value
    loss_box.backward()
    # GIoU loss: 0.5 for the first box, 0 (a minimum) for the second, which gets no gradient.
    assert pred.grad[1].abs().max() < 1e-9 < pred.grad[0].abs().max()


def test_detection_losses_without_positives_are_zero_and_connected():
    logits = torch.randn(6, requires_grad=True)
    deltas = torch.zeros(0, 4, requires_grad=True)
    loss_rs, loss_box = rank_sort_detection_losses(
        logits, torch.zeros(6, dtype=torch.long), deltas + 1, torch.zeros(0, 4), torch.zeros(0)
    )
    (loss_rs + loss_box).backward()
    assert loss_rs.item() == 0 and loss_box.item() == 0
    assert logits.grad is not None and deltas.grad is not None


def test_positives_whose_boxes_all_miss_keep_training_their_boxes():
    # Boxes diverged: no positive overlaps its ground truth, so L_RS has no positive (0); the
    # GIoU term must still pull the boxes back (balanced to 1, not to 0).
    logits = torch.tensor([1.0, 0.5, -1.0], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([1, 1, 0])
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float64)
    pred = torch.tensor([[50.0, 50, 60, 60], [-40, -40, -30, -30]], dtype=torch.float64)
    pred.requires_grad_(True)
    loss_rs, loss_box = rank_sort_detection_losses(
        logits, labels, pred, gt, torch.tensor([0.5, 0.5], dtype=torch.float64)
    )
    assert loss_rs.item() == 0
    assert loss_box.item() == pytest.approx(1.0)
    loss_box.backward()
    assert (pred.grad.abs().sum(dim=1) > 0).all()


def test_chunks_of_positive_pairs_give_the_same_result(monkeypatch):
    logits, targets = random_problem(7, shape=(400,), positive_rate=0.2)
    loss, grad = loss_and_grad(logits, targets)
    monkeypatch.setattr(rank_sort_module, "_CHUNK_ELEMENTS", 50)  # a few rows at a time
    chunked_loss, chunked_grad = loss_and_grad(logits, targets)
    assert chunked_loss.item() == pytest.approx(loss.item(), abs=1e-12)
    torch.testing.assert_close(chunked_grad, grad, atol=1e-12, rtol=0)
