"""SOLOv2's dice loss, the AML terms (eq. 1-3) and the adaptive minimum-loss matching."""

import pytest
import torch
from detectron2.utils.events import EventStorage
from fvcore.nn import sigmoid_focal_loss

from solov2_street import GridPairs, aml_mask_loss, dice_loss, minimum_loss_matching, solov2_losses


def pixel_grid(height, width):
    """(H W, 2) (x, y) pixel centres in units of the width and height."""
    ys, xs = torch.meshgrid(
        (torch.arange(height) + 0.5) / height, (torch.arange(width) + 0.5) / width, indexing="ij"
    )
    return torch.stack([xs, ys], dim=-1).flatten(0, 1)


def square(size, x0, y0, side):
    mask = torch.zeros(size, size)
    mask[y0 : y0 + side, x0 : x0 + side] = 1
    return mask


def test_dice_loss_is_solov2s():
    probs = torch.tensor([[0.9, 0.2, 0.0, 0.6], [0.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    expected = [1 - 2 * 1.5 / (0.81 + 0.04 + 0.36 + 2 + 0.002), 1 - 0 / (2 + 0.002)]
    torch.testing.assert_close(dice_loss(probs, targets), torch.tensor(expected))


def test_aml_epsilon_is_0_at_equal_centroids_and_grows_with_their_distance():
    size, pixels = 16, pixel_grid(16, 16)
    target = square(size, 4, 4, 6).flatten()[None]
    centroid = torch.tensor([[7.0 / 16, 7.0 / 16]])  # pixel centres 4.5 ... 9.5
    dice_only = 1 - (2 * 36 * 0.8 + 1) / (36 * 0.8 + 36 + 1)
    torch.testing.assert_close(
        aml_mask_loss(0.8 * target, target, centroid, pixels), torch.tensor([dice_only])
    )
    # A hollow ring around the same centre: a worse dice, still no centroid term.
    ring = square(size, 3, 3, 8) - square(size, 5, 5, 4)
    ring_dice = 1 - (2 * 20 + 1) / (48 + 36 + 1)
    ring_loss = aml_mask_loss(ring.flatten()[None], target, centroid, pixels)
    torch.testing.assert_close(ring_loss, torch.tensor([ring_dice]))
    losses = []
    for shift in range(1, 7):
        moved = square(size, 4 + shift, 4, 6).flatten()[None]
        overlap = 6 * max(6 - shift, 0)
        epsilon = (shift / 16) ** 2 / (overlap + 1)
        dice = 1 - (2 * overlap + 1) / (36 + 36 + 1)
        loss = aml_mask_loss(moved, target, centroid, pixels)
        torch.testing.assert_close(loss, torch.tensor([dice + epsilon]))
        losses.append(loss.item() - dice)
    assert all(a < b for a, b in zip(losses, losses[1:], strict=False))


def test_aml_loss_of_an_all_zero_prediction_is_finite():
    target = square(8, 2, 2, 3).flatten()[None]
    loss = aml_mask_loss(torch.zeros(1, 64), target, torch.tensor([[0.4, 0.4]]), pixel_grid(8, 8))
    assert torch.isfinite(loss).all() and loss.item() == pytest.approx(1 - 1 / 10 + 0.32)


def test_minimum_loss_matching_keeps_the_cheapest_pair_of_each_cell():
    cells = torch.tensor([5, 5, 7, 5, 7, 9])
    costs = torch.tensor([0.3, 0.1, 0.5, 0.1, 0.4, 2.0])
    assert minimum_loss_matching(cells, costs).tolist() == [False, True, False, False, True, True]
    assert minimum_loss_matching(cells[:0], costs[:0]).tolist() == []


def shared_cell_batch():
    """
    One image, cells 0 and 1; objects 0 (class 1) and 1 (class 0) both claim cell 0. The kernel
    of cell 0 paints object 0's mask: logits +10 on it, -10 elsewhere.
    """
    masks = torch.stack([square(4, 0, 0, 2), square(4, 2, 1, 2)])
    features = torch.stack([masks[0], torch.ones(4, 4)])[None]  # (1, E=2, 4, 4)
    kernels = torch.tensor([[[20.0, -10.0], [0.0, 0.0]]], requires_grad=True)  # (1, R=2, E)
    logits = torch.tensor([[[-1.0, 2.0], [0.5, -3.0]]], requires_grad=True)  # (1, R, C=2)
    target = {
        "pairs": GridPairs(torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([0, 0])),
        "classes": torch.tensor([1, 0]),
        "masks": masks,
        "centroids": torch.tensor([[0.25, 0.25], [0.75, 0.5]]),
    }
    return logits, kernels, features, [target]


def losses_of(loss, logits, kernels, features, targets):
    with EventStorage():
        return solov2_losses(
            logits, kernels, features, targets, loss=loss, focal_alpha=0.25, focal_gamma=2.0,
            focal_weight=1.0, mask_weight=3.0,
        )  # fmt: skip


def category_loss(logits, labels):
    """Focal loss over the cells with `labels` (2 = background), / (positive cells + 1)."""
    targets = torch.nn.functional.one_hot(torch.tensor(labels), 3)[:, :2].float()[None]
    positives = sum(label != 2 for label in labels)
    return sigmoid_focal_loss(logits, targets, 0.25, 2.0, reduction="sum") / (positives + 1)


def test_solov2_cell_of_two_objects_learns_both_masks_and_the_last_class():
    logits, kernels, features, targets = shared_cell_batch()
    losses = losses_of("solov2", logits, kernels, features, targets)
    probs = (kernels[0, 0] @ features[0].flatten(1)).sigmoid()[None].expand(2, -1)
    expected_mask = 3 * dice_loss(probs, targets[0]["masks"].flatten(1)).mean()
    torch.testing.assert_close(losses["loss_mask"], expected_mask)
    torch.testing.assert_close(losses["loss_cate"], category_loss(logits, [0, 2]))


def test_aml_cell_of_two_objects_learns_only_the_one_of_smaller_loss():
    logits, kernels, features, targets = shared_cell_batch()
    losses = losses_of("aml", logits, kernels, features, targets)
    probs = (kernels[0, :1] @ features[0].flatten(1)).sigmoid()
    kept = aml_mask_loss(
        probs, targets[0]["masks"][:1].flatten(1), targets[0]["centroids"][:1], pixel_grid(4, 4)
    )
    torch.testing.assert_close(losses["loss_mask"], (3 * kept.mean()).sigmoid())
    torch.testing.assert_close(losses["loss_cate"], category_loss(logits, [1, 2]).sigmoid())
    sum(losses.values()).backward()
    assert kernels.grad[0, 0].abs().sum() > 0 and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", ["solov2", "aml"])
def test_a_batch_without_objects_gives_finite_losses_connected_to_every_input(loss):
    logits, kernels, features, targets = shared_cell_batch()
    features.requires_grad_(True)
    empty = {
        "pairs": GridPairs(*(torch.zeros(0, dtype=torch.long),) * 3),
        "classes": torch.zeros(0, dtype=torch.long),
        "masks": torch.zeros(0, 4, 4),
        "centroids": torch.zeros(0, 2),
    }
    losses = losses_of(loss, logits, kernels, features, [empty])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert kernels.grad is not None and features.grad is not None and logits.grad is not None
