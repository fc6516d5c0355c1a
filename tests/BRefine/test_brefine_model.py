"""The whole model (Detectron2's GeneralizedRCNN with BRefine's heads): training, bad input."""

import math

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from brefine import BRefineMaskHead, BRefineROIHeads, RankSortOutputLayers, RankSortRPN
from segtools.config import get_project_cfg
from segtools.projects import registered_projects

from helpers import REPO_ROOT, rectangle_instances, training_batch

PROJECT = next(p for p in registered_projects() if p.name == "BRefine")
CPU_CONFIG = "configs/BRefine/brefine_R_18_FPN_ore_synthetic_cpu.yaml"


def build(*opts, config=CPU_CONFIG):
    cfg = get_project_cfg(str(REPO_ROOT / config), [*PROJECT.smoke_opts, *opts])
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    return build_model(cfg)


def image(height, width, seed, instances):
    generator = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(3, height, width, generator=generator) * 255,
        "instances": instances,
    }


def train_step(model, batch):
    model.train()
    with EventStorage():
        losses = model(batch)
        sum(losses.values()).backward()
    return {k: v.item() for k, v in losses.items()}


def test_modules_are_brefines():
    model = build()
    assert isinstance(model.proposal_generator, RankSortRPN)
    assert isinstance(model.roi_heads, BRefineROIHeads)
    assert isinstance(model.roi_heads.box_predictor, RankSortOutputLayers)
    assert isinstance(model.roi_heads.mask_head, BRefineMaskHead)
    assert model.roi_heads.box_predictor.cls_score.out_features == 1  # no background logit


def test_training_step_balances_every_term_and_reaches_every_parameter():
    model = build()
    losses = train_step(model, training_batch())
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
    assert all(math.isfinite(v) and v > 0 for v in losses.values()), losses
    # lambda^k L^k takes the value of L_RS^k (eq. 5); the mask term takes the box head's.
    assert losses["loss_rpn_loc"] == pytest.approx(losses["loss_rpn_cls"], rel=1e-5)
    assert losses["loss_box_reg"] == pytest.approx(losses["loss_cls"], rel=1e-5)
    assert losses["loss_mask"] == pytest.approx(losses["loss_cls"], rel=1e-5)
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_inference_gives_pasted_masks_from_56_pixel_logits():
    model = build("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "7")
    model.eval()
    image = training_batch()[0]["image"]
    with torch.no_grad():
        instances = model([{"image": image, "height": 48, "width": 64}])[0]["instances"]
    assert len(instances) == 7 and instances.pred_masks.shape == (7, 48, 64)
    assert ((instances.scores >= 0) & (instances.scores <= 1)).all()


def tiny_instances(height, width):
    """A box thinner than a pixel with a one-pixel mask, and a box whose mask is empty."""
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, 20, 30] = True
    instances = Instances((height, width))
    instances.gt_masks = BitMasks(masks)
    instances.gt_boxes = Boxes(torch.tensor([[30.0, 20.0, 30.4, 20.3], [5.0, 5.0, 20.0, 18.0]]))
    instances.gt_classes = torch.zeros(2, dtype=torch.long)
    return instances


@pytest.mark.parametrize("rank_sort", [True, False])
def test_degenerate_boxes_and_masks_give_finite_losses(rank_sort):
    opts = [] if rank_sort else ["MODEL.BREFINE.RANK_SORT_ON", "False"]
    opts += [] if rank_sort else ["MODEL.PROPOSAL_GENERATOR.NAME", "RPN"]
    model = build(*opts)
    batch = [
        image(64, 80, 1, tiny_instances(64, 80)),
        image(64, 64, 2, rectangle_instances(64, 64, [])),
    ]
    losses = train_step(model, batch)
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_a_batch_without_positives_gives_zero_rank_sort_losses_without_nan():
    model = build()
    batch = [image(64, 64, seed, rectangle_instances(64, 64, [])) for seed in (3, 4)]
    losses = train_step(model, batch)
    assert losses == dict.fromkeys(losses, 0.0)
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize(
    "config, mask_head",
    [
        ("configs/BRefine/rs_mask_rcnn_R_50_FPN_1x_coco.yaml", "MaskRCNNConvUpsampleHead"),
        ("configs/BRefine/ablations/table5_ce_dice.yaml", "BRefineMaskHead"),
    ],
)
def test_rs_mask_rcnn_and_the_unbalanced_ablation_train(config, mask_head):
    narrow = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
    model = build(*narrow, "MODEL.ROI_HEADS.NUM_CLASSES", "1", config=config)
    assert type(model.roi_heads.mask_head).__name__ == mask_head
    losses = train_step(model, training_batch())
    assert all(math.isfinite(v) and v > 0 for v in losses.values()), losses
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.BREFINE.RANK_SORT_ON", "False"], "RANK_SORT_ON = False with .*'RankSortRPN'"),
        (["MODEL.BREFINE.MASK_LOSS.TYPE", "lovasz"], "MASK_LOSS.TYPE = 'lovasz'"),
        (["MODEL.BREFINE.MASK_LOSS.TYPE", "dice"], "BOUNDARY_WEIGHT = 1.0 .*'dice'"),
        (["MODEL.BREFINE.MASK_HEAD.NUM_STAGES", "4"], "NUM_STAGES = 4: expected 1 to"),
        (["MODEL.ROI_BOX_HEAD.USE_FED_LOSS", "True"], "USE_FED_LOSS = True"),
    ],
)
def test_bad_settings_are_named(opts, message):
    with pytest.raises(ValueError, match=message):
        build(*opts)
