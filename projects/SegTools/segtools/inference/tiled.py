"""
Sliding-window inference for photos larger than the tiles a model was trained on.

Detectron2 pastes every mask at full image resolution, which does not fit in memory for a
4000 x 3000 belt photo with hundreds of particles, and LosNet is trained on tiles. The photo is cut
into the same overlapping windows as the training tiles (:func:`tile_windows`); each window is
predicted, its detections are moved to image coordinates, and each particle is counted once:

1. Each window owns a *core*: the windows' overlaps are split at their middle, so the cores
   partition the photo. A detection is *owned* if its mask centroid lies in its window's core,
   and *complete* if its mask does not touch an inner edge of its window (an edge that is not the
   photo border).
2. Owned, complete detections are kept. A particle whose farthest pixel lies within half the
   overlap of its centroid is complete in the window that owns it, so overlaps at least as large
   as the particles make this rule exact.
3. Remaining duplicates between windows (two views of a particle near a core boundary whose
   centroids fall in different cores) are merged when their masks' intersection over the smaller
   area exceeds `merge_ios`: the union of the masks, the higher score.
4. Larger particles, cut in the window that owns them, are recovered from the other views: a
   complete view in a window that does not own it, when it does not overlap a particle already
   kept (intersection over smaller > `merge_ios`); else the cut pieces owned by each window are
   stitched: two pieces are one particle when their masks agree where both windows see the image
   (IoU in the windows' shared region > `merge_ios`), and the union of the pieces is kept.

Detections of one window are never merged with each other, so an image that fits in one window
gives exactly the model's own output.
"""

from collections.abc import Callable

import numpy as np

from ..data.tiling import tile_windows
from .detections import Detection, detections_from_instances, intersection_over_smaller

__all__ = ["TiledPredictor", "window_cores"]


def _core_bounds(spans: list) -> dict:
    """Per (start, end) span of one axis, its core [low, high): overlaps split at their middle."""
    spans = sorted(spans)
    cuts = [(nxt[0] + cur[1]) / 2 for cur, nxt in zip(spans, spans[1:], strict=False)]
    lows = [-np.inf, *cuts]
    highs = [*cuts, np.inf]
    return {span: (low, high) for span, low, high in zip(spans, lows, highs, strict=True)}


def window_cores(windows: list) -> list:
    """
    Args:
        windows: (x0, y0, x1, y1) windows from :func:`tile_windows`.

    Returns:
        Per window, its core (x_low, y_low, x_high, y_high), half-open; the cores partition the
        plane, the outer ones reaching to infinity.
    """
    x_cores = _core_bounds(list({(w[0], w[2]) for w in windows}))
    y_cores = _core_bounds(list({(w[1], w[3]) for w in windows}))
    return [
        (
            x_cores[(x0, x1)][0],
            y_cores[(y0, y1)][0],
            x_cores[(x0, x1)][1],
            y_cores[(y0, y1)][1],
        )
        for x0, y0, x1, y1 in windows
    ]


def _touches_inner_edge(detection: Detection, window: tuple, width: int, height: int) -> bool:
    x0, y0, x1, y1 = window
    mx0, my0, mx1, my1 = detection.mask_box
    return (
        (x0 > 0 and mx0 == x0)
        or (y0 > 0 and my0 == y0)
        or (x1 < width and mx1 == x1)
        or (y1 < height and my1 == y1)
    )


