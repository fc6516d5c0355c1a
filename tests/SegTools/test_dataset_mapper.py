"""The training/test mapper names an image it cannot read and keeps visible fractions."""

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import BoxMode

from segtools.data import CheckedDatasetMapper, ImageReadError


def mapper():
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST = 32
    return CheckedDatasetMapper(cfg, is_train=False)


def test_readable_image_is_mapped(tmp_path):
    path = str(tmp_path / "ok.png")
    cv2.imwrite(path, np.zeros((20, 30, 3), np.uint8))
    mapped = mapper()({"file_name": path, "height": 20, "width": 30, "image_id": 1})
    assert mapped["image"].shape[0] == 3


@pytest.mark.parametrize("kind", ["missing", "truncated", "not_an_image"])
def test_unreadable_image_is_named(tmp_path, kind):
    path = tmp_path / f"{kind}.jpg"
    if kind == "truncated":
        encoded = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))[1].tobytes()
        path.write_bytes(encoded[: len(encoded) // 2])
    elif kind == "not_an_image":
        path.write_text("hello")
    with pytest.raises(ImageReadError, match=f"Cannot read image .*{kind}.jpg"):
        mapper()({"file_name": str(path), "height": 64, "width": 64, "image_id": 1})


def training_mapper():
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (40,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = "bitmask"
    return CheckedDatasetMapper(cfg, is_train=True)


def box_annotation(x, y, size, **extra):
    polygon = [x, y, x + size, y, x + size, y + size, x, y + size]
    box = [x, y, size, size]
    return {"bbox": box, "bbox_mode": BoxMode.XYWH_ABS, "segmentation": [polygon],
            "category_id": 0, **extra}  # fmt: skip


def test_visible_fractions_follow_their_instances(tmp_path):
    path = str(tmp_path / "ok.png")
    cv2.imwrite(path, np.zeros((40, 40, 3), np.uint8))
    annotations = [
        box_annotation(2, 2, 10, visible_fraction=0.25),
        box_annotation(5, 5, 0, visible_fraction=0.5),  # empty: dropped with its fraction
        box_annotation(20, 20, 8, iscrowd=1, visible_fraction=0.75),  # crowd: dropped
        box_annotation(25, 5, 12),  # no fraction: NaN
    ]
    record = {"file_name": path, "height": 40, "width": 40, "image_id": 1}
    instances = training_mapper()({**record, "annotations": annotations})["instances"]
    assert len(instances) == 2
    assert torch.allclose(instances.gt_boxes.tensor[:, 0], torch.tensor([2.0, 25.0]))
    assert instances.gt_visibility[0] == 0.25 and instances.gt_visibility[1].isnan()
    without = training_mapper()({**record, "annotations": [box_annotation(2, 2, 10)]})
    assert not without["instances"].has("gt_visibility")
