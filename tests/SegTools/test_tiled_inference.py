"""Tiled inference: each particle once, cut particles whole, one window equals no tiling."""

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances

from segtools.data.tiling import tile_windows
from segtools.inference import TiledPredictor, detections_from_instances, window_cores


def label_image(height, width, objects):
    """An image whose pixels encode object ids (id = R + 256 G; 0 = background)."""
    labels = np.zeros((height, width), dtype=np.int64)
    for object_id, (x0, y0, x1, y1) in enumerate(objects, start=1):
        labels[y0:y1, x0:x1] = object_id
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = labels % 256
    image[..., 1] = labels // 256
    return image, labels


def oracle_predictor(crop):
    """A perfect 'model': one instance per object id visible in the crop."""
    labels = crop[..., 0].astype(np.int64) + 256 * crop[..., 1].astype(np.int64)
    ids = [i for i in np.unique(labels) if i > 0]
    masks = torch.as_tensor(
        np.array([labels == i for i in ids], dtype=bool).reshape(-1, *labels.shape)
    )
    boxes = []
    for mask in masks.numpy():
        rows, columns = np.nonzero(mask)
        boxes.append([columns.min(), rows.min(), columns.max() + 1, rows.max() + 1])
    instances = Instances(
        labels.shape,
        pred_masks=masks,
        pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)),
        scores=torch.tensor([0.5 + i / 1000 for i in ids], dtype=torch.float32),
        pred_classes=torch.zeros(len(ids), dtype=torch.long),
    )
    return {"instances": instances}


def full_masks(detections, height, width):
    return sorted((d.full_mask(height, width) for d in detections), key=lambda m: m.tobytes())


def test_window_cores_partition_the_image():
    windows = tile_windows(200, 130, 64, 16)
    cores = window_cores(windows)
    ys, xs = np.mgrid[0:130, 0:200] + 0.5
    owners = np.zeros((130, 200), dtype=int)
    for x_low, y_low, x_high, y_high in cores:
        owners += (xs >= x_low) & (xs < x_high) & (ys >= y_low) & (ys < y_high)
    assert (owners == 1).all()
    # Each core lies inside its window, at least half the overlap away from inner edges.
    for (x0, _, x1, _), (cx0, _, cx1, _) in zip(windows, cores, strict=True):
        assert cx0 == -np.inf or cx0 >= x0 + 8
        assert cx1 == np.inf or cx1 <= x1 - 8


def test_particle_cut_by_a_window_border_is_reported_once_and_whole():
    # Windows at x = 0-64 and 48-112 (tile 64, overlap 16): the particle spans the first border.
    objects = [(56, 20, 68, 30), (5, 5, 20, 20), (90, 40, 110, 60)]
    image, labels = label_image(70, 112, objects)
    detections = TiledPredictor(oracle_predictor, tile=64, overlap=16)(image)
    assert len(detections) == 3
    expected = sorted((labels == i for i in (1, 2, 3)), key=lambda m: m.tobytes())
    for got, want in zip(full_masks(detections, 70, 112), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_dense_scene_counts_each_particle_once():
    rng = np.random.default_rng(0)
    objects = []
    for y in range(2, 290, 19):
        for x in range(2, 390, 19):
            w, h = rng.integers(6, 17, size=2)
            objects.append((x, y, x + int(w), y + int(h)))
    image, labels = label_image(300, 400, objects)
    detections = TiledPredictor(oracle_predictor, tile=96, overlap=32)(image)
    assert len(detections) == len(objects)
    got = {tuple(np.flatnonzero(d.full_mask(300, 400))[:1]) for d in detections}
    assert len(got) == len(objects)  # all different particles
    for detection in detections:
        object_id = labels[detection.mask_origin[1], detection.mask_origin[0]]
        np.testing.assert_array_equal(detection.full_mask(300, 400), labels == object_id)


def test_particle_larger_than_the_overlap_is_still_counted_once():
    # 60 px wide with a 16 px overlap: cut in every window that sees it.
    image, _ = label_image(64, 160, [(30, 10, 90, 50)])
    detections = TiledPredictor(oracle_predictor, tile=64, overlap=16)(image)
    assert len(detections) == 1


def test_image_that_fits_one_window_equals_untiled_inference():
    image, _ = label_image(60, 80, [(5, 5, 30, 30), (20, 20, 50, 40), (60, 2, 78, 58)])
    tiled = TiledPredictor(oracle_predictor, tile=96, overlap=16)(image)
    untiled = detections_from_instances(oracle_predictor(image)["instances"])
    assert len(tiled) == len(untiled) == 3
    for a, b in zip(
        sorted(tiled, key=lambda d: d.score), sorted(untiled, key=lambda d: d.score), strict=True
    ):
        assert a.score == b.score and a.box == b.box and a.mask_origin == b.mask_origin
        np.testing.assert_array_equal(a.mask, b.mask)


def test_overlapping_particles_in_one_window_are_not_merged():
    # Two instances of one window overlapping heavily stay two: only views from different
    # windows are merged.
    def twin_predictor(crop):
        mask = torch.zeros((2, *crop.shape[:2]), dtype=torch.bool)
        mask[0, 5:25, 5:25] = True
        mask[1, 8:25, 8:25] = True
        return {
            "instances": Instances(
                crop.shape[:2],
                pred_masks=mask,
                pred_boxes=Boxes(torch.tensor([[5.0, 5, 25, 25], [8, 8, 25, 25]])),
                scores=torch.tensor([0.9, 0.8]),
                pred_classes=torch.zeros(2, dtype=torch.long),
            )
        }

    assert (
        len(TiledPredictor(twin_predictor, tile=64, overlap=16)(np.zeros((40, 40, 3), np.uint8)))
        == 2
    )


def test_invalid_settings_are_named():
    with pytest.raises(ValueError, match="overlap=64"):
        TiledPredictor(oracle_predictor, tile=64, overlap=64)
    with pytest.raises(ValueError, match="merge_ios"):
        TiledPredictor(oracle_predictor, tile=64, overlap=16, merge_ios=0)
