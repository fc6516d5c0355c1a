"""
Tiled inference: each particle once and whole, no pixel in two particles when windows disagree,
a particle missed by one window kept, one window equals no tiling; the caps on views per window
and per photo keep the highest-scored views, and bound the memory of a dense photo.

Scenes are label images: pixel (R, G) encodes the particle id R + 256 G (0 = background), so a
perfect "model" sees exactly the visible part of every particle in each window. Particles are
discs, rings, C, U, comb and cross shapes and 1-pixel diagonal lines (8-connected only), from one
pixel to twice the tile across, centred anywhere, near window and core corners and image borders.
"""

import logging
import tracemalloc

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from scipy import ndimage

from segtools.data.tiling import MIN_TILE, tile_windows
from segtools.inference import TiledPredictor, detections_from_instances, window_cores
from segtools.inference.tiled import DroppedViews

SHAPES = ("disc", "ring", "c_shape", "u_shape", "comb", "cross", "diagonal_line")
EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


def _shape(kind, dx, dy, radius):
    """Boolean mask of `kind` from the pixel centres' offsets (dx, dy) to its centre."""
    disc = dx**2 + dy**2 <= radius**2
    bar = max(1.0, radius / 4)  # half width of slots and arms
    if kind == "disc":
        return disc
    if kind == "ring":
        return disc & (dx**2 + dy**2 > (radius / 2) ** 2)
    if kind == "c_shape":
        return disc & ~((dx > 0) & (np.abs(dy) < bar))
    if kind == "u_shape":
        return disc & ~((dy > 0) & (np.abs(dx) < bar))
    if kind == "comb":  # a bar on top, teeth 2 px wide every 4 px below it
        square = (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
        return square & ((dy < -radius / 2) | (np.floor(dx) % 4 < 2))
    if kind == "cross":
        arm_x = (np.abs(dx) <= radius) & (np.abs(dy) <= bar)
        return arm_x | ((np.abs(dy) <= radius) & (np.abs(dx) <= bar))
    if kind == "diagonal_line":
        return (np.round(dx) == np.round(dy)) & (np.abs(dx) <= radius)
    raise ValueError(kind)


def largest_part(mask):
    """The largest 8-connected part of a (H, W) mask (empty if the mask is)."""
    parts, count = ndimage.label(mask, structure=EIGHT_NEIGHBOURS)
    if count == 0:
        return mask
    sizes = np.bincount(parts.ravel())[1:]
    return parts == 1 + int(np.argmax(sizes))


def shape_mask(kind, size, centre, height, width):
    """
    (height, width) mask of one particle `size` pixels across centred at `centre` (x, y), in
    pixels: the largest 8-connected part of the shape inside the image, at least one pixel.
    """
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    mask = largest_part(_shape(kind, xs - centre[0], ys - centre[1], size / 2))
    if not mask.any():
        x = int(np.clip(np.floor(centre[0]), 0, width - 1))
        y = int(np.clip(np.floor(centre[1]), 0, height - 1))
        mask[y, x] = True
    return mask


def adversarial_centre(rng, height, width, tile, overlap):
    """
    (x, y): anywhere, or within 3 px of a crossing of window edges and core cuts (window and core
    corners among them), or of an image border.
    """
    windows = tile_windows(width, height, tile, overlap)
    where = rng.integers(3)
    if where == 0:
        return rng.uniform(0, width), rng.uniform(0, height)
    if where == 1:
        lines = np.concatenate([np.array(windows, dtype=float), window_cores(windows)], axis=1)
        xs, ys = lines[:, 0::2].ravel(), lines[:, 1::2].ravel()
        x, y = rng.choice(xs[np.isfinite(xs)]), rng.choice(ys[np.isfinite(ys)])
    elif rng.integers(2):
        x, y = rng.choice([0, width]), rng.uniform(0, height)
    else:
        x, y = rng.uniform(0, width), rng.choice([0, height])
    return x + rng.uniform(-3, 3), y + rng.uniform(-3, 3)


def grid_setting(rng):
    """(height, width, tile, overlap): tile 32-48, overlap >= 1, 2 to 5 windows along each axis."""
    tile = int(rng.integers(MIN_TILE, 49))
    overlap = int(rng.integers(1, tile))
    stride = tile - overlap
    height = tile + int(rng.integers(1, 4 * stride + 1))
    width = tile + int(rng.integers(1, 4 * stride + 1))
    return height, width, tile, overlap


def single_particle_case(seed):
    """(labels (H, W) int64, tile, overlap): one particle of 1 to 2 * tile pixels across."""
    rng = np.random.default_rng(seed)
    height, width, tile, overlap = grid_setting(rng)
    kind = SHAPES[rng.integers(len(SHAPES))]
    size = rng.uniform(1, 2 * tile)
    centre = adversarial_centre(rng, height, width, tile, overlap)
    return shape_mask(kind, size, centre, height, width).astype(np.int64), tile, overlap


def touching_scene(rng, height, width, tile, overlap, count):
    """(H, W) int64 labels of up to `count` particles, each cut out of the free pixels."""
    labels = np.zeros((height, width), dtype=np.int64)
    for _ in range(count):
        kind = SHAPES[rng.integers(len(SHAPES))]
        size = rng.uniform(1, 2 * tile)
        centre = adversarial_centre(rng, height, width, tile, overlap)
        mask = largest_part(shape_mask(kind, size, centre, height, width) & (labels == 0))
        labels[mask] = labels.max() + 1
    return labels


def dense_scene_case(seed):
    """(labels, tile, overlap): up to 12 particles that touch each other."""
    rng = np.random.default_rng(seed)
    height, width, tile, overlap = grid_setting(rng)
    return touching_scene(rng, height, width, tile, overlap, count=12), tile, overlap


def encode(labels):
    """The (H, W, 3) uint8 image of a label image (id = R + 256 G)."""
    image = np.zeros((*labels.shape, 3), dtype=np.uint8)
    image[..., 0] = labels % 256
    image[..., 1] = labels // 256
    return image


def decode(crop):
    return crop[..., 0].astype(np.int64) + 256 * crop[..., 1].astype(np.int64)


def instances_of(masks, scores, shape, boxes=None):
    """{"instances": Instances} of (h, w) = `shape` masks, boxes defaulting to their tight boxes."""
    if boxes is None:
        boxes = []
        for mask in masks:
            rows, columns = np.nonzero(mask)
            boxes.append([columns.min(), rows.min(), columns.max() + 1, rows.max() + 1])
    instances = Instances(
        shape,
        pred_masks=torch.as_tensor(np.array(masks, dtype=bool).reshape(-1, *shape)),
        pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)),
        scores=torch.tensor(scores, dtype=torch.float32),
        pred_classes=torch.zeros(len(masks), dtype=torch.long),
    )
    return {"instances": instances}


