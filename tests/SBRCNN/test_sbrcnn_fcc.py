"""FCC: L2C's parameter counts as Table 1, its shapes, the non-local block, the FCC box head."""

import math

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import (
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    build_box_head,
)
from sbrcnn_testing import sbrcnn_cfg

from sbrcnn import L2C, NonLocalBlock

ROI = ShapeSpec(channels=256, height=7, width=7)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_table1_parameter_counts():
    square = L2C(256, (128, 64), kernels="7x7")
    rect = L2C(256, (128, 64), kernels="7x3_3x7", rect_layout="paper")
    fc_head = FastRCNNConvFCHead(ROI, conv_dims=[], fc_dims=[1024, 1024])
    assert {name: count(m) for name, m in square.named_children()} == {
        "conv1": 1_605_760,
        "conv2": 401_472,
    }
    assert {name: count(m) for name, m in rect.named_children()} == {
        "conv1a": 1_376_512,
        "conv1b": 688_256,
        "conv2a": 344_192,
        "conv2b": 172_096,
    }
    assert (count(fc_head.fc1), count(fc_head.fc2)) == (12_846_080, 1_049_600)


def _truncated_millions(params: int) -> float:
    # The paper's section 3.2 truncates its parameter counts to 0.1 M.
    return math.floor(params / 1e5) / 10


@pytest.mark.parametrize(
    "opts, paper_millions",
    [
        (["MODEL.SBRCNN.FCC.L2C", "7x7"], 2.2),  # Fig. 4b
        (["MODEL.SBRCNN.FCC.L2C", "7x3_3x7"], 2.8),  # Fig. 4c
        (["MODEL.SBRCNN.FCC.L2C", "7x7", "MODEL.SBRCNN.FCC.NL_BEFORE", "True"], 8.6),  # 4d
        (["MODEL.SBRCNN.FCC.L2C", "7x3_3x7", "MODEL.SBRCNN.FCC.NL_BEFORE", "True"], 9.2),  # 4e
    ],
)
def test_detection_head_sizes_of_section_3_2(opts, paper_millions):
    # COCO's 80 classes; the head's own layers and the classification / regression layers
    # (class-agnostic regression, as R3-CNN's).
    cfg = sbrcnn_cfg(
        "MODEL.ROI_BOX_HEAD.NAME", "FCCBoxHead", "MODEL.ROI_HEADS.NUM_CLASSES", 80,
        "MODEL.SBRCNN.FCC.CONV_DIMS", "[128, 64]", "MODEL.SBRCNN.FCC.RECT_LAYOUT", "paper",
        "MODEL.SBRCNN.FCC.NL_BEFORE", "False",
        *opts,
    )  # fmt: skip
    head = build_box_head(cfg, ROI)
    predictor = FastRCNNOutputLayers(cfg, head.output_shape)
    assert _truncated_millions(count(head) + count(predictor)) == paper_millions
    # The head FCC replaces: two FCs of 1024 and the same classification / regression layers.
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    fc_head = build_box_head(cfg, ROI)
    fc_params = count(fc_head) + count(FastRCNNOutputLayers(cfg, fc_head.output_shape))
    assert round(fc_params / 1e6) == 14  # "from 14M"


def test_non_local_7x7_size_and_identity_at_initialisation():
    block = NonLocalBlock(256, kernel_size=7)
    # g, theta, phi: 256 -> 128; W_z: 128 -> 256; all 7x7 with bias (Table 6: row 5 - row 3).
    assert count(block) == 3 * (256 * 128 * 49 + 128) + 128 * 256 * 49 + 256 == 6_423_168
    x = torch.randn(3, 256, 7, 7)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)
    assert count(NonLocalBlock(256, kernel_size=1)) == 3 * (256 * 128 + 128) + 128 * 256 + 256


def test_non_local_attends_over_all_positions():
    torch.manual_seed(0)
    block = NonLocalBlock(4, kernel_size=1)
    torch.nn.init.normal_(block.conv_out.weight)
    x = torch.randn(1, 4, 5, 5)
    changed = x.clone()
    changed[0, :, 4, 4] += 1.0
    # Position (0, 0) sees a change at the far corner: 1x1 kernels, global attention.
    assert not torch.allclose(block(x)[0, :, 0, 0], block(changed)[0, :, 0, 0])


@pytest.mark.parametrize("layout", ["paper", "authors"])
def test_rectangular_l2c_keeps_the_roi_size(layout):
    l2c = L2C(16, (8, 4), kernels="7x3_3x7", rect_layout=layout, nl_before=True, nl_after=True)
    assert l2c(torch.randn(2, 16, 7, 7)).shape == (2, 4, 7, 7)
    # The authors' 7x3 conv with padding 1 makes 7x7 a 3x7 map; Table 1's keeps 7x7.
    height = l2c.conv1a(torch.randn(1, 16, 7, 7)).shape[2]
    assert height == (3 if layout == "authors" else 7)
    channels = [l2c.conv1a.out_channels, l2c.conv1b.out_channels]
    assert channels == ([8, 8] if layout == "authors" else [16, 8])


def test_fcc_box_head_output_and_empty_input():
    cfg = sbrcnn_cfg("MODEL.SBRCNN.FCC.NL_AFTER", "True")
    head = build_box_head(cfg, ShapeSpec(channels=16, height=7, width=7))
    assert head.output_shape == ShapeSpec(channels=8, height=7, width=7)
    out = head(torch.randn(0, 16, 7, 7, requires_grad=True))
    assert out.shape == (0, 8, 7, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_wrong_l2c_choice_names_the_key():
    with pytest.raises(ValueError, match="MODEL.SBRCNN.FCC.L2C='5x5'"):
        build_box_head(sbrcnn_cfg("MODEL.SBRCNN.FCC.L2C", "5x5"), ROI)
    with pytest.raises(ValueError, match="MODEL.SBRCNN.FCC.RECT_LAYOUT='mine'"):
        build_box_head(sbrcnn_cfg("MODEL.SBRCNN.FCC.RECT_LAYOUT", "mine"), ROI)
