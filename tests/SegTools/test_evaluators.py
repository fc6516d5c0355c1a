"""Evaluators end to end: ground truth submitted as predictions scores AP (and Boundary AP) 100."""

import glob
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import BitMasks, Boxes, Instances

import segtools  # noqa: F401  (registers the datasets)
from segtools.data.coco_format import decode_segmentation
from segtools.data.synthetic_ore import generate_synthetic_ore
from segtools.evaluation import (
    CityscapesSubsetInstanceEvaluator,
    COCOBoundaryEvaluator,
    LVISEvaluatorNumpyCompat,
    build_evaluator,
)
from segtools.projects import add_segtools_config


@pytest.fixture(scope="module")
def root(builtin_datasets_root):
    return builtin_datasets_root


def predictions_from_masks(height, width, masks, classes):
    """Instances scoring 1 for each (H, W) boolean mask."""
    masks = torch.as_tensor(np.array(masks, dtype=bool).reshape(-1, height, width))
    return Instances(
        (height, width),
        pred_masks=masks,
        pred_boxes=BitMasks(masks).get_bounding_boxes() if len(masks) else Boxes(torch.zeros(0, 4)),
        scores=torch.ones(len(masks)),
        pred_classes=torch.as_tensor(classes, dtype=torch.long),
    )


def evaluate_ground_truth(evaluator, dataset_name):
    """Feed every image's ground truth to `evaluator` as predictions; return its results."""
    evaluator.reset()
    for record in DatasetCatalog.get(dataset_name):
        height, width = record["height"], record["width"]
        masks = [
            decode_segmentation(a["segmentation"], height, width) for a in record["annotations"]
        ]
        classes = [a["category_id"] for a in record["annotations"]]
        inputs = [{"image_id": record["image_id"], "file_name": record["file_name"]}]
        evaluator.process(
            inputs, [{"instances": predictions_from_masks(height, width, masks, classes)}]
        )
    return evaluator.evaluate()


def cfg_with_max_dets(max_dets=100):
    cfg = get_cfg()
    cfg.TEST.DETECTIONS_PER_IMAGE = max_dets
    return cfg


def test_coco_evaluator_scores_ground_truth_100(root, tmp_path):
    evaluator = build_evaluator(cfg_with_max_dets(), "coco_2017_val", str(tmp_path))
    results = evaluate_ground_truth(evaluator, "coco_2017_val")
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)


def test_lvis_evaluator_scores_ground_truth_100_with_todays_numpy(root, tmp_path):
    assert not hasattr(np, "float"), "NumPy >= 1.24 has no np.float; this test needs that"
    evaluator = build_evaluator(cfg_with_max_dets(300), "lvis_v1_val", str(tmp_path))
    assert isinstance(evaluator, LVISEvaluatorNumpyCompat)
    results = evaluate_ground_truth(evaluator, "lvis_v1_val")
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert not hasattr(np, "float"), "the alias must not outlive the evaluation"