def particle_score(particle_id):
    return 0.5 + (particle_id % 1000) / 2000


def oracle_predictor(crop):
    """A perfect model: one instance per particle id visible in the crop."""
    labels = decode(crop)
    ids = [int(i) for i in np.unique(labels) if i > 0]
    return instances_of([labels == i for i in ids], [particle_score(i) for i in ids], labels.shape)


class WindowRecorder:
    """A predictor that records, per call (window, in row-major order), the masks it returned."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.window_masks = []

    def __call__(self, crop):
        labels = decode(crop)
        masks = self.masks(labels)
        self.window_masks.append(masks)
        scores = [particle_score(int(labels[m].max())) for m in masks]
        return instances_of(masks, scores, labels.shape)


class BlobPredictor(WindowRecorder):
    """
    Each 8-connected group of particles in a window is seen, at random, as one blob or as its
    particles' parts in the group (a particle whose visible part is split is seen as pieces).
    """

    def masks(self, labels):
        groups, count = ndimage.label(labels > 0, structure=EIGHT_NEIGHBOURS)
        masks = []
        for group in range(1, count + 1):
            blob = groups == group
            members = np.unique(labels[blob])
            if len(members) > 1 and self.rng.random() < 0.5:
                masks.append(blob)
            else:
                masks.extend(blob & (labels == i) for i in members)
        return masks


class MissingPredictor(WindowRecorder):
    """Perfect, but each window misses each particle it sees with probability 1/2."""

    def masks(self, labels):
        ids = [i for i in np.unique(labels) if i > 0]
        return [labels == i for i in ids if self.rng.random() < 0.5]


def assert_exact(detections, labels):
    """One detection per particle id of `labels`, its mask equal to that particle's."""
    height, width = labels.shape
    ids = []
    for detection in detections:
        mask = detection.full_mask(height, width)
        found = np.unique(labels[mask])
        assert len(found) == 1 and found[0] > 0, f"mask covers particles {found.tolist()}"
        np.testing.assert_array_equal(mask, labels == found[0])
        ids.append(int(found[0]))
    assert sorted(ids) == list(range(1, labels.max() + 1))


