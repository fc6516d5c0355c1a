"""
The SOLOv2 meta-architecture end to end on tiny models: training, bad inputs, inference. Each
architecture is built once per module and copied: a CPU's first pass through new convolution
shapes is what costs time.
"""

import copy
import math

import pytest
import torch
from detectron2.structures import BitMasks
from detectron2.utils.events import EventStorage
from solov2_testing import hard_batch, tiny_model

from helpers import rectangle_instances

# (street model?, loss): the baseline and street models, each with both losses.
VARIANTS = [(False, "solov2"), (False, "aml"), (True, "solov2"), (True, "aml")]


@pytest.fixture(scope="module")
def built():
    """{street?: a tiny model}, reporting every candidate (score threshold 0)."""
    return {
        street: tiny_model(street, "MODEL.SOLOV2.SCORE_THRESH_TEST", "0.0")
        for street in (False, True)
    }


def model_of(built, street, loss="solov2"):
    model = copy.deepcopy(built[street])
    model.loss = loss
    return model


def train_step(model, batch):
    model.train()
    with EventStorage():
        losses = model(batch)
    sum(losses.values()).backward()
    return losses


@pytest.mark.parametrize("street, loss", VARIANTS)
def test_hard_batch_trains_with_finite_losses_and_gradients_everywhere(built, street, loss):
    model = model_of(built, street, loss)
    losses = train_step(model, hard_batch())
    assert set(losses) == {"loss_cate", "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("street, loss", VARIANTS[1:3])
def test_images_without_objects_keep_every_parameter_in_the_graph(built, street, loss):
    model = model_of(built, street, loss)
    batch = [
        {**x, "instances": rectangle_instances(*x["image"].shape[1:], [])} for x in hard_batch()
    ]
    losses = train_step(model, batch)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert all(p.grad is not None for p in model.parameters())


def make_masks_all_zero(model):
    """Mask features of 1 and kernels of -100: every predicted mask probability is 0."""
    model.mask_branch.register_forward_hook(lambda module, inputs, output: torch.ones_like(output))
    with torch.no_grad():
        model.instance_head.kernel_pred.weight.zero_()
        model.instance_head.kernel_pred.bias.fill_(-100)


@pytest.mark.parametrize("loss", ["solov2", "aml"])
def test_all_zero_predicted_masks_give_finite_losses_and_no_detection(built, loss):
    model = model_of(built, True, loss)
    make_masks_all_zero(model)
    losses = train_step(model, hard_batch())
    assert all(torch.isfinite(v) for v in losses.values()), losses
    model.eval()
    with torch.no_grad():
        instances = model([{"image": hard_batch()[0]["image"]}])[0]["instances"]
    assert len(instances) == 0 and instances.pred_masks.shape == (0, 96, 128)
    assert instances.pred_boxes.tensor.shape == (0, 4)


@pytest.mark.parametrize("street", [False, True])
def test_inference_gives_full_image_masks_with_their_boxes_at_the_output_size(built, street):
    model = model_of(built, street).eval()
    model.max_detections_per_image = 7
    image = hard_batch()[0]["image"]
    with torch.no_grad():
        outputs = model([{"image": image, "height": 150, "width": 200}, {"image": image[:, :50]}])
    instances = outputs[0]["instances"]
    assert len(instances) == 7 and instances.image_size == (150, 200)
    assert instances.pred_masks.shape == (7, 150, 200) and instances.pred_masks.dtype == torch.bool
    expected_boxes = BitMasks(instances.pred_masks).get_bounding_boxes().tensor
    assert torch.equal(instances.pred_boxes.tensor, expected_boxes)
    assert instances.pred_masks.flatten(1).any(dim=1).all()
    scores = instances.scores
    assert torch.all(scores[:-1] >= scores[1:]) and scores[-1] > 0 and scores[0] <= 1
    assert instances.pred_classes.tolist() == [0] * 7
    assert outputs[1]["instances"].pred_masks.shape[1:] == (50, 128)


def test_score_threshold_is_the_minimum_reported_score(built):
    model = model_of(built, True).eval()
    model.max_detections_per_image = 50
    inputs = [{"image": hard_batch()[0]["image"]}]
    with torch.no_grad():
        every = model(inputs)[0]["instances"].scores
        threshold = every[len(every) // 2].item()
        model.score_thresh_test = threshold
        kept = model(inputs)[0]["instances"].scores
    torch.testing.assert_close(kept, every[every >= threshold])


def test_instances_without_masks_are_refused_by_key(built):
    model = model_of(built, False)
    batch = hard_batch()
    batch[0]["instances"].remove("gt_masks")
    with pytest.raises(ValueError, match="MODEL.MASK_ON"):
        train_step(model, batch[:1])


def test_config_values_are_checked_by_key():
    with pytest.raises(ValueError, match="MODEL.SOLOV2.LOSS = 'focal'"):
        tiny_model(False, "MODEL.SOLOV2.LOSS", "focal")
    with pytest.raises(ValueError, match=r"MODEL.SOLOV2.NUM_GRIDS = \[40, 36\]"):
        tiny_model(False, "MODEL.SOLOV2.NUM_GRIDS", "[40, 36]")
    with pytest.raises(ValueError, match=r"INSTANCE_IN_FEATURES names \['n2'"):
        tiny_model(False, "MODEL.SOLOV2.INSTANCE_IN_FEATURES", "['n2', 'n3', 'n4', 'n5', 'n6']")


def parameters(model):
    return sum(p.numel() for p in model.parameters())


def test_table_1_switches_change_the_parameters_by_what_they_add():
    """
    At smoke size (FPN C = 32, mask branch M = 32 channels, GroupNorm): AML adds nothing; TWFPN
    adds two 3x3 convs (with bias) per level above P2; CSMF replaces the two deepest levels'
    separate paths (2 + 3 convs) by the concatenation's 2 convs and a 1x1 guide.
    """
    c = m = 32
    twfpn_csmf = ("MODEL.BACKBONE.NAME", "build_resnet_twfpn_backbone",
                  "MODEL.SOLOV2.INSTANCE_IN_FEATURES", "['n2', 'n3', 'n4', 'n5', 'n6']",
                  "MODEL.SOLOV2.MASK_IN_FEATURES", "['n2', 'n3', 'n4', 'p5']",
                  "MODEL.SOLOV2.MASK_FUSION", "csmf")  # fmt: skip
    base = parameters(tiny_model(False))
    assert parameters(tiny_model(False, "MODEL.SOLOV2.LOSS", "aml")) == base

    def conv(in_channels, size=3):  # no bias, GroupNorm affine
        return size * size * in_channels * m + 2 * m

    twfpn = 3 * 2 * (9 * c * c + c)
    separate = conv(c) + conv(m) + conv(c + 2) + 2 * conv(m)
    csmf = conv(2 * c + 2) + conv(m) + conv(c, size=1)
    assert parameters(tiny_model(False, *twfpn_csmf)) == base + twfpn - separate + csmf


def test_the_eight_table_1_configs_set_their_switches():
    from segtools.config import get_project_cfg

    from helpers import REPO_ROOT

    rows = sorted((REPO_ROOT / "configs/SOLOv2Street/ablations").glob("table1_*.yaml"))
    switches = set()
    for path in rows:
        cfg = get_project_cfg(str(path))
        cspam = "cspam" in cfg.MODEL.BACKBONE.NAME
        twfpn = "twfpn" in cfg.MODEL.BACKBONE.NAME
        assert (cfg.MODEL.SOLOV2.MASK_FUSION == "csmf") == twfpn, path.name
        assert cfg.MODEL.SOLOV2.INSTANCE_IN_FEATURES[0] == ("n2" if twfpn else "p2"), path.name
        aml = cfg.MODEL.SOLOV2.LOSS == "aml"
        assert path.stem.startswith("table1_") and cfg.DATASETS.TRAIN == ("coco_2017_train",)
        assert (cfg.MODEL.WEIGHTS == "") == cspam, path.name
        switches.add((cspam, twfpn, aml))
    assert len(rows) == len(switches) == 8 == math.prod([2, 2, 2])
