"""GRoIE: a drop-in for ROIPooler that every FPN level feeds, with each pre/post option."""

import pytest
import torch
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Boxes
from sbrcnn_testing import build_tiny_roi_heads, features

from sbrcnn import GRoIEPooler, GRoIEROIHeads, NonLocalBlock, build_groie_module

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
BOXES = [Boxes(torch.tensor([[4.0, 4.0, 40.0, 30.0], [0.0, 0.0, 63.0, 63.0]])), Boxes(
    torch.tensor([[10.0, 20.0, 12.0, 22.0]])
)]  # fmt: skip


def pooler(pre="conv7x7", post="nonlocal7x7", seed=0):
    torch.manual_seed(seed)
    return GRoIEPooler(7, SCALES, 2, "ROIAlignV2", 16, pre=pre, post=post)


def levels(seed=0):
    return list(features(images=2, seed=seed).values())


def test_output_shape_equals_roipooler():
    x = levels()
    expected = ROIPooler(7, SCALES, 2, "ROIAlignV2")(x, BOXES).shape
    assert pooler()(x, BOXES).shape == expected == (3, 16, 7, 7)


@pytest.mark.parametrize("level", range(4))
def test_every_level_contributes(level):
    groie, x = pooler(), levels()
    # Detectron2's ROIPooler would read these boxes from one level each.
    changed = [t.clone() for t in x]
    changed[level] += 1.0
    assert not torch.allclose(groie(x, BOXES), groie(changed, BOXES))


def test_without_modules_it_is_the_sum_of_the_levels_roialign():
    x = levels()
    single = [ROIPooler(7, (scale,), 2, "ROIAlignV2") for scale in SCALES]
    expected = sum(p([level], BOXES) for p, level in zip(single, x, strict=True))
    torch.testing.assert_close(pooler("none", "none")(x, BOXES), expected)


def test_non_local_post_is_the_identity_at_initialisation():
    x = levels()
    with_post, without = pooler("conv7x7", "nonlocal7x7"), pooler("conv7x7", "none")
    assert isinstance(with_post.post, NonLocalBlock)
    # Same seed: the same pre-processing conv weights.
    torch.testing.assert_close(with_post(x, BOXES), without(x, BOXES), rtol=0, atol=0)


@pytest.mark.parametrize(
    "name", ["conv3x3", "conv5x5", "conv7x7", "conv7x3_3x7", "nonlocal1x1", "nonlocal7x7", "none"]
)
def test_every_module_keeps_the_shape_and_handles_no_roi(name):
    module = build_groie_module(name, 16)
    assert module(torch.randn(2, 16, 14, 14)).shape == (2, 16, 14, 14)
    assert module(torch.randn(0, 16, 7, 7)).shape == (0, 16, 7, 7)


def test_no_box_gives_an_empty_batch_still_in_the_graph():
    groie = pooler()
    x = [t.requires_grad_() for t in levels()]
    empty = [Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))]
    out = groie(x, empty)
    assert out.shape == (0, 16, 7, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in groie.parameters())


def test_unknown_module_names_the_key():
    with pytest.raises(ValueError, match="MODEL.SBRCNN.GROIE.POST='attention'"):
        GRoIEPooler(7, SCALES, 2, "ROIAlignV2", 16, post="attention")


def test_groie_roi_heads_swap_the_poolers_of_standard_roi_heads():
    heads = build_tiny_roi_heads(
        "MODEL.ROI_HEADS.NAME", "GRoIEROIHeads", "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead",
        "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "False",
        "MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead",
        "MODEL.SBRCNN.GROIE.MASK_ON", "False",
    )  # fmt: skip
    assert type(heads) is GRoIEROIHeads and isinstance(heads, StandardROIHeads)
    assert isinstance(heads.box_pooler, GRoIEPooler)
    assert type(heads.mask_pooler) is ROIPooler