def coverage(detections, height, width):
    """(H, W) count of the detections covering each pixel."""
    covered = np.zeros((height, width), dtype=np.int64)
    for detection in detections:
        x0, y0, x1, y1 = detection.mask_box
        covered[y0:y1, x0:x1] += detection.mask
    return covered


def pixel_cores(windows):
    """Per window, (x0, y0, x1, y1): the pixels whose centres lie in its core (end-exclusive)."""
    return [
        tuple(int(np.floor(np.clip(c, 0, 10**6))) for c in core) for core in window_cores(windows)
    ]


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
    # Windows at x = 0-64 and 48-112 (tile 64, overlap 16): the first particle spans the first
    # border.
    labels = np.zeros((70, 112), dtype=np.int64)
    for particle_id, (x0, y0, x1, y1) in enumerate(
        [(56, 20, 68, 30), (5, 5, 20, 20), (90, 40, 110, 60)], start=1
    ):
        labels[y0:y1, x0:x1] = particle_id
    assert_exact(TiledPredictor(oracle_predictor, tile=64, overlap=16)(encode(labels)), labels)


def test_disc_larger_than_a_window_is_one_particle():
    # The review's case: 86 px across on a 4 x 4 grid of 64 px windows overlapping by 16.
    ys, xs = np.mgrid[0:176, 0:176] + 0.5
    labels = ((xs - 88) ** 2 + (ys - 88) ** 2 <= 43**2).astype(np.int64)
    assert_exact(TiledPredictor(oracle_predictor, tile=64, overlap=16)(encode(labels)), labels)


def visibility_oracle(labels):
    """A perfect model that also estimates each particle's visible fraction in its window."""
    full_areas = np.bincount(labels.ravel())

    def predict(crop):
        output = oracle_predictor(crop)
        seen = decode(crop)
        ids = [int(i) for i in np.unique(seen) if i > 0]
        fractions = [np.count_nonzero(seen == i) / full_areas[i] for i in ids]
        output["instances"].pred_visibility = torch.tensor(fractions, dtype=torch.float32)
        return output

    return predict


def test_a_merged_particle_takes_the_visibility_of_its_most_complete_view():
    # Windows at x = 0-64 and 48-112: particle 1 is cut by the first window's border and whole
    # in the second; particle 2, wider than a window, is whole in none.
    labels = np.zeros((40, 112), dtype=np.int64)
    labels[10:20, 56:68] = 1
    labels[25:35, 2:110] = 2
    detections = TiledPredictor(visibility_oracle(labels), tile=64, overlap=16)(encode(labels))
    assert_exact(detections, labels)
    by_area = {d.area: d.visibility for d in detections}
    assert by_area[120] == 1.0
    # Each window sees 62 of particle 2's 108 columns (2-63 and 48-109).
    assert by_area[1080] == pytest.approx(62 / 108)


@pytest.mark.parametrize("seed", range(200))
def test_perfect_model_gives_each_single_particle_exactly(seed):
    labels, tile, overlap = single_particle_case(seed)
    assert_exact(TiledPredictor(oracle_predictor, tile, overlap)(encode(labels)), labels)


@pytest.mark.parametrize("seed", range(80))
def test_perfect_model_gives_each_touching_particle_exactly(seed):
    labels, tile, overlap = dense_scene_case(seed)
    assert_exact(TiledPredictor(oracle_predictor, tile, overlap)(encode(labels)), labels)


