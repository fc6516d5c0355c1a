"""solov2_street.matrix_nms against a direct O(N^2) reference, and point NMS."""

import math

import pytest
import torch

from solov2_street import matrix_nms, point_nms


def reference_matrix_nms(masks, labels, scores, kernel, sigma):
    """
    Matrix NMS written from its definition: masks ranked by descending score (input position
    on ties); for mask j, over every higher-ranked mask i of its label, the decay
    f(IoU_ij) / f(comp_i), comp_i being i's largest IoU with a higher-ranked mask of its label;
    f(x) = exp(-sigma x^2) or 1 - x; j keeps score x min(1, those decays).
    """
    n = len(scores)
    rank = sorted(range(n), key=lambda k: (-float(scores[k]), k))

    def iou(a, b):
        union = (masks[a] | masks[b]).sum().item()
        return (masks[a] & masks[b]).sum().item() / union if union else 0.0

    def f(x):
        return math.exp(-sigma * x * x) if kernel == "gaussian" else 1 - x

    def compensation(i):
        higher = [k for k in rank[: rank.index(i)] if labels[k] == labels[i]]
        return max((iou(k, i) for k in higher), default=0.0)

    decayed = []
    for j in range(n):
        decay = 1.0
        for i in rank[: rank.index(j)]:
            if labels[i] == labels[j]:
                decay = min(decay, f(iou(i, j)) / max(f(compensation(i)), 1e-6))
        decayed.append(float(scores[j]) * decay)
    return torch.tensor(decayed)


def random_masks(n, seed, size=24):
    """n overlapping rectangles of random sizes (some identical pairs), labels 0-1."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for mask in masks:
        x0, y0 = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        w, h = torch.randint(3, size // 2, (2,), generator=generator).tolist()
        mask[y0 : y0 + h, x0 : x0 + w] = True
    masks[-1] = masks[0]  # a duplicate
    labels = torch.randint(0, 2, (n,), generator=generator)
    scores = torch.rand(n, generator=generator)
    return masks, labels, scores


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matrix_nms_equals_the_direct_reference(kernel, seed):
    masks, labels, scores = random_masks(12, seed)
    expected = reference_matrix_nms(masks, labels.tolist(), scores, kernel, sigma=2.0)
    actual = matrix_nms(masks, labels, scores, kernel=kernel, sigma=2.0)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_matrix_nms_is_invariant_to_the_input_order(kernel):
    masks, labels, scores = random_masks(15, seed=3)
    expected = matrix_nms(masks, labels, scores, kernel=kernel)
    permutation = torch.randperm(15, generator=torch.Generator().manual_seed(0))
    permuted = matrix_nms(masks[permutation], labels[permutation], scores[permutation], kernel)
    torch.testing.assert_close(permuted, expected[permutation])


def test_gaussian_sigma_multiplies_the_squared_iou():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2] = True  # 8 pixels
    masks[1, :3] = True  # 12 pixels: IoU 2/3 with the first
    labels = torch.tensor([0, 0])
    decayed = matrix_nms(masks, labels, torch.tensor([0.9, 0.8]), sigma=2.0)
    assert decayed[0] == pytest.approx(0.9)
    assert decayed[1] == pytest.approx(0.8 * math.exp(-2.0 * (2 / 3) ** 2))
    linear = matrix_nms(masks, labels, torch.tensor([0.9, 0.8]), kernel="linear")
    assert linear[1] == pytest.approx(0.8 * (1 - 2 / 3))


def test_a_lone_mask_and_other_labels_keep_their_scores():
    masks = torch.ones(3, 5, 5, dtype=torch.bool)  # identical masks
    scores = torch.tensor([0.3, 0.7, 0.5])
    assert matrix_nms(masks[:1], torch.tensor([4]), scores[:1]).tolist() == pytest.approx([0.3])
    different = matrix_nms(masks, torch.tensor([0, 1, 2]), scores)
    torch.testing.assert_close(different, scores)


def test_duplicates_are_suppressed_finitely_and_empty_input_is_empty():
    masks = torch.ones(3, 5, 5, dtype=torch.bool)
    labels = torch.zeros(3, dtype=torch.long)
    scores = torch.tensor([0.9, 0.8, 0.7])
    for kernel in ("gaussian", "linear"):
        decayed = matrix_nms(masks, labels, scores, kernel=kernel)
        assert torch.isfinite(decayed).all() and decayed[0] == pytest.approx(0.9)
    assert matrix_nms(masks, labels, scores, kernel="linear")[1:].tolist() == [0.0, 0.0]
    empty = matrix_nms(torch.zeros(0, 5, 5, dtype=torch.bool), labels[:0], scores[:0])
    assert empty.shape == (0,)
    with pytest.raises(ValueError, match="'box'"):
        matrix_nms(masks, labels, scores, kernel="box")


def test_point_nms_keeps_the_maxima_of_2x2_windows():
    heat = torch.tensor([[0.1, 0.5, 0.2], [0.3, 0.4, 0.6], [0.9, 0.2, 0.1]])[None, None]
    # Each cell is compared with itself and its upper, left and upper-left neighbours.
    expected = torch.tensor([[0.1, 0.5, 0.0], [0.3, 0.0, 0.6], [0.9, 0.0, 0.0]])
    torch.testing.assert_close(point_nms(heat)[0, 0], expected)
