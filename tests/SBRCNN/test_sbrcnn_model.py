"""SBR-CNN models end to end: parameter counts beside Tables 2 and 6, gradients, bad inputs."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.utils.events import EventStorage
from sbrcnn_testing import build_tiny_model, targets

from sbrcnn import add_sbrcnn_config

from helpers import REPO_ROOT, training_batch

CONFIGS = REPO_ROOT / "configs/SBRCNN"
R50_FPN = {f"p{level}": ShapeSpec(channels=256, stride=2**level) for level in (2, 3, 4, 5, 6)}


def _cfg(config):
    cfg = get_cfg()
    add_sbrcnn_config(cfg)
    cfg.merge_from_file(str(CONFIGS / config))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_r3_cnn_sizes_beside_table_2():
    mask_rcnn, naive, deeper = (
        _params(build_model(_cfg(name)))
        for name in (
            "mask_rcnn_R_50_FPN_12e_coco.yaml",
            "r3_cnn_naive_R_50_FPN_12e_coco.yaml",
            "r3_cnn_deeper_R_50_FPN_12e_coco.yaml",
        )
    )
    assert abs(naive / mask_rcnn - 1) < 0.02
    # Table 2: 44,170 K -> 43,912 K (class-agnostic regression, the 1x1 feedback conv C1) and
    # 43,912 K -> 60,604 K (a second box / mask head pair), in thousands.
    assert round((naive - mask_rcnn) / 1000) == 43_912 - 44_170
    assert round((deeper - naive) / 1000) == 60_604 - 43_912


@pytest.mark.parametrize(
    "config, paper_millions",
    [
        ("table6_row3_l2c_7x7.yaml", 32.2),
        ("table6_row4_l2c_rect.yaml", 32.7),
        ("table6_row5_l2c_7x7_nlb.yaml", 38.6),
        ("table6_row6_l2c_rect_nlb.yaml", 37.9),
        ("table6_row7_l2c_7x7_nlb_nla.yaml", 39.0),
    ],
)
def test_fcc_sizes_beside_table_6(config, paper_millions):
    # Only the ROI heads differ from R3-CNN naive (Table 6, row 2: 43.9 M).
    naive = _params(build_roi_heads(_cfg("r3_cnn_naive_R_50_FPN_12e_coco.yaml"), R50_FPN))
    fcc = _params(build_roi_heads(_cfg(f"ablations/{config}"), R50_FPN))
    assert abs((fcc - naive) / 1e6 - (paper_millions - 43.9)) < 0.1


def _train_step(model, batch):
    model.train()
    with EventStorage():
        losses = model(batch)
    for name, value in losses.items():
        assert value.dim() == 0 and math.isfinite(value.item()), (name, value)
    sum(losses.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    return losses


@pytest.mark.parametrize(
    "opts",
    [
        [],  # SBR-CNN: "a", FCC rectangular + NL_b, Mask IoU with 7x7 L2C, GRoIE on both
        [
            "MODEL.SBRCNN.ALTERNATION", "aab", "MODEL.SBRCNN.FCC.L2C", "7x7",
            "MODEL.SBRCNN.FCC.NL_AFTER", "True", "MODEL.SBRCNN.MASKIOU.L2C", "",
            "MODEL.SBRCNN.GROIE.PRE", "conv7x3_3x7", "MODEL.SBRCNN.GROIE.POST", "nonlocal1x1",
        ],
        [
            "MODEL.SBRCNN.ALTERNATION", "ab", "MODEL.SBRCNN.LOOP_IOUS", "[0.5, 0.6]",
            "MODEL.SBRCNN.LOOP_WEIGHTS", "[1.0, 0.75]", "MODEL.SBRCNN.MASK_LOOP_IN_TRAINING",
            "False", "MODEL.SBRCNN.MASKIOU.L2C", "7x3_3x7", "MODEL.SBRCNN.MASKIOU.NL_AFTER", "True",
        ],
    ],
    ids=["sbr_cnn", "aab_fcc7x7_nla_maskiou_fc_groie_rect_nl1", "ab_no_train_mask_loop"],
)  # fmt: skip
def test_losses_finite_and_every_parameter_gets_gradient(opts):
    losses = _train_step(build_tiny_model(*opts), training_batch())
    loops = 3 if "ab" not in opts else 2
    assert {k for k in losses if "_loop" in k} == {
        f"{name}_loop{t}"
        for name in ("loss_cls", "loss_box_reg", "loss_mask")
        for t in range(loops)
    }
    assert "loss_maskiou" in losses


def test_r3_cnn_naive_trains_with_roipoolers_and_fc_heads():
    _train_step(
        build_tiny_model(config_file=str(CONFIGS / "r3_cnn_naive_R_18_FPN_ore_synthetic_cpu.yaml")),
        training_batch(),
    )


def _empty_batch():
    return [{"image": torch.rand(3, 64, 64) * 255, "instances": targets(64, 64, [])}] * 2


def test_images_without_instances_train():
    losses = _train_step(build_tiny_model(), _empty_batch())
    assert losses["loss_mask_loop0"].item() == 0.0 and losses["loss_maskiou"].item() == 0.0


def test_loops_where_no_proposal_passes_the_threshold_train():
    # No ground-truth box is added as a proposal, and no RPN proposal reaches IoU 0.99.
    model = build_tiny_model(
        "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", "False", "MODEL.SBRCNN.LOOP_IOUS",
        "[0.99, 0.995, 0.999]",
    )  # fmt: skip
    losses = _train_step(model, training_batch())
    assert all(losses[f"loss_box_reg_loop{t}"].item() == 0.0 for t in range(3))
    assert all(losses[f"loss_mask_loop{t}"].item() == 0.0 for t in range(3))


def _collapse_regression(model):
    """Every regressed box becomes empty: its width and height deltas are -1000."""
    for predictor in model.roi_heads.box_predictor:
        torch.nn.init.zeros_(predictor.bbox_pred.weight)
        predictor.bbox_pred.bias.data = torch.tensor([0.0, 0.0, -1000.0, -1000.0])


def test_proposals_that_regress_to_degenerate_boxes_train_and_predict():
    model = build_tiny_model("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    _collapse_regression(model)
    losses = _train_step(model, training_batch())
    # Loops 2 and 3 see only the ground-truth boxes added as proposals: all positive.
    assert losses["loss_mask_loop2"].item() > 0
    model.eval()
    image = [{"image": torch.rand(3, 64, 80) * 255}]
    with torch.no_grad():
        (raw,) = model.inference(image, do_postprocess=False)
        (output,) = model(image)
    # The ROI heads return the empty boxes with finite scores and masks...
    assert len(raw) > 0 and (raw.pred_boxes.area() == 0).all()
    assert torch.isfinite(raw.scores).all() and torch.isfinite(raw.pred_masks).all()
    # ... which Detectron2's postprocessing drops.
    assert len(output["instances"]) == 0 and output["instances"].pred_masks.shape[1:] == (64, 80)


class _ConstantIoU(torch.nn.Module):
    def forward(self, features, mask_logits):
        return features.new_full((len(features), 1), 0.5)


def test_mask_iou_rescales_the_scores_and_the_threshold_applies_after():
    model = build_tiny_model("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0").eval()
    image = [{"image": torch.rand(3, 64, 80) * 255}]
    heads = model.roi_heads
    with torch.no_grad():
        heads.maskiou_head = None
        box_scores = model(image)[0]["instances"].scores
        heads.maskiou_head = _ConstantIoU()
        scores = model(image)[0]["instances"].scores
        torch.testing.assert_close(scores, box_scores * 0.5)
        threshold = 0.5 * 0.99 * box_scores.max().item()
        for predictor in heads.box_predictor:
            predictor.test_score_thresh = threshold
        kept = model(image)[0]["instances"].scores
    # Detections above the threshold by their box score, but not once rescaled, are dropped.
    assert len(kept) == int((box_scores * 0.5 >= threshold).sum()) > 0
    assert (kept >= threshold).all()