@pytest.mark.parametrize("seed", range(80))
def test_windows_that_see_touching_particles_as_one_blob_count_no_pixel_twice(seed):
    labels, tile, overlap = dense_scene_case(seed)
    height, width = labels.shape
    predictor = BlobPredictor(seed)
    detections = TiledPredictor(predictor, tile, overlap)(encode(labels))
    # Every particle pixel is in exactly one detection, none outside the particles.
    np.testing.assert_array_equal(coverage(detections, height, width), labels > 0)
    groups, group_count = ndimage.label(labels > 0, structure=EIGHT_NEIGHBOURS)
    assert len(detections) >= group_count
    windows = tile_windows(width, height, tile, overlap)
    for detection in detections:
        mask = detection.full_mask(height, width)
        assert len(np.unique(groups[mask])) == 1  # never joins particles that do not touch
        # Within each window's core, a detection is (part of) one view of that window.
        for (x0, y0, x1, y1), (wx0, wy0, *_), masks in zip(
            pixel_cores(windows), windows, predictor.window_masks, strict=True
        ):
            part = mask[y0:y1, x0:x1]
            views = [m[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0] for m in masks]
            assert sum(bool((part & view).any()) for view in views) <= 1


@pytest.mark.parametrize("seed", range(60))
def test_windows_that_miss_particles_lose_no_pixel_another_window_saw(seed):
    labels, tile, overlap = dense_scene_case(seed)
    height, width = labels.shape
    predictor = MissingPredictor(seed)
    detections = TiledPredictor(predictor, tile, overlap)(encode(labels))
    seen = np.zeros((height, width), dtype=bool)
    windows = tile_windows(width, height, tile, overlap)
    for (x0, y0, x1, y1), masks in zip(windows, predictor.window_masks, strict=True):
        for mask in masks:
            seen[y0:y1, x0:x1] |= mask
    np.testing.assert_array_equal(coverage(detections, height, width), seen)
    for detection in detections:
        assert len(np.unique(labels[detection.full_mask(height, width)])) == 1


@pytest.mark.parametrize("x0, x1", [(36, 56), (34, 46)])
def test_particle_missed_by_the_window_that_owns_it_is_kept_whole(x0, x1):
    # Windows x = 0-64 and 32-96 (cores split at x = 48); the particle lies across the cut or in
    # the first core only, but only the second window reports it.
    labels = np.zeros((40, 96), dtype=np.int64)
    labels[10:30, x0:x1] = 1

    class SecondWindowOnly:
        def __init__(self):
            self.calls = 0

        def __call__(self, crop):
            self.calls += 1
            if self.calls == 1:
                return instances_of([], [], crop.shape[:2])
            return instances_of([decode(crop) == 1], [0.9], crop.shape[:2])

    assert_exact(TiledPredictor(SecondWindowOnly(), tile=64, overlap=32)(encode(labels)), labels)


def test_pixels_a_window_missed_are_filled_for_one_particle_only():
    # Windows x = 0-64, 24-88 and 48-112 (cores split at x = 44 and 68). The middle window misses
    # the particle (x = 40-60); the first sees it exactly (score 0.7), the last (0.9) one row too
    # tall, so with merge_iou 1 the two views are not linked. Both would fill the middle core;
    # the better-scored view takes what it sees there, the other the rest.
    labels = np.zeros((40, 112), dtype=np.int64)
    labels[10:30, 40:60] = 1

    class MiddleMisses:
        def __init__(self):
            self.calls = 0

        def __call__(self, crop):
            self.calls += 1
            particle = decode(crop) == 1
            if self.calls == 2:
                return instances_of([], [], particle.shape)
            if self.calls == 3:
                particle[10:31, :12] = True  # image x = 48-60
            return instances_of([particle], [0.7 if self.calls == 1 else 0.9], particle.shape)

    detections = TiledPredictor(MiddleMisses(), 64, 40, merge_iou=1.0)(encode(labels))
    first, last = (np.zeros((40, 112), dtype=bool) for _ in range(2))
    first[10:30, 40:48] = True
    last[10:31, 48:60] = True
    assert [d.score for d in detections] == pytest.approx([0.7, 0.9])
    np.testing.assert_array_equal(detections[0].full_mask(40, 112), first)
    np.testing.assert_array_equal(detections[1].full_mask(40, 112), last)


