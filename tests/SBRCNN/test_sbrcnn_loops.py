"""R3-CNN's loops: labels per loop, head pairs per loop, the internal mask loop, test averaging."""

import pytest
import torch
from detectron2.utils.events import EventStorage
from sbrcnn_testing import build_tiny_roi_heads, features, proposals, targets
from torch.nn import functional as F

from sbrcnn import R3ROIHeads, loop_pairs, parse_alternation


@pytest.mark.parametrize(
    "alternation, loops, expected",
    [
        ("a", 3, [0, 0, 0]),
        ("ab", 2, [0, 1]),
        ("aab", 3, [0, 0, 1]),
        ("abb", 3, [0, 1, 1]),
        ("aba", 3, [0, 1, 0]),
        ("aabb", 4, [0, 0, 1, 1]),
        ("abab", 4, [0, 1, 0, 1]),
        ("aabbb", 5, [0, 0, 1, 1, 1]),
        ("aab", 5, [0, 0, 1, 1, 1]),  # test loops beyond the string keep its last pair
        ("aab", 2, [0, 0]),
    ],
)
def test_alternation_strings_map_loops_to_head_pairs(alternation, loops, expected):
    assert loop_pairs(alternation, loops) == expected


@pytest.mark.parametrize("alternation", ["", "b", "ba", "ac", "aAb"])
def test_bad_alternation_names_the_key(alternation):
    with pytest.raises(ValueError, match="MODEL.SBRCNN.ALTERNATION"):
        parse_alternation(alternation)


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.SBRCNN.ALTERNATION", "aabb"], "names 4 loops"),
        (["MODEL.SBRCNN.LOOP_WEIGHTS", "[1.0, 0.5]"], "LOOP_WEIGHTS=.*one weight per entry"),
        (["MODEL.SBRCNN.TEST_SCORE_AVERAGE", "max"], "TEST_SCORE_AVERAGE='max'"),
        (["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "False"], "CLS_AGNOSTIC_BBOX_REG"),
        (["MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead"], "'SBRLoopMaskHead'"),
        (["MODEL.MASK_ON", "False"], "MASKIOU.ENABLED=True needs MODEL.MASK_ON"),
    ],
)
def test_bad_config_names_the_key(opts, message):
    with pytest.raises(ValueError, match=message):
        build_tiny_roi_heads(*opts)


def test_each_loop_labels_at_its_own_iou_threshold():
    # Three classes; the object is class 2, the box (0, 0, 10, 10). Proposals (0, 0, 10, h)
    # overlap it with IoU h / 10: 0.4, 0.55, 0.65, 0.75.
    heads = build_tiny_roi_heads(
        "MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.ROI_HEADS.POSITIVE_FRACTION", 1.0,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64,
    )  # fmt: skip
    props = [proposals((32, 32), [[0, 0, 10, h] for h in (4.0, 5.5, 6.5, 7.5)])]
    gt = [targets(32, 32, [(0, 0, 10, 10)], classes=[2])]
    expected_positive = {0: [5.5, 6.5, 7.5], 1: [6.5, 7.5], 2: [7.5]}
    with EventStorage():
        for loop, heights in expected_positive.items():
            (sampled,) = heads._label_and_sample(props, gt, loop, "test")
            positive = sampled[sampled.gt_classes == 2]
            negative = sampled[sampled.gt_classes == 3]
            # The ground-truth box itself (IoU 1) is added as a proposal and marked.
            assert positive.from_gt.sum() == 1 and not negative.from_gt.any()
            heights_found = sorted(positive.proposal_boxes.tensor[~positive.from_gt, 3].tolist())
            assert heights_found == heights
            assert len(sampled) == 5


class _Recorder:
    """Records which head pair's box head, mask `refine` and mask `predict` run, in order."""

    def __init__(self, heads: R3ROIHeads):
        self.calls = []
        for pair, box_head in enumerate(heads.box_head):
            box_head.register_forward_hook(lambda *_, pair=pair: self.calls.append(("box", pair)))
        for pair, mask_head in enumerate(heads.mask_head):
            for method in ("refine", "predict"):
                setattr(mask_head, method, self._wrap(getattr(mask_head, method), method, pair))

    def _wrap(self, function, method, pair):
        def wrapped(*args, **kwargs):
            self.calls.append((method, pair))
            return function(*args, **kwargs)

        return wrapped

    def loops(self):
        """The calls split after each mask prediction: one list per loop."""
        loops, current = [], []
        for call in self.calls:
            current.append(call)
            if call[0] == "predict":
                loops.append(current)
                current = []
        return loops


def _run_training(heads):
    heads.train()
    props = [proposals((64, 64), [[2, 2, 30, 30], [30, 30, 60, 50], [0, 0, 64, 64]])]
    gt = [targets(64, 64, [(4, 4, 28, 30), (32, 28, 60, 52)])]
    with EventStorage():
        _, losses = heads(None, features(), props, gt)
    return losses


def test_internal_mask_loop_runs_t_times_in_loop_t():
    heads = build_tiny_roi_heads("MODEL.SBRCNN.MASKIOU.ENABLED", "False")
    recorder = _Recorder(heads)
    _run_training(heads)
    loops = recorder.loops()
    assert [sum(call[0] == "refine" for call in loop) for loop in loops] == [1, 2, 3]
    assert [call[0] for call in loops[2]] == ["box", "refine", "refine", "refine", "predict"]


