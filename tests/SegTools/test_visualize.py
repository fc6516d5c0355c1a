"""
Pictures drawn from box-sized masks equal Detectron2's own drawing of full-frame masks; dataset
grids show each image above Detectron2's drawing of its annotations.
"""

import cv2
import numpy as np
import pytest
from detectron2.data import Metadata
from detectron2.structures import BoxMode
from detectron2.utils.visualizer import ColorMode, GenericMask, Visualizer

from segtools.data.coco_format import encode_mask
from segtools.inference import draw_detections
from segtools.inference.detections import Detection
from segtools.inference.visualize import draw_dataset_grid

HEIGHT, WIDTH = 60, 80


def _detection(score, x0, y0, mask):
    height, width = mask.shape
    return Detection(score, 0, (x0, y0, x0 + width, y0 + height), (x0, y0), mask)


def _detections():
    ring = np.ones((20, 24), dtype=bool)
    ring[6:14, 8:16] = False  # a particle with a hole
    disc = np.hypot(*np.mgrid[-7:8, -7:8]) <= 7
    square = np.ones((6, 6), dtype=bool)
    return [
        _detection(0.9, 5, 4, ring),
        _detection(0.8, 60, 40, disc),
        _detection(0.7, 74, 54, square),  # at the image corner
        # Two pixels wide: Detectron2's GenericMask takes such an array for polygons.
        _detection(0.65, 40, 10, np.ones((7, 2), dtype=bool)),
        _detection(0.6, 30, 30, np.ones((1, 1), dtype=bool)),  # too small to outline
    ]


@pytest.mark.parametrize("labelled", [True, False])
def test_same_picture_as_detectron2_from_full_masks(labelled, monkeypatch):
    if not labelled:
        monkeypatch.setattr("segtools.inference.visualize._MAX_LABELLED", 0)
    image = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    detections = _detections()
    metadata = Metadata(thing_classes=["ore"])

    np.random.seed(0)  # the Visualizer picks random colours
    ours = draw_detections(image, detections, metadata)

    outlined = detections[:4]
    np.random.seed(0)
    reference = Visualizer(image[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
    reference = reference.overlay_instances(
        masks=[d.full_mask(HEIGHT, WIDTH) for d in outlined],
        labels=[f"ore {d.score:.0%}" for d in outlined] if labelled else None,
        alpha=0.4,
    )
    assert ours.shape == image.shape
    np.testing.assert_array_equal(ours, reference.get_image()[:, :, ::-1])
    assert not np.array_equal(ours, image)


def test_no_detection_gives_the_image():
    image = np.full((HEIGHT, WIDTH, 3), 90, dtype=np.uint8)
    np.testing.assert_array_equal(draw_detections(image, [], Metadata()), image)


def test_unlabelled_drawing_builds_no_full_frame_mask(monkeypatch):
    # A full-frame mask per particle is 12 MB on a 4000 x 3000 photo: dense belts ran out of memory.
    def full_frame_mask(*args):
        raise AssertionError("a full-frame mask was built")

    monkeypatch.setattr(GenericMask, "polygons_to_mask", full_frame_mask)
    monkeypatch.setattr("segtools.inference.visualize._MAX_LABELLED", 0)
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    assert draw_detections(image, _detections(), Metadata()).shape == image.shape


def test_dataset_grid_shows_each_image_above_its_drawn_annotations(tmp_path):
    image = np.random.default_rng(1).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[10:30, 20:50] = True
    annotation = {"bbox": [20, 10, 30, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
    record = {
        "file_name": str(tmp_path / "a.png"),
        "height": HEIGHT,
        "width": WIDTH,
        "annotations": [{**annotation, "segmentation": encode_mask(mask)}],
    }
    metadata = Metadata(thing_classes=["ore"])

    np.random.seed(0)  # the Visualizer picks random colours
    grid = draw_dataset_grid([record, record], metadata)

    np.random.seed(0)
    reference = Visualizer(image[:, :, ::-1], metadata, 1.0, ColorMode.IMAGE)
    reference = reference.draw_dataset_dict(record).get_image()[:, :, ::-1]
    assert grid.shape == (2 * HEIGHT, 2 * WIDTH, 3)
    np.testing.assert_array_equal(grid[:HEIGHT], np.hstack([image, image]))
    np.testing.assert_array_equal(grid[HEIGHT:, :WIDTH], reference)
    assert not np.array_equal(reference, image)
