"""The LosNet ablation configs (Tables 2-6) differ from their base as the paper describes."""

import pytest
import torch
from detectron2.modeling import build_model

from segtools.config import get_project_cfg

from helpers import REPO_ROOT

ABLATIONS = REPO_ROOT / "configs/LosNet/ablations"


def num_params(config_name):
    cfg = get_project_cfg(str(ABLATIONS / config_name), ["MODEL.DEVICE", "cpu"])
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    return sum(p.numel() for p in build_model(cfg).parameters())


def conv3x3(channels, bias=True):
    return channels * channels * 9 + (channels if bias else 0)


@pytest.mark.parametrize("channels", [64, 96, 128, 256])
def test_table2_rows_differ_by_the_three_fpn_output_convs(channels):
    difference = num_params(f"table2_fpn{channels}_convs.yaml") - num_params(
        f"table2_fpn{channels}_noconvs.yaml"
    )
    assert difference == 3 * conv3x3(channels)


def test_table3_p6_p7_rows():
    # P6 and P7 convs, plus their per-level norms in the three towers (GroupNorm: shared, none).
    difference = num_params("table3_p6p7_on.yaml") - num_params("table3_p6p7_off.yaml")
    assert difference == 2 * conv3x3(256)


def test_table4_rows_add_one_conv_per_tower():
    counts = [num_params(f"table4_convs{n}.yaml") for n in (1, 2, 3, 4)]
    # cls, box and controller towers; 3x3 conv without bias (a GroupNorm follows) + GN affine.
    per_conv = 3 * (conv3x3(256, bias=False) + 2 * 256)
    assert [b - a for a, b in zip(counts, counts[1:], strict=False)] == [per_conv] * 3


def test_table5_bn_has_a_norm_per_level():
    # 3 towers x 4 convs: 5 per-level BNs instead of one shared GN, each with 2 x 256 affine.
    difference = num_params("table5_norm_bn.yaml") - num_params("table5_norm_gn.yaml")
    assert difference == 3 * 4 * (5 - 1) * 2 * 256
