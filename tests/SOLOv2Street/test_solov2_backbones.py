"""CSPAM (CSP stages, Mish, position attention), TWFPN and the CSMF mask branch."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone import build_resnet_backbone

from solov2_street import SOLOv2MaskBranch, add_solov2_street_config
from solov2_street.backbone import PositionAttention, build_cspam_backbone


def backbone_cfg(*opts):
    cfg = get_cfg()
    add_solov2_street_config(cfg)
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.merge_from_list(list(opts))
    return cfg


def reference_attention_output(pam, x):
    """T2 of Fig. 3 computed position by position: softmax(P^T A) applied to M, then a 1x1 conv."""
    t1 = pam.reduce(x)[0].flatten(1)  # (C1, N): P = A = M
    attended = torch.stack(
        [(torch.softmax(t1[:, i] @ t1, dim=0)[None] * t1).sum(dim=1) for i in range(t1.shape[1])],
        dim=1,
    )
    return pam.expand(attended.view(1, -1, *x.shape[-2:])), pam.reduce(x)


def test_position_attention_at_theta_0_is_the_identity_plus_the_concat():
    torch.manual_seed(0)
    pam = PositionAttention(32, reduction=8)
    x = torch.randn(1, 32, 5, 6)
    t2, t1 = reference_attention_output(pam, x)
    assert pam.theta.item() == 0 and t2.shape == (1, 28, 5, 6)
    expected = x + torch.cat([torch.zeros_like(t1), t2], dim=1)
    torch.testing.assert_close(pam(x), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        pam.theta.fill_(0.5)
    expected = x + torch.cat([0.5 * t1, t2], dim=1)
    torch.testing.assert_close(pam(x), expected, rtol=1e-5, atol=1e-5)
    pam.residual = False
    torch.testing.assert_close(pam(x), expected - x, rtol=1e-5, atol=1e-5)


def test_every_position_attention_parameter_gets_a_gradient():
    torch.manual_seed(0)
    pam = PositionAttention(16, reduction=8)
    (pam(torch.randn(2, 16, 4, 4)) ** 2).sum().backward()
    for name, parameter in pam.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_cspam_50_has_resnet_50s_outputs_with_fewer_parameters():
    cfg = backbone_cfg()
    resnet, cspam = (
        build_resnet_backbone(cfg, ShapeSpec(channels=3)),
        build_cspam_backbone(cfg, ShapeSpec(channels=3)),
    )
    assert cspam.output_shape() == resnet.output_shape()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        shapes = {name: y.shape for name, y in cspam.eval()(x).items()}
        assert shapes == {name: y.shape for name, y in resnet.eval()(x).items()}
    # Section 2.1: fewer parameters than ResNet-50 (23,454,912 without its classifier); the two
    # attention modules (after res3 and res4) add 308,738.
    assert sum(p.numel() for p in resnet.parameters()) == 23_454_912
    assert sum(p.numel() for p in cspam.parameters()) == 14_040_002
    assert sum(p.numel() for p in cspam.pams.parameters()) == 308_738


def test_cspam_freezes_like_detectron2s_resnet_and_refuses_unknown_stages():
    cspam = build_cspam_backbone(backbone_cfg("MODEL.BACKBONE.FREEZE_AT", 3), ShapeSpec(channels=3))
    frozen = {n.split(".")[0] for n, p in cspam.named_parameters() if not p.requires_grad}
    assert frozen == {"stem", "res2", "res3", "pams"}
    assert isinstance(cspam.res3.split.norm, FrozenBatchNorm2d)
    assert all(p.requires_grad for p in cspam.res4.parameters())
    assert all(p.requires_grad for p in cspam.pams["res4"].parameters())
    with pytest.raises(ValueError, match=r"MODEL.CSPAM.PAM_STAGES = \['res6'\]"):
        build_cspam_backbone(
            backbone_cfg("MODEL.CSPAM.PAM_STAGES", ["res6"]), ShapeSpec(channels=3)
        )


def tiny_street_cfg():
    return backbone_cfg(
        "MODEL.BACKBONE.NAME", "build_cspam_twfpn_backbone",
        "MODEL.CSPAM.DEPTHS", [1, 1, 1, 1],
        "MODEL.CSPAM.RES2_OUT_CHANNELS", 64,
        "MODEL.CSPAM.STEM_OUT_CHANNELS", 16,
        "MODEL.FPN.IN_FEATURES", ["res2", "res3", "res4", "res5"],
        "MODEL.FPN.OUT_CHANNELS", 32,
        "MODEL.SOLOV2.MASK_CHANNELS", 32,
        "MODEL.SOLOV2.NUM_MASKS", 32,
        "MODEL.SOLOV2.MASK_FUSION", "csmf",
        "MODEL.SOLOV2.MASK_IN_FEATURES", ["n2", "n3", "n4", "p5"],
    )  # fmt: skip


def test_twfpn_adds_a_bottom_up_path_and_csmf_fuses_it_at_stride_4():
    torch.manual_seed(0)
    cfg = tiny_street_cfg()
    twfpn = build_backbone(cfg)
    strides = {name: shape.stride for name, shape in twfpn.output_shape().items()}
    assert strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32,
                       "n2": 4, "n3": 8, "n4": 16, "n5": 32, "n6": 64}  # fmt: skip
    features = twfpn(torch.rand(2, 3, 64, 96))
    assert torch.equal(features["n2"], features["p2"])
    assert {name: tuple(x.shape[-2:]) for name, x in features.items()} == {
        name: (-(-64 // s), -(-96 // s))
        for name, s in strides.items()  # ceil
    }
    branch = SOLOv2MaskBranch(cfg, twfpn.output_shape())
    mask_features = branch([features[name] for name in cfg.MODEL.SOLOV2.MASK_IN_FEATURES])
    assert mask_features.shape == (2, 32, 16, 24)
    (mask_features.sum() + features["n6"].sum()).backward()
    for module in (twfpn, branch):
        for name, parameter in module.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_mask_branch_refuses_bad_fusion_and_levels_by_key():
    cfg = tiny_street_cfg()
    shapes = build_backbone(cfg).output_shape()
    cfg.MODEL.SOLOV2.MASK_FUSION = "concat"
    with pytest.raises(ValueError, match="MODEL.SOLOV2.MASK_FUSION = 'concat'"):
        SOLOv2MaskBranch(cfg, shapes)
    cfg.MODEL.SOLOV2.MASK_FUSION = "sum"
    cfg.MODEL.SOLOV2.MASK_IN_FEATURES = ["n3", "n4", "n5", "n6"]
    SOLOv2MaskBranch(cfg, shapes)  # any four levels of doubling strides
    cfg.MODEL.SOLOV2.MASK_IN_FEATURES = ["n2", "n3", "n5", "n6"]
    with pytest.raises(ValueError, match=r"MASK_IN_FEATURES.*strides \[4, 8, 32, 64\]"):
        SOLOv2MaskBranch(cfg, shapes)
