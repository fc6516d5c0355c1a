"""The training/test mapper names an image it cannot read."""

import cv2
import numpy as np
import pytest
from detectron2.config import get_cfg

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