def test_views_of_one_window_are_never_merged_with_each_other():
    # Windows x = 0-64 and 24-88 (tile 64, overlap 40; cores split at x = 44). The first window
    # sees a large particle and a small one touching it, the second sees both as one blob. With
    # merge_iou 0.25 the blob agrees with both views of the first window (IoU 650 / 910 and
    # 260 / 910), but only the better link is taken.
    labels = np.zeros((40, 88), dtype=np.int64)
    labels[5:30, 30:56] = 1
    labels[30:40, 30:56] = 2
    blob = labels > 0

    class FirstApartSecondBlob:
        def __init__(self):
            self.calls = 0

        def __call__(self, crop):
            self.calls += 1
            crop_labels = decode(crop)
            if self.calls == 1:
                masks = [crop_labels == 1, crop_labels == 2]
                return instances_of(masks, [0.9, 0.8], crop_labels.shape)
            return instances_of([crop_labels > 0], [0.7], crop_labels.shape)

    detections = TiledPredictor(FirstApartSecondBlob(), 64, 40, merge_iou=0.25)(encode(labels))
    first_core = np.zeros_like(blob)
    first_core[:, :44] = True
    expected = [((labels == 1) & first_core) | (blob & ~first_core), (labels == 2) & first_core]
    assert len(detections) == 2
    for detection, want in zip(sorted(detections, key=lambda d: -d.score), expected, strict=True):
        np.testing.assert_array_equal(detection.full_mask(40, 88), want)


def test_image_that_fits_one_window_equals_untiled_inference():
    # A model's own output: masks that overlap, boxes larger than the masks, unsorted scores.
    def model(crop):
        masks = np.zeros((3, *crop.shape[:2]), dtype=bool)
        masks[0, 5:30, 5:30] = True
        masks[1, 20:40, 20:50] = True
        masks[2, 2:58, 60:78] = True
        boxes = [[4.5, 4.0, 31.0, 30.5], [19.0, 18.0, 52.0, 41.0], [59.5, 1.0, 79.0, 58.0]]
        return instances_of(list(masks), [0.6, 0.9, 0.7], crop.shape[:2], boxes)

    image = np.zeros((60, 80, 3), dtype=np.uint8)
    tiled = TiledPredictor(model, tile=96, overlap=16)(image)
    untiled = detections_from_instances(model(image)["instances"])
    assert len(tiled) == len(untiled) == 3
    for a, b in zip(tiled, untiled, strict=True):
        assert (a.score, a.category_id, a.box, a.mask_origin) == (
            b.score,
            b.category_id,
            b.box,
            b.mask_origin,
        )
        np.testing.assert_array_equal(a.mask, b.mask)


def test_overlapping_particles_in_one_window_are_not_merged():
    # Two instances of one window overlapping heavily stay two: only views from different
    # windows are merged.
    def twin_predictor(crop):
        masks = np.zeros((2, *crop.shape[:2]), dtype=bool)
        masks[0, 5:25, 5:25] = True
        masks[1, 8:25, 8:25] = True
        return instances_of(list(masks), [0.9, 0.8], crop.shape[:2])

    tiled = TiledPredictor(twin_predictor, tile=64, overlap=16)(np.zeros((40, 40, 3), np.uint8))
    assert len(tiled) == 2


def test_invalid_settings_are_named():
    with pytest.raises(ValueError, match="overlap=64"):
        TiledPredictor(oracle_predictor, tile=64, overlap=64)
    with pytest.raises(ValueError, match="merge_iou"):
        TiledPredictor(oracle_predictor, tile=64, overlap=16, merge_iou=0)
    with pytest.raises(ValueError, match="max_per_window must be >= 1, got 0"):
        TiledPredictor(oracle_predictor, tile=64, overlap=16, max_per_window=0)
    with pytest.raises(ValueError, match="max_per_photo must be >= 1, got 0"):
        TiledPredictor(oracle_predictor, tile=64, overlap=16, max_per_photo=0)