def cityscapes_ground_truth_outputs(dataset_name):
    """Per image, predictions equal to the instances of its *_gtFine_instanceIds.png."""
    metadata = MetadataCatalog.get(dataset_name)
    from cityscapesscripts.helpers.labels import name2label

    class_of_label = {name2label[name].id: i for i, name in enumerate(metadata.thing_classes)}
    for image_file in sorted(glob.glob(os.path.join(metadata.image_dir, "*", "*_leftImg8bit.png"))):
        city = os.path.basename(os.path.dirname(image_file))
        base = os.path.basename(image_file).replace("leftImg8bit.png", "gtFine_instanceIds.png")
        instance_ids = cv2.imread(os.path.join(metadata.gt_dir, city, base), cv2.IMREAD_UNCHANGED)
        ids = [i for i in np.unique(instance_ids) if i >= 1000 and i // 1000 in class_of_label]
        masks = [instance_ids == i for i in ids]
        classes = [class_of_label[i // 1000] for i in ids]
        height, width = instance_ids.shape
        inputs = {"file_name": image_file, "image_id": os.path.basename(image_file)}
        yield inputs, predictions_from_masks(height, width, masks, classes)


@pytest.mark.parametrize(
    "dataset_name", ["cityscapes_fine_instance_seg_val", "cityscapes_street5_val"]
)
def test_cityscapes_evaluators_score_ground_truth_100(root, tmp_path, monkeypatch, dataset_name):
    monkeypatch.chdir(tmp_path)
    evaluator = build_evaluator(cfg_with_max_dets(), dataset_name, str(tmp_path / "inference"))
    evaluator.reset()
    for inputs, instances in cityscapes_ground_truth_outputs(dataset_name):
        evaluator.process([inputs], [{"instances": instances}])
    results = evaluator.evaluate()
    # The Cityscapes API's matches.json goes to the evaluator's temporary folder, not here.
    assert not os.path.exists(tmp_path / "matches.json")
    if dataset_name == "cityscapes_fine_instance_seg_val":
        # 3 of the 8 classes have ground truth and all are found; the others have neither.
        assert results["segm"]["AP"] == pytest.approx(100.0)
    else:
        cityscapes = results["segm_cityscapes"]
        assert cityscapes["AP"] == pytest.approx(100.0) and cityscapes["AP50"] == pytest.approx(
            100.0
        )
        assert cityscapes["AP-car"] == pytest.approx(100.0)
        assert np.isnan(cityscapes["AP-truck"])  # no truck in ground truth or predictions
        assert results["segm"]["AP"] > 90  # COCO-style AP on polygons drawn from the same shapes


def test_street_subset_averages_only_its_classes(root, tmp_path, monkeypatch):
    """Missing the bicycle (not a street class) must not lower the 5-class score."""
    monkeypatch.chdir(tmp_path)
    evaluator = CityscapesSubsetInstanceEvaluator("cityscapes_street5_val")
    evaluator.reset()
    for inputs, instances in cityscapes_ground_truth_outputs("cityscapes_street5_val"):
        evaluator.process([inputs], [{"instances": instances[instances.pred_classes != 0]}])
    results = evaluator.evaluate()["segm_cityscapes"]
    assert results["AP-car"] == 0.0  # cars withheld
    assert results["AP-person"] == pytest.approx(100.0)
    assert results["AP"] == pytest.approx(100.0 * 2 / 3)  # car 0, person 100, rider 100


def test_unknown_evaluator_type_is_named():
    MetadataCatalog.get("test_unknown_evaluator").set(evaluator_type="sem_seg")
    with pytest.raises(NotImplementedError, match="test_unknown_evaluator.*sem_seg"):
        build_evaluator(cfg_with_max_dets(), "test_unknown_evaluator", "/tmp")


def cfg_with_boundary_ap(max_dets=100):
    cfg = cfg_with_max_dets(max_dets)
    add_segtools_config(cfg)
    cfg.SEGTOOLS.EVAL.BOUNDARY_AP = True
    return cfg


def test_boundary_ap_scores_ground_truth_100(root, tmp_path):
    # COCO's category ids (1, 3, 8 here) are not the contiguous ones of the predictions.
    evaluator = build_evaluator(cfg_with_boundary_ap(), "coco_2017_val", str(tmp_path))
    assert isinstance(evaluator, COCOBoundaryEvaluator)
    results = evaluate_ground_truth(evaluator, "coco_2017_val")
    assert results["boundary"]["AP"] == pytest.approx(100.0)
    assert results["boundary"]["AP75"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["bbox"]["AP"] == pytest.approx(100.0)


@pytest.fixture(scope="module")
def synthetic_ore(tmp_path_factory):
    """Four 128 x 128 synthetic ore images (RLE masks), registered as a COCO-style dataset."""
    name = "test_boundary_ap_synthetic_ore"
    folder = str(tmp_path_factory.mktemp("ore"))
    json_file = generate_synthetic_ore(folder, 4, seed=0, size=(128, 128), show_progress=False)
    register_coco_instances(name, {}, json_file, os.path.join(folder, "images"))
    return name


def test_boundary_ap_scores_ground_truth_100_on_synthetic_ore(synthetic_ore, tmp_path):
    evaluator = build_evaluator(cfg_with_boundary_ap(300), synthetic_ore, str(tmp_path))
    results = evaluate_ground_truth(evaluator, synthetic_ore)
    assert results["boundary"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)


def test_boundary_ap_is_stricter_than_mask_ap_on_coarse_masks(synthetic_ore, tmp_path):
    """Masks grown by one pixel keep much of their mask IoU but move every boundary pixel."""
    evaluator = build_evaluator(cfg_with_boundary_ap(300), synthetic_ore, str(tmp_path))
    evaluator.reset()
    kernel = np.ones((3, 3), np.uint8)
    for record in DatasetCatalog.get(synthetic_ore):
        height, width = record["height"], record["width"]
        masks = [
            cv2.dilate(
                decode_segmentation(a["segmentation"], height, width).astype(np.uint8), kernel
            )
            for a in record["annotations"]
        ]
        inputs = [{"image_id": record["image_id"], "file_name": record["file_name"]}]
        predictions = predictions_from_masks(height, width, masks, [0] * len(masks))
        evaluator.process(inputs, [{"instances": predictions}])
    results = evaluator.evaluate()
    assert results["boundary"]["AP"] < results["segm"]["AP"] - 5, results


def test_boundary_ap_is_refused_for_lvis_by_name(root, tmp_path):
    with pytest.raises(ValueError, match=r"SEGTOOLS.EVAL.BOUNDARY_AP = True.*'lvis'"):
        build_evaluator(cfg_with_boundary_ap(), "lvis_v1_val", str(tmp_path))