def _agree_in_shared_region(a: Detection, window_a: tuple, b: Detection, window_b: tuple) -> float:
    """IoU of two pieces' masks within the region both of their windows cover (0 if none)."""
    x0, y0 = max(window_a[0], window_b[0]), max(window_a[1], window_b[1])
    x1, y1 = min(window_a[2], window_b[2]), min(window_a[3], window_b[3])
    if x0 >= x1 or y0 >= y1:
        return 0.0

    def crop(detection):
        region = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        mx0, my0, mx1, my1 = detection.mask_box
        cx0, cy0, cx1, cy1 = max(mx0, x0), max(my0, y0), min(mx1, x1), min(my1, y1)
        if cx0 < cx1 and cy0 < cy1:
            region[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = detection.mask[
                cy0 - my0 : cy1 - my0, cx0 - mx0 : cx1 - mx0
            ]
        return region

    region_a, region_b = crop(a), crop(b)
    union = np.count_nonzero(region_a | region_b)
    return np.count_nonzero(region_a & region_b) / union if union else 0.0


def _merge_into(kept: Detection, duplicate: Detection) -> Detection:
    """The union of two views of one particle, with the better score and class."""
    kx0, ky0, kx1, ky1 = kept.mask_box
    dx0, dy0, dx1, dy1 = duplicate.mask_box
    x0, y0, x1, y1 = min(kx0, dx0), min(ky0, dy0), max(kx1, dx1), max(ky1, dy1)
    mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    mask[ky0 - y0 : ky1 - y0, kx0 - x0 : kx1 - x0] |= kept.mask
    mask[dy0 - y0 : dy1 - y0, dx0 - x0 : dx1 - x0] |= duplicate.mask
    best = kept if kept.score >= duplicate.score else duplicate
    box = (
        min(kept.box[0], duplicate.box[0]),
        min(kept.box[1], duplicate.box[1]),
        max(kept.box[2], duplicate.box[2]),
        max(kept.box[3], duplicate.box[3]),
    )
    return Detection(best.score, best.category_id, box, (x0, y0), mask)


class _KeptParticles:
    """The particles kept so far, with their mask boxes for overlap queries."""

    def __init__(self):
        self.detections = []
        self.windows = []
        self._boxes = np.zeros((0, 4))

    def add(self, detection: Detection, window: int) -> None:
        self.detections.append(detection)
        self.windows.append(window)
        self._boxes = np.vstack([self._boxes, detection.mask_box])

    def replace(self, index: int, detection: Detection) -> None:
        self.detections[index] = detection
        self._boxes[index] = detection.mask_box

    def duplicates_of(self, detection: Detection, merge_ios: float, window=None) -> list:
        """
        Indices of the kept particles that `detection` overlaps by more than `merge_ios`
        (intersection over the smaller mask), leaving out those from `window` if given.
        """
        x0, y0, x1, y1 = detection.mask_box
        boxes = self._boxes
        candidates = np.flatnonzero(
            (boxes[:, 0] < x1) & (boxes[:, 2] > x0) & (boxes[:, 1] < y1) & (boxes[:, 3] > y0)
        )
        return [
            int(k)
            for k in candidates
            if (window is None or self.windows[k] != window)
            and intersection_over_smaller(detection, self.detections[k]) > merge_ios
        ]


class TiledPredictor:
    """
    Predict a large image window by window with an image predictor (Detectron2's
    :class:`DefaultPredictor`), counting each particle once (see the module docstring).
    """

    def __init__(self, predictor: Callable, tile: int, overlap: int, merge_ios: float = 0.5):
        """
        Args:
            predictor: called with a (h, w, 3) image as the predictor expects it (BGR for
                DefaultPredictor); returns {"instances": Instances} with `pred_masks`.
            tile, overlap: window side and overlap of neighbouring windows, in pixels; use the
                training tile size and an overlap at least as large as the biggest particle.
            merge_ios: intersection over the smaller mask above which two detections from
                different windows are one particle.
        """
        tile_windows(tile, tile, tile, overlap)  # validates tile and overlap
        if not 0 < merge_ios <= 1:
            raise ValueError(f"merge_ios must be in (0, 1], got {merge_ios}")
        self.predictor = predictor
        self.tile = tile
        self.overlap = overlap
        self.merge_ios = merge_ios

    def __call__(self, image: np.ndarray) -> list:
        """
        Args:
            image: (H, W, 3) image.

        Returns:
            list[Detection] in image coordinates, each particle once.
        """
        height, width = image.shape[:2]
        windows = tile_windows(width, height, self.tile, self.overlap)
        owned_complete, complete_elsewhere, owned_cut = [], [], []
        for index, (window, core) in enumerate(zip(windows, window_cores(windows), strict=True)):
            x0, y0, x1, y1 = window
            crop = np.ascontiguousarray(image[y0:y1, x0:x1])
            instances = self.predictor(crop)["instances"].to("cpu")
            for detection in detections_from_instances(instances, offset=(x0, y0)):
                cx, cy = detection.centroid
                owned = core[0] <= cx < core[2] and core[1] <= cy < core[3]
                complete = not _touches_inner_edge(detection, window, width, height)
                if owned and complete:
                    owned_complete.append((index, detection))
                elif complete:
                    complete_elsewhere.append(detection)
                elif owned:
                    owned_cut.append((window, detection))

        kept = _KeptParticles()
        for index, detection in sorted(owned_complete, key=lambda e: -e[1].score):
            duplicates = kept.duplicates_of(detection, self.merge_ios, window=index)
            if duplicates:
                kept.replace(duplicates[0], _merge_into(kept.detections[duplicates[0]], detection))
            else:
                kept.add(detection, index)
        for detection in sorted(complete_elsewhere, key=lambda d: -d.score):
            if not kept.duplicates_of(detection, self.merge_ios):
                kept.add(detection, window=None)
        pieces = []  # (window box, stitched detection)
        for window, piece in sorted(owned_cut, key=lambda e: -e[1].score):
            if kept.duplicates_of(piece, self.merge_ios):
                continue
            match = next(
                (
                    k
                    for k, (other_window, other) in enumerate(pieces)
                    if _agree_in_shared_region(piece, window, other, other_window) > self.merge_ios
                ),
                None,
            )
            if match is None:
                pieces.append((window, piece))
            else:
                other_window, other = pieces[match]
                union_window = (
                    min(window[0], other_window[0]),
                    min(window[1], other_window[1]),
                    max(window[2], other_window[2]),
                    max(window[3], other_window[3]),
                )
                pieces[match] = (union_window, _merge_into(other, piece))
        return kept.detections + [piece for _, piece in pieces]
