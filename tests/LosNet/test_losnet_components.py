"""LosNet's parts on their own: backbone, lightweight FPN, head, mask branch, dynamic head."""

import pytest
import torch
import torchvision
from detectron2.layers import ShapeSpec

from losnet import DynamicMaskHead, LosNetHead, MaskBranch, dice_loss, select_mask_positives
from losnet.backbone import LightweightFPN, MobileNetV3Small, load_torchvision_mobilenet_weights

from helpers import build_losnet, losnet_cfg


def num_params(module):
    return sum(p.numel() for p in module.parameters())


def test_mobilenet_stages_strides_and_channels():
    backbone = MobileNetV3Small(out_features=("res2", "res3", "res4", "res5"))
    outputs = backbone(torch.rand(2, 3, 96, 160))
    expected = {"res2": (16, 4), "res3": (24, 8), "res4": (48, 16), "res5": (576, 32)}
    for name, (channels, stride) in expected.items():
        assert outputs[name].shape == (2, channels, 96 // stride, 160 // stride)
        assert backbone.output_shape()[name] == ShapeSpec(channels=channels, stride=stride)
    # torchvision's MobileNetV3-Small feature extractor, nothing more (no classifier).
    assert num_params(backbone) == num_params(torchvision.models.mobilenet_v3_small().features)


def test_mobilenet_builds_only_the_blocks_it_uses():
    assert len(MobileNetV3Small(out_features=("res3",)).features) == 4
    with pytest.raises(ValueError, match="res6"):
        MobileNetV3Small(out_features=("res6",))


@pytest.mark.parametrize("wrapper", ["plain", "state_dict", "module_prefix"])
def test_torchvision_weights_load_from_local_file(tmp_path, wrapper):
    torch.manual_seed(1)
    reference = torchvision.models.mobilenet_v3_small()
    state = reference.state_dict()  # includes the classifier, which loading ignores
    if wrapper == "state_dict":
        state = {"state_dict": state}
    elif wrapper == "module_prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "mobilenet_v3_small.pth"
    torch.save(state, path)

    backbone = MobileNetV3Small()
    load_torchvision_mobilenet_weights(backbone, str(path))
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key


def test_wrong_weights_file_names_file_and_missing_keys(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ValueError, match=r"resnet18\.pth.*missing.*features\.0\.0\.weight"):
        load_torchvision_mobilenet_weights(MobileNetV3Small(), str(path))

    not_weights = tmp_path / "notes.pth"
    not_weights.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth"):
        load_torchvision_mobilenet_weights(MobileNetV3Small(), str(not_weights))
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_torchvision_mobilenet_weights(MobileNetV3Small(), str(tmp_path / "absent.pth"))


def test_weights_key_builds_a_loaded_backbone(tmp_path):
    torch.manual_seed(2)
    reference = torchvision.models.mobilenet_v3_small()
    path = tmp_path / "imagenet.pth"
    torch.save(reference.state_dict(), path)
    model = build_losnet("MODEL.MOBILENET_V3.WEIGHTS", str(path))
    first = model.backbone.bottom_up.features[0][0].weight
    assert torch.equal(first, reference.features[0][0].weight)


def lightweight_fpn(channels=96, output_convs=False, top_levels=0):
    return LightweightFPN(
        MobileNetV3Small(),
        ["res3", "res4", "res5"],
        out_channels=channels,
        output_convs=output_convs,
        top_levels=top_levels,
    )


def test_lightweight_fpn_levels_and_shapes():
    fpn = lightweight_fpn()
    outputs = fpn(torch.rand(1, 3, 128, 192))
    assert list(outputs) == ["p3", "p4", "p5"]
    for name, stride in (("p3", 8), ("p4", 16), ("p5", 32)):
        assert outputs[name].shape == (1, 96, 128 // stride, 192 // stride)
    assert fpn.size_divisibility == 32

    with_top = lightweight_fpn(top_levels=2)
    outputs = with_top(torch.rand(1, 3, 128, 128))
    assert list(outputs) == ["p3", "p4", "p5", "p6", "p7"]
    assert outputs["p7"].shape == (1, 96, 1, 1)
    assert with_top.size_divisibility == 128


def test_lightweight_fpn_is_1x1_laterals_only():
    fpn = lightweight_fpn()
    laterals = (24 * 96 + 96) + (48 * 96 + 96) + (576 * 96 + 96)
    assert num_params(fpn) - num_params(fpn.bottom_up) == laterals == 62_496
    for module in fpn.modules():
        if isinstance(module, torch.nn.Conv2d) and module not in set(fpn.bottom_up.modules()):
            assert module.kernel_size == (1, 1)


@pytest.mark.parametrize("channels", [64, 96, 128, 256])
def test_fpn_switches_change_parameters_as_the_structure_implies(channels):
    base = num_params(lightweight_fpn(channels))
    # Table 2: three 3x3 output convs, C -> C with bias.
    assert num_params(lightweight_fpn(channels, output_convs=True)) - base == 3 * (
        channels * channels * 9 + channels
    )
    # Table 3: P6 and P7, two stride-2 3x3 convs.
    assert num_params(lightweight_fpn(channels, top_levels=2)) - base == 2 * (
        channels * channels * 9 + channels
    )


def test_the_papers_p_is_one_96_channel_3x3_conv_and_1_37_of_the_original_fpn():
    # Section 3.2: "P = C_i x K^2 x C_o ... 82,944, which is only 1/37 of the traditional FPN".
    # 82,944 is the weight count of one 3x3 output conv of a 96-channel FPN (Table 2's "Convs.").
    with_convs = lightweight_fpn(96, output_convs=True)
    assert [conv.weight.numel() for conv in with_convs.output_convs] == [82_944] * 3
    # The traditional FPN on MobileNetV3-Small: 256 channels, 3x3 output convs, P6 and P7.
    original = lightweight_fpn(256, output_convs=True, top_levels=2)
    fpn_params = num_params(original) - num_params(original.bottom_up)
    assert fpn_params == (24 + 48 + 576) * 256 + 5 * 256 * 256 * 9 + 8 * 256 == 3_117_056
    assert fpn_params // 82_944 == 37


def head(num_levels=3, channels=96, num_convs=2, norm="BN", on_box_tower=False, classes=1):
    return LosNetHead(
        input_shape=[ShapeSpec(channels=channels, stride=8 * 2**i) for i in range(num_levels)],
        num_classes=classes,
        num_cls_convs=num_convs,
        num_box_convs=num_convs,
        norm=norm,
        num_controller_params=169,
        controller_on_box_tower=on_box_tower,
        prior_prob=0.01,
    )


def test_head_output_shapes():
    features = [torch.rand(2, 96, 40 // 2**i, 48 // 2**i) for i in range(3)]
    logits, deltas, quality, controller = head(classes=3)(features)
    for level, feature in enumerate(features):
        size = feature.shape[-2:]
        assert logits[level].shape == (2, 3, *size)
        assert deltas[level].shape == (2, 4, *size)
        assert quality[level].shape == (2, 1, *size)
        assert controller[level].shape == (2, 169, *size)


def test_head_switches_change_parameters_as_the_structure_implies():
    conv = 96 * 96 * 9  # tower convs have no bias when followed by a norm
    bn = 2 * 96
    # Table 4: one more conv in each of the cls, box and controller towers, with per-level BN.
    assert num_params(head(num_convs=3)) - num_params(head(num_convs=2)) == 3 * (conv + 3 * bn)
    # Table 5: per-level BN (3 levels) versus one shared GroupNorm, per tower conv.
    assert num_params(head(norm="BN")) - num_params(head(norm="GN")) == 3 * 2 * (2 * bn)
    # Authors' layout: the controller on the box tower, no tower of its own.
    assert num_params(head()) - num_params(head(on_box_tower=True)) == 2 * (conv + 3 * bn)
    # Two more levels (P6, P7) add only their BNs.
    assert num_params(head(num_levels=5)) - num_params(head()) == 3 * 2 * 2 * bn


def test_head_has_one_batchnorm_per_level_and_conv():
    bns = [m for m in head().modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 3 * 2 * 3  # towers x convs x levels


def test_mask_branch_merges_coarse_levels_into_p3():
    shapes = {f"p{i}": ShapeSpec(channels=96, stride=2**i) for i in (3, 4, 5)}
    branch = MaskBranch(
        input_shape=shapes,
        in_features=["p3", "p4", "p5"],
        channels=128,
        num_convs=4,
        out_channels=8,
        norm="BN",
    )
    features = {f"p{i}": torch.rand(2, 96, 256 // 2**i, 192 // 2**i) for i in (3, 4, 5)}
    assert branch(features).shape == (2, 8, 32, 24)
    assert branch.out_stride == 8
    # Two 1x1 linear projections (P4, P5), four 3x3 conv+BN, one 1x1 predictor.
    expected = 2 * (96 * 96 + 96) + 96 * 128 * 9 + 3 * 128 * 128 * 9 + 4 * 2 * 128 + 128 * 8 + 8
    assert num_params(branch) == expected


def dynamic_head(rel_coords=True, out_stride=2, num_layers=3):
    return DynamicMaskHead(
        in_channels=8,
        in_stride=8,
        channels=8,
        num_layers=num_layers,
        rel_coords=rel_coords,
        out_stride=out_stride,
    )


def test_dynamic_head_parameter_count_matches_controller():
    assert dynamic_head().num_params == (10 * 8 + 8) + (8 * 8 + 8) + (8 * 1 + 1) == 169
    assert dynamic_head(rel_coords=False).num_params == 153
    model = build_losnet()
    assert model.head.controller.out_channels == model.mask_head.num_params == 169


def test_dynamic_head_equals_per_instance_convolutions():
    torch.manual_seed(0)
    mask_head = dynamic_head(out_stride=8)
    features = torch.rand(2, 8, 6, 7)
    params = torch.randn(3, 169)
    image_indices = torch.tensor([0, 1, 1])
    locations = torch.tensor([[12.0, 20.0], [4.0, 4.0], [50.0, 30.0]])
    sizes = torch.tensor([64.0, 128.0, 64.0])
    logits = mask_head(features, image_indices, locations, sizes, params)
    assert logits.shape == (3, 6, 7)

    weights, biases = mask_head.split_params(params)
    assert [tuple(w.shape) for w in weights] == [(3, 8, 10), (3, 8, 8), (3, 1, 8)]
    ys = (torch.arange(6) + 0.5) * 8
    xs = (torch.arange(7) + 0.5) * 8
    for k in range(3):
        rel_x = (locations[k, 0] - xs)[None, :].expand(6, 7) / sizes[k]
        rel_y = (locations[k, 1] - ys)[:, None].expand(6, 7) / sizes[k]
        x = torch.cat([torch.stack([rel_x, rel_y]), features[image_indices[k]]])[None]
        # The controller's layout: all weights ((out, in) row-major, layer by layer), then biases.
        offset, bias_offset = 0, 80 + 64 + 8
        for layer, (out, inp) in enumerate(mask_head.layer_shapes):
            weight = params[k, offset : offset + out * inp].reshape(out, inp, 1, 1)
            bias = params[k, bias_offset : bias_offset + out]
            offset, bias_offset = offset + out * inp, bias_offset + out
            x = torch.nn.functional.conv2d(x, weight, bias)
            x = torch.relu(x) if layer < 2 else x
        torch.testing.assert_close(logits[k], x[0, 0])


@pytest.mark.parametrize("out_stride, size", [(2, (24, 28)), (4, (12, 14)), (8, (6, 7))])
def test_dynamic_head_output_stride(out_stride, size):
    logits = dynamic_head(out_stride=out_stride)(
        torch.rand(1, 8, 6, 7),
        torch.zeros(2, dtype=torch.long),
        torch.rand(2, 2) * 40,
        torch.full((2,), 64.0),
        torch.randn(2, 169),
    )
    assert logits.shape == (2, *size)
    with pytest.raises(ValueError, match="OUT_STRIDE=3"):
        dynamic_head(out_stride=3)


def test_dynamic_head_with_no_instances():
    logits = dynamic_head()(
        torch.rand(1, 8, 6, 7),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, 2),
        torch.zeros(0),
        torch.zeros(0, 169),
    )
    assert logits.shape == (0, 24, 28)


def test_dice_loss_known_values():
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    assert dice_loss(target, target, eps=0).item() == pytest.approx(0.0)
    assert dice_loss(1 - target, target, eps=0).item() == pytest.approx(1.0)
    half = torch.full((1, 2, 2), 0.5)
    # 1 - 2 * (0.5 + 0.5) / (4 * 0.25 + 2) = 1/3
    assert dice_loss(half, target, eps=0).item() == pytest.approx(1 / 3)


def test_select_mask_positives_keeps_best_per_instance():
    gt = torch.tensor([0, 0, 0, 1, 1, 2, 0, 1])
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4])
    # cap 6 over 3 instances: 2 best per instance; instance 2 has only one.
    chosen = select_mask_positives(gt, scores, cap=6)
    assert sorted(chosen.tolist()) == [1, 4, 5, 6, 7]
    assert sorted(select_mask_positives(gt, scores, cap=-1).tolist()) == list(range(8))
    # More instances than the cap: the best positive of a random `cap` instances.
    for seed in range(5):
        torch.manual_seed(seed)
        chosen = select_mask_positives(gt, scores, cap=2).tolist()
        assert len(chosen) == 2 and set(chosen) <= {1, 4, 5}
    torch.manual_seed(0)
    seen = {i for _ in range(20) for i in select_mask_positives(gt, scores, cap=1).tolist()}
    assert seen == {1, 4, 5}  # every instance gets its turn


def test_config_switches_are_validated():
    for key, value in (
        ("MODEL.LOSNET.BOX_QUALITY", "area"),
        ("MODEL.LOSNET.CONTROLLER_INPUT", "cls_tower"),
        ("MODEL.LIGHTWEIGHT_FPN.TOP_LEVELS", 1),
        ("MODEL.LOSNET.IN_FEATURES", ["p3", "p6"]),
    ):
        with pytest.raises(ValueError, match=key.split(".")[-1]):
            build_losnet(key, value)
    assert losnet_cfg().MODEL.LOSNET.MASK_HEAD.OUT_STRIDE == 2
