"""
Pictures drawn from box-sized masks equal Detectron2's own drawing of full-frame masks; dataset
grids show each image above Detectron2's drawing of its annotations.
"""

import gc
from functools import partial

import cv2
import numpy as np
import pytest
from detectron2.data import Metadata
from detectron2.structures import BoxMode
from detectron2.utils.visualizer import ColorMode, GenericMask, Visualizer

from segtools.data.coco_format import encode_mask
from segtools.inference import draw_detections
from segtools.inference.detections import Detection
from segtools.inference.visualize import _default_font_size, draw_dataset_grid

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


def _straddling_detections():
    """Particles across the seams of 16-row strips of the (HEIGHT, WIDTH) image, and thin ones."""
    rng = np.random.default_rng(1)
    detections = []
    for k in range(12):
        height, width = rng.integers(3, 25, 2)
        disc = np.hypot(*np.mgrid[-1 : 1 : height * 1j, -1 : 1 : width * 1j]) <= 1
        x0, y0 = int(rng.integers(0, WIDTH - width)), int(rng.integers(0, HEIGHT - height))
        detections.append(_detection(0.5 + k / 30, x0, y0, disc))
    detections.append(_detection(0.9, 40, 10, np.ones((9, 2), dtype=bool)))  # two pixels wide
    detections.append(_detection(0.9, 50, 12, np.ones((9, 1), dtype=bool)))  # one pixel wide
    detections.append(_detection(0.9, 20, 30, np.ones((1, 1), dtype=bool)))  # too small to outline
    return detections


def _drawn(image, detections, strip_rows, monkeypatch):
    monkeypatch.setattr("segtools.inference.visualize._STRIP_PIXELS", image.shape[1] * strip_rows)
    np.random.seed(0)  # the Visualizer picks random colours
    return draw_detections(image, detections, Metadata(thing_classes=["ore"]))


@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("strip_rows", [16, 7, 1])
def test_strips_join_into_the_whole_frame_drawing(labelled, strip_rows, monkeypatch):
    if not labelled:
        monkeypatch.setattr("segtools.inference.visualize._MAX_LABELLED", 0)
    image = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    detections = _straddling_detections()
    whole = _drawn(image, detections, HEIGHT, monkeypatch)
    strips = _drawn(image, detections, strip_rows, monkeypatch)

    # Equal but for a few antialiased outline pixels, by one level: matplotlib's Agg strokes and
    # rasterises in floating point, and a strip's coordinates (mapped onto the whole canvas's to
    # 1e-14 pixel) carry other rounding than the whole frame's, which tips an edge pixel's coverage
    # now and then. Detectron2's own whole-frame drawing of a particle moved by whole pixels
    # differs from the unmoved one in the same way, at more pixels.
    difference = np.abs(whole.astype(int) - strips)
    assert difference.max() <= 1
    assert np.count_nonzero(difference.max(axis=2)) <= 0.01 * HEIGHT * WIDTH
    assert not np.array_equal(whole, image)


def test_particles_keep_their_colour_across_seams(monkeypatch):
    # One particle across every seam of 10-row strips, on a grey image: its fill is one colour.
    image = np.full((HEIGHT, WIDTH, 3), 128, dtype=np.uint8)
    detections = [
        _detection(0.9, 10, 5, np.ones((50, 20), dtype=bool)),
        _detection(0.8, 45, 2, np.ones((55, 20), dtype=bool)),
    ]
    monkeypatch.setattr("segtools.inference.visualize._MAX_LABELLED", 0)
    whole = _drawn(image, detections, HEIGHT, monkeypatch)
    strips = _drawn(image, detections, 10, monkeypatch)
    for inside in (strips[8:53, 13:27], strips[5:55, 48:62]):
        assert len(np.unique(inside.reshape(-1, 3), axis=0)) == 1
    np.testing.assert_array_equal(strips[8:53, 13:27], whole[8:53, 13:27])
    np.testing.assert_array_equal(strips[5:55, 48:62], whole[5:55, 48:62])
    assert not np.array_equal(strips[30, 20], strips[30, 55])


def test_strips_draw_with_the_whole_pictures_line_width_and_font_size(monkeypatch):
    # The Visualizer widens outlines and labels with the image: a strip must not draw as a small
    # image would (outlines a point wide instead of two on a 3000 x 2800 picture).
    height, width = 3000, 2800
    image = np.zeros((height, width, 3), dtype=np.uint8)
    detections = [_detection(0.9, 100, 390, np.ones((30, 40), dtype=bool))]
    drawn = []

    def draw_polygon(self, segment, color, edge_color=None, alpha=0.5):
        output = original(self, segment, color, edge_color, alpha)
        drawn.append((self._default_font_size, output.ax.patches[-1].get_linewidth()))
        return output

    original = Visualizer.draw_polygon
    monkeypatch.setattr(Visualizer, "draw_polygon", draw_polygon)
    _drawn(image, detections, 200, monkeypatch)
    whole = Visualizer(image[:, :, ::-1])
    assert whole._default_font_size == _default_font_size(height, width) == 32
    assert drawn == [(32, 2), (32, 2)]  # in the strips of rows 200-399 and 400-599


@pytest.mark.parametrize("size", [(60, 80), (1000, 10), (1000, 1500), (2999, 3001)])
def test_default_font_size_is_the_visualizers(size):
    visualizer = Visualizer(np.zeros((*size, 3), dtype=np.uint8))
    assert visualizer._default_font_size == _default_font_size(*size)


def _peak_growth_mb(draw) -> float:
    """Peak resident memory `draw()` adds to the process, in MB (Linux)."""

    def status(field):
        with open("/proc/self/status") as f:
            return int(f.read().split(f"{field}:")[1].split()[0]) / 1024

    gc.collect()
    before = status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # peak resident memory starts again from the current
    except OSError:
        pytest.skip("the peak resident memory cannot be reset here")
    draw()
    return status("VmHWM") - before


def test_memory_grows_with_the_strip_not_the_frame(monkeypatch):
    # matplotlib draws a whole frame through ~100 bytes per pixel: 8 Mpx would add 800 MB.
    monkeypatch.setattr("segtools.inference.visualize._MAX_LABELLED", 0)
    disc = np.hypot(*np.mgrid[-20:21, -20:21]) <= 20
    growth = {}
    for height in (1000, 4000):
        image = np.full((height, 2000, 3), 100, dtype=np.uint8)
        detections = [
            _detection(0.9, x, y, disc) for y in range(0, height - 41, 97) for x in (50, 900)
        ]
        picture_mb = image.nbytes / 2**20
        growth[height] = _peak_growth_mb(partial(_drawn, image, detections, 100, monkeypatch))
        growth[height] -= picture_mb
    assert growth[4000] < growth[1000] + 40, growth
    assert growth[4000] < 150, growth