class SquaresInWindows:
    """
    Per window, `count` 2 x 2 squares away from the window's overlaps (so each view is one
    particle) with scores distinct over the photo and exact in float32; records each window's
    (score, origin) views.
    """

    def __init__(self, seed, count, num_windows):
        self.count = count
        self.scores = iter(np.random.default_rng(seed).permutation(count * num_windows) / 64)
        self.window_views = []

    def __call__(self, crop):
        masks = np.zeros((self.count, *crop.shape[:2]), dtype=bool)
        origins = [(20 + 5 * (i % 5), 4 + 6 * (i // 5)) for i in range(self.count)]
        for mask, (x, y) in zip(masks, origins, strict=True):
            mask[y : y + 2, x : x + 2] = True
        scores = [float(next(self.scores)) for _ in range(self.count)]
        self.window_views.append(list(zip(scores, origins, strict=True)))
        return instances_of(list(masks), scores, crop.shape[:2])


@pytest.mark.parametrize(
    "max_per_window, max_per_photo, dropped",
    [(10, 30, DroppedViews(0, 0)), (4, 30, DroppedViews(18, 0)), (10, 7, DroppedViews(0, 23))]
    + [(4, 7, DroppedViews(18, 5)), (1, 1, DroppedViews(27, 2))],
)
def test_caps_keep_the_highest_scored_views(max_per_window, max_per_photo, dropped, caplog):
    # Windows x = 0-64, 48-112 and 96-160 (tile 64, overlap 16), 10 views each.
    windows = tile_windows(160, 64, 64, 16)
    predictor = SquaresInWindows(seed=max_per_window + max_per_photo, count=10, num_windows=3)
    tiled = TiledPredictor(
        predictor, 64, 16, max_per_window=max_per_window, max_per_photo=max_per_photo
    )
    with caplog.at_level(logging.WARNING, logger="segtools.inference.tiled"):
        detections = tiled(np.zeros((64, 160, 3), dtype=np.uint8))

    per_window = []
    for (x0, y0, *_), views in zip(windows, predictor.window_views, strict=True):
        best = sorted(views, reverse=True)[:max_per_window]
        per_window += [(score, (x0 + x, y0 + y)) for score, (x, y) in best]
    expected = sorted(per_window, reverse=True)[:max_per_photo]
    assert sorted(((d.score, d.mask_origin) for d in detections), reverse=True) == expected
    assert tiled.last_dropped == dropped
    warnings = []
    if dropped.by_window_cap:
        warnings.append(
            f"Tiled prediction: max_per_window={max_per_window} left out the "
            f"{dropped.by_window_cap} lowest-scored views of 3 windows"
        )
    if dropped.by_photo_cap:
        warnings.append(
            f"Tiled prediction: max_per_photo={max_per_photo} left out the "
            f"{dropped.by_photo_cap} lowest-scored views"
        )
    assert caplog.messages == warnings


def test_dropped_views_are_counted_per_photo():
    predictor = SquaresInWindows(seed=0, count=10, num_windows=3)
    tiled = TiledPredictor(predictor, 64, 16, max_per_window=4)
    tiled(np.zeros((64, 112, 3), dtype=np.uint8))  # two windows
    assert tiled.last_dropped == DroppedViews(12, 0)
    tiled(np.zeros((64, 64, 3), dtype=np.uint8))
    assert tiled.last_dropped == DroppedViews(6, 0)


class DenseCoreModel:
    """
    A dense model: per window, `count` overlapping filled squares of 64 to 96 px in the window's
    core, away from its overlaps (tile 128, overlap 16), with random scores.
    """

    def __init__(self, seed, count):
        self.rng = np.random.default_rng(seed)
        self.count = count

    def __call__(self, crop):
        masks = np.zeros((self.count, *crop.shape[:2]), dtype=bool)
        for mask in masks:
            side = self.rng.integers(64, 97)
            x0, y0 = self.rng.integers(16, 113 - side, size=2)
            mask[y0 : y0 + side, x0 : x0 + side] = True
        return instances_of(list(masks), self.rng.random(self.count), crop.shape[:2])


def test_memory_of_a_dense_photo_stays_within_the_caps_bound():
    # 7 x 7 windows of 128 px, 40 views each: 30 kept per window, 900 in the photo.
    tile, grid, count, max_per_window, max_per_photo = 128, 7, 40, 30, 900
    height = width = tile + (grid - 1) * (tile - 16)
    tiled = TiledPredictor(DenseCoreModel(0, count), tile, 16, 0.5, max_per_window, max_per_photo)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    tracemalloc.start()
    try:
        detections = tiled(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    windows = grid * grid
    assert len(detections) == max_per_photo
    assert tiled.last_dropped == DroppedViews(
        windows * (count - max_per_window), windows * max_per_window - max_per_photo
    )
    # TiledPredictor's bound: about 1 KB of objects per view plus its box / 8 (96 x 96 at most);
    # the kept views' masks as bytes instead of bits would alone take 900 x 9216 = 8.3 MB.
    view_bytes = 1024 + 96 * 96 // 8
    bound = count * tile**2 + height * width + (count + 2 * max_per_photo) * view_bytes
    assert peak <= bound, f"peak {peak} B > bound {bound} B"