def test_without_the_training_mask_loop_each_loop_runs_it_once():
    heads = build_tiny_roi_heads("MODEL.SBRCNN.MASK_LOOP_IN_TRAINING", "False")
    recorder = _Recorder(heads)
    _run_training(heads)
    assert [sum(call[0] == "refine" for call in loop) for loop in recorder.loops()] == [1, 1, 1]


def test_loops_use_their_head_pairs_in_training_and_inference():
    heads = build_tiny_roi_heads("MODEL.SBRCNN.ALTERNATION", "aab", "MODEL.SBRCNN.TEST_LOOPS", 4)
    recorder = _Recorder(heads)
    losses = _run_training(heads)
    # Loop t's internal mask iterations use the mask heads of loops 1..t, as HTC's stages.
    assert recorder.loops() == [
        [("box", 0), ("refine", 0), ("predict", 0)],
        [("box", 0), ("refine", 0), ("refine", 0), ("predict", 0)],
        [("box", 1), ("refine", 0), ("refine", 0), ("refine", 1), ("predict", 1)],
    ]
    assert {k for k in losses if k.endswith("_loop2")} == {
        "loss_cls_loop2", "loss_box_reg_loop2", "loss_mask_loop2"
    }  # fmt: skip
    recorder.calls.clear()
    heads.eval()
    props = [proposals((64, 64), [[2, 2, 30, 30], [30, 30, 60, 50]])]
    with torch.no_grad():
        heads(None, features(), props)
    boxes = [call for call in recorder.calls if call[0] == "box"]
    assert boxes == [("box", 0), ("box", 0), ("box", 1), ("box", 1)]  # L_e = 4
    refines = [call for call in recorder.calls if call[0] == "refine"]
    assert refines == [("refine", 0), ("refine", 0), ("refine", 1), ("refine", 1)]


def test_loop_weights_scale_each_loops_losses():
    weights = [1.0, 0.75, 0.5]
    unweighted = _run_training(build_tiny_roi_heads("MODEL.SBRCNN.LOOP_WEIGHTS", "[1.0, 1.0, 1.0]"))
    weighted = _run_training(build_tiny_roi_heads())
    for loop, weight in enumerate(weights):
        for name in ("loss_cls", "loss_box_reg", "loss_mask"):
            key = f"{name}_loop{loop}"
            torch.testing.assert_close(weighted[key], unweighted[key] * weight)
    # The Mask IoU loss (last loop only) is not weighted.
    torch.testing.assert_close(weighted["loss_maskiou"], unweighted["loss_maskiou"])


def _eval_outputs(heads):
    """The per-loop (pair, (logits, deltas), proposals) and the inferred instances."""
    heads.eval()
    outputs = []
    run_box_head = heads._run_box_head

    def recording(features_list, props, pair):
        predictions = run_box_head(features_list, props, pair)
        outputs.append((pair, predictions, props))
        return predictions

    heads._run_box_head = recording
    props = [proposals((64, 64), [[2, 2, 30, 30], [30, 30, 60, 50], [10, 10, 20, 50]])]
    with torch.no_grad():
        instances, _ = heads(None, features(), props)
    return outputs, instances[0]


@pytest.mark.parametrize("average", ["logits", "probs"])
def test_test_scores_average_the_loops(average):
    heads = build_tiny_roi_heads(
        "MODEL.SBRCNN.TEST_SCORE_AVERAGE", average, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
        "MODEL.SBRCNN.MASKIOU.ENABLED", "False", "MODEL.ROI_HEADS.NUM_CLASSES", 2,
    )  # fmt: skip
    # Different logits per loop, so that the two averages differ.
    for pair, predictor in enumerate(heads.box_predictor):
        torch.nn.init.normal_(predictor.cls_score.weight, std=0.5, generator=None)
        torch.nn.init.normal_(predictor.cls_score.bias, std=1.0 + pair)
    outputs, instances = _eval_outputs(heads)
    assert len(outputs) == 3
    logits = torch.stack([predictions[0] for _, predictions, _ in outputs])  # (3, R, K + 1)
    if average == "logits":
        expected = F.softmax(logits.mean(dim=0), dim=-1)  # the authors'
    else:
        expected = F.softmax(logits, dim=-1).mean(dim=0)  # Detectron2's cascade
    # Every detection's score is its proposal's averaged probability of its class.
    for score, cls in zip(instances.scores, instances.pred_classes, strict=True):
        assert torch.isclose(expected[:, cls], score, atol=1e-6).any()
    assert len(instances) > 0


def test_inference_uses_the_last_loops_boxes_and_averages_mask_probabilities():
    heads = build_tiny_roi_heads(
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "MODEL.SBRCNN.MASKIOU.ENABLED", "False"
    )
    outputs, instances = _eval_outputs(heads)
    pair, predictions, props = outputs[-1]
    last_boxes = heads.box_predictor[pair].predict_boxes(predictions, props)[0]
    for box in instances.pred_boxes.tensor:
        assert torch.isclose(last_boxes, box, atol=1e-4).all(dim=1).any()
    masks = instances.pred_masks
    assert masks.shape[1:] == (1, 28, 28) and ((masks >= 0) & (masks <= 1)).all()
