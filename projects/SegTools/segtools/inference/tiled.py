"""
Sliding-window inference for photos larger than the tiles a model was trained on.

Detectron2 pastes every mask at full image resolution, which does not fit in memory for a
4000 x 3000 belt photo with hundreds of particles, and LosNet is trained on tiles. The photo is cut
into the same overlapping windows as the training tiles (:func:`tile_windows`); each window is
predicted and its detections, the *views*, are moved to image coordinates. :func:`stitch_views`
then makes each particle one detection:

1. Link. Two views of different windows are linked when they agree where both windows see the
   photo: the IoU of their masks within the intersection of the two windows is at least
   `merge_iou`. Links are taken by decreasing IoU; one that would join two views of the same
   window into one particle is skipped, so detections of one window are never merged.
2. Group. The connected components of the links (union-find) are the particles.
3. Own. Each window owns a *core*: the windows' overlaps are split at their middle, so the cores
   partition the photo (:func:`window_cores`). Within the core of a window that has a view of the
   particle, the particle's mask is that view's mask.
4. Fill. Within the core of a window that has no view of the particle (the model missed it
   there), the particle takes the pixels of its views that no view of that window covers and no
   other particle has filled; particles are filled by decreasing score. A particle that only a
   neighbouring window saw is thus kept whole.
5. Score and class are the best-scored view's. If the particle's mask is exactly that view's mask
   the view is returned as it is (with its predicted box), else the box is the mask's tight box.
   A particle left with no pixel is dropped.

With a perfect model (every view is exactly the visible part of one particle) and an overlap of
at least one pixel this is exact: any two 8-adjacent pixels lie in a common window, so the views
of a connected particle are linked through the pixels they share (IoU 1), views of different
particles never are (IoU 0), and every pixel lies in the core of a window that sees it. If the
views of each window are disjoint, so are the particles. An image that fits in one window gives
exactly the model's own output. Views are only compared with views of overlapping windows whose
boxes meet, and masks are kept bit-packed over their boxes, unpacked only while compared.

Memory is bounded by caps on the views kept, the highest-scored ones (see :class:`TiledPredictor`).
"""

import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..data.coco_format import mask_box
from ..data.tiling import tile_windows
from .detections import Detection, detections_from_instances

__all__ = ["DroppedViews", "TiledPredictor", "stitch_views", "window_cores"]

logger = logging.getLogger(__name__)


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


def _pixel_cores(windows: list) -> np.ndarray:
    """
    (N, 4) int64 array: per window, the box (x0, y0, x1, y1), end-exclusive, of the pixels whose
    centres lie in its core.
    """
    cores = np.array(window_cores(windows), dtype=np.float64).reshape(-1, 4)
    # The cuts are multiples of 1/2, so the centre x + 0.5 lies in [low, high) exactly when
    # floor(low) <= x < floor(high); outer cores end at their window's edge.
    finite = np.where(np.isfinite(cores), cores, np.array(windows, dtype=np.float64))
    return np.floor(finite).astype(np.int64)


def _meets(boxes: np.ndarray, box) -> np.ndarray:
    """(N,) bool: which of the (N, 4) end-exclusive boxes share a pixel with `box`."""
    return (
        (boxes[:, 0] < box[2])
        & (boxes[:, 2] > box[0])
        & (boxes[:, 1] < box[3])
        & (boxes[:, 3] > box[1])
    )


def _intersection(a, b):
    """The common part of two end-exclusive boxes, or None if they share no pixel."""
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _slices(box, origin) -> tuple:
    """Index of `box` within an array whose [0, 0] is the image pixel `origin` (x, y)."""
    x0, y0, x1, y1 = box
    return slice(y0 - origin[1], y1 - origin[1]), slice(x0 - origin[0], x1 - origin[0])


def _or_into(canvas: np.ndarray, canvas_box, mask: np.ndarray, box, within=None) -> None:
    """canvas |= mask (over `box`), where they meet and inside the box `within` if given."""
    part = _intersection(canvas_box, box)
    if part is not None and within is not None:
        part = _intersection(part, within)
    if part is not None:
        canvas[_slices(part, canvas_box)] |= mask[_slices(part, box)]


class _Stitcher:
    """
    The views of all windows, flattened (view i is `views[i]` of window `window_of[i]`), and the
    pixels filled so far (step 4): the cores partition the photo, so one (H, W) canvas holds the
    fills of every window's core. View masks are unpacked only while they are compared or drawn.
    """

    def __init__(self, windows: list, views: list, merge_iou: float):
        self.windows = np.array(windows, dtype=np.int64).reshape(-1, 4)
        self.cores = _pixel_cores(windows)
        self.core_boxes = [tuple(core) for core in self.cores.tolist()]
        self.views = [view for window_views in views for view in window_views]
        counts = [len(window_views) for window_views in views]
        self.first_view = np.cumsum([0, *counts]).tolist()  # per window, and the end
        self.window_of = np.repeat(np.arange(len(views)), counts).tolist()
        boxes = [view.mask_box for view in self.views]
        self.boxes = np.array(boxes, dtype=np.int64).reshape(-1, 4)
        self.merge_iou = merge_iou
        height, width = self.windows[:, 3].max(), self.windows[:, 2].max()  # windows cover it
        self.filled = np.zeros((height, width), dtype=bool)

    def views_meeting(self, window: int, box) -> list:
        """Indices of the views of `window` whose mask boxes share a pixel with `box`."""
        first, end = self.first_view[window], self.first_view[window + 1]
        return (first + np.flatnonzero(_meets(self.boxes[first:end], box))).tolist()

    def part_within(self, view: int, region) -> tuple:
        """(box, mask over box) of `view` within `region`, which its mask box meets."""
        box = _intersection(self.views[view].mask_box, region)
        # A copy, so that the rest of the unpacked mask is freed.
        return box, self.views[view].mask[_slices(box, self.views[view].mask_box)].copy()

    def links(self) -> tuple:
        """
        The views of overlapping windows that agree where both see: (L,) arrays of the IoUs and
        of the two views, 16 bytes a link.
        """
        links = ([np.zeros(0)], [np.zeros(0, dtype=np.int32)], [np.zeros(0, dtype=np.int32)])
        for first, window in enumerate(self.windows.tolist()):
            later = np.flatnonzero(_meets(self.windows[first + 1 :], window))
            for second in (first + 1 + later).tolist():
                shared = _intersection(window, self.windows[second].tolist())
                pair = self._links_within(first, second, shared)
                for values, pair_values in zip(links, pair, strict=True):
                    values.append(np.array(pair_values, dtype=values[0].dtype))
        return tuple(np.concatenate(values) for values in links)

    def _links_within(self, first: int, second: int, shared) -> tuple:
        """The links between views of windows `first` and `second`, which share the box `shared`."""
        first_views = self.views_meeting(first, shared)
        second_views = np.array(self.views_meeting(second, shared), dtype=np.int64)
        parts = {v: self.part_within(v, shared) for v in (*first_views, *second_views.tolist())}
        counts = {v: np.count_nonzero(mask) for v, (_, mask) in parts.items()}
        ious, firsts, seconds = [], [], []
        for a in first_views:
            a_box, a_mask = parts[a]
            for b in second_views[_meets(self.boxes[second_views], a_box)].tolist():
                b_box, b_mask = parts[b]
                both = _intersection(a_box, b_box)
                a_both, b_both = a_mask[_slices(both, a_box)], b_mask[_slices(both, b_box)]
                common = np.count_nonzero(a_both & b_both)
                union = counts[a] + counts[b] - common
                if union and common / union >= self.merge_iou:
                    ious.append(common / union)
                    firsts.append(a)
                    seconds.append(b)
        return ious, firsts, seconds

    def particles(self) -> list:
        """Lists of view indices, one per particle, in the order of their first views."""
        parent = list(range(len(self.views)))
        windows_in = [{w} for w in self.window_of]  # per root: the windows of its views

        def root(view):
            while parent[view] != view:
                parent[view] = parent[parent[view]]
                view = parent[view]
            return view

        ious, firsts, seconds = self.links()
        order = np.lexsort((seconds, firsts, -ious))  # by decreasing IoU, then by the views
        for a, b in zip(firsts[order].tolist(), seconds[order].tolist(), strict=True):
            a, b = root(a), root(b)
            if a == b or windows_in[a] & windows_in[b]:
                continue
            if len(windows_in[a]) < len(windows_in[b]):
                a, b = b, a
            parent[b] = a
            windows_in[a] |= windows_in[b]
        groups = {}
        for view in range(len(self.views)):
            groups.setdefault(root(view), []).append(view)
        return list(groups.values())

    def stitch(self, members: list):
        """The Detection of the particle made of views `members`, or None if it has no pixel."""
        member_boxes = self.boxes[members]
        box = (*member_boxes[:, :2].min(axis=0).tolist(), *member_boxes[:, 2:].max(axis=0).tolist())
        masks = [(self.views[view].mask, self.views[view].mask_box) for view in members]
        mask = np.zeros((box[3] - box[1], box[2] - box[0]), dtype=bool)
        for view, (view_mask, view_box) in zip(members, masks, strict=True):
            _or_into(mask, box, view_mask, view_box, within=self.core_boxes[self.window_of[view]])
        member_windows = {self.window_of[view] for view in members}
        missed = set(np.flatnonzero(_meets(self.cores, box)).tolist()) - member_windows
        if missed:
            seen = np.zeros_like(mask)
            for view_mask, view_box in masks:
                _or_into(seen, box, view_mask, view_box)
            for window in sorted(missed):
                self._fill(mask, seen, box, window)
        return self._detection(members, mask, box)

    def _fill(self, mask: np.ndarray, seen: np.ndarray, box, window: int) -> None:
        """Give the particle (mask and seen over `box`) the free seen pixels of a window's core."""
        region = _intersection(self.core_boxes[window], box)
        gap = seen[_slices(region, box)].copy()
        if not gap.any():
            return
        filled = self.filled[_slices(region, (0, 0))]
        taken = filled.copy()
        for view in self.views_meeting(window, region):
            _or_into(taken, region, self.views[view].mask, self.views[view].mask_box)
        gap &= ~taken
        mask[_slices(region, box)] |= gap
        filled |= gap

    def _detection(self, members: list, mask: np.ndarray, box):
        """
        Score and class of the best view, visibility of the most complete one (a view cut by
        its window's border sees less of the particle); that view itself if the mask is its
        mask.
        """
        tight = mask_box(mask)
        if tight is None:
            return None
        best = self.views[max(members, key=lambda view: self.views[view].score)]
        x0, y0 = box[0] + tight[0], box[1] + tight[1]
        mask = mask[tight[1] : tight[3], tight[0] : tight[2]]
        if best.mask_origin == (x0, y0) and np.array_equal(best.mask, mask):
            return best
        height, width = mask.shape
        tight_box = (float(x0), float(y0), float(x0 + width), float(y0 + height))
        estimates = [self.views[v].visibility for v in members]
        visibility = None if None in estimates else max(estimates)
        return Detection(best.score, best.category_id, tight_box, (x0, y0), mask, visibility)


def stitch_views(windows: list, views: list, merge_iou: float = 0.5) -> list:
    """
    Make each particle seen in overlapping windows one detection (see the module docstring).

    Args:
        windows: (x0, y0, x1, y1) windows from :func:`tile_windows`, in image pixels.
        views: per window, list[Detection] in image coordinates, each mask inside its window.
        merge_iou: in (0, 1]; IoU of two views' masks within their windows' intersection from
            which they are one particle.

    Returns:
        list[Detection], one per particle, in the order of the particles' first views.
    """
    stitcher = _Stitcher(windows, views, merge_iou)
    particles = stitcher.particles()
    # Fills go to the higher-scored particle first (step 4).
    by_score = sorted(
        range(len(particles)),
        key=lambda k: -max(stitcher.views[view].score for view in particles[k]),
    )
    stitched = {k: stitcher.stitch(particles[k]) for k in by_score}
    return [stitched[k] for k in range(len(particles)) if stitched[k] is not None]


@dataclass(frozen=True)
class DroppedViews:
    """Views (detections of one window) that the caps of a :class:`TiledPredictor` left out."""

    by_window_cap: int  # beyond max_per_window in their window
    by_photo_cap: int  # beyond max_per_photo in the photo


def _best_of_window(views: list, count: int) -> list:
    """The `count` highest-scored of `views` (ties: the first), in their order."""
    if len(views) <= count:
        return views
    best = sorted(range(len(views)), key=lambda i: -views[i].score)[:count]
    return [views[i] for i in sorted(best)]


class _BestOfPhoto:
    """
    The `count` highest-scored views of a photo (ties: the first), streamed window by window
    through a min-heap, so that no more than `count` views are ever kept.
    """

    def __init__(self, count: int):
        self.count = count
        self.heap = []  # (score, -arrival, window, view): the worst kept view first
        self.arrived = 0
        self.dropped = 0

    def add(self, window: int, views: list) -> None:
        for view in views:
            entry = (view.score, -self.arrived, window, view)
            self.arrived += 1
            if len(self.heap) < self.count:
                heapq.heappush(self.heap, entry)
                continue
            self.dropped += 1
            if entry > self.heap[0]:  # (score, -arrival) decides: arrivals differ
                heapq.heapreplace(self.heap, entry)

    def per_window(self, num_windows: int) -> list:
        """Per window, its kept views in their arrival order."""
        views = [[] for _ in range(num_windows)]
        for _, _, window, view in sorted(self.heap, key=lambda entry: -entry[1]):
            views[window].append(view)
        return views


class TiledPredictor:
    """
    Predict a large image window by window with an image predictor (Detectron2's
    :class:`DefaultPredictor`), counting each particle once (see the module docstring).

    Memory is bounded by caps on the views kept, the highest-scored ones: `max_per_window` per
    window and `max_per_photo` per photo; :attr:`last_dropped` counts the views left out and a
    warning names the cap. A kept view takes about 1 KB of objects plus its mask box / 8 bytes
    (tile**2 / 8 at most), and so does a particle, so beyond the model and the image the peak is
    about

        n tile**2 + H W + 2 N (1 KB + box / 8)  bytes

    for an H x W photo: one window's masks as the model returns them (n <= its
    TEST.DETECTIONS_PER_IMAGE), the stitching's canvas, and N = min(max_per_photo, windows x
    max_per_window) views and as many particles at most. Links between views of neighbouring
    windows add 16 bytes each, about one per view for real particles.
    """

    def __init__(
        self,
        predictor: Callable,
        tile: int,
        overlap: int,
        merge_iou: float = 0.5,
        max_per_window: int = 300,
        max_per_photo: int = 200_000,
    ):
        """
        Args:
            predictor: called with a (h, w, 3) image as the predictor expects it (BGR for
                DefaultPredictor); returns {"instances": Instances} with `pred_masks`.
            tile, overlap: window side and overlap of neighbouring windows, in pixels; use the
                training tile size. Particles cut by a window border are stitched only if
                overlap >= 1; a larger overlap gives the model more context at the borders.
            merge_iou: IoU of two detections' masks within the intersection of their (different)
                windows from which they are one particle.
            max_per_window: views kept per window: LosNet's TEST.DETECTIONS_PER_IMAGE, which
                it never exceeds itself. The densest synthetic belt tile (320 px, LosNet's
                training tile) holds 195 particles.
            max_per_photo: views kept per photo. A whole 8000 x 6000 photo as dense as that tile
                holds about 91,000 particles, which windows see about 1.7 times (1.74 on a
                synthetic 8000 x 6000 mosaic at tile 640, overlap 128): 160,000 views, so
                200,000 cuts no real photo; views of that belt's sizes take 1.5 KB.
        """
        tile_windows(tile, tile, tile, overlap)  # validates tile and overlap
        if not 0 < merge_iou <= 1:
            raise ValueError(f"merge_iou must be in (0, 1], got {merge_iou}")
        for name, cap in (("max_per_window", max_per_window), ("max_per_photo", max_per_photo)):
            if cap < 1:
                raise ValueError(f"{name} must be >= 1, got {cap}")
        self.predictor = predictor
        self.tile = tile
        self.overlap = overlap
        self.merge_iou = merge_iou
        self.max_per_window = max_per_window
        self.max_per_photo = max_per_photo
        self.last_dropped = DroppedViews(0, 0)

    def __call__(self, image: np.ndarray) -> list:
        """
        Args:
            image: (H, W, 3) image.

        Returns:
            list[Detection] in image coordinates, each particle once. :attr:`last_dropped`
            counts the views this call left out.
        """
        height, width = image.shape[:2]
        windows = tile_windows(width, height, self.tile, self.overlap)
        best = _BestOfPhoto(self.max_per_photo)
        dropped_in_windows = 0
        for index, (x0, y0, x1, y1) in enumerate(windows):
            crop = np.ascontiguousarray(image[y0:y1, x0:x1])
            instances = self.predictor(crop)["instances"].to("cpu")
            views = detections_from_instances(instances, offset=(x0, y0))
            del instances  # the window's full-size masks, before the next window's are made
            kept = _best_of_window(views, self.max_per_window)
            dropped_in_windows += len(views) - len(kept)
            best.add(index, kept)
        self.last_dropped = DroppedViews(dropped_in_windows, best.dropped)
        self._warn_if_dropped(len(windows))
        return stitch_views(windows, best.per_window(len(windows)), self.merge_iou)

    def _warn_if_dropped(self, num_windows: int) -> None:
        if self.last_dropped.by_window_cap:
            logger.warning(
                "Tiled prediction: max_per_window=%d left out the %d lowest-scored views of "
                "%d windows",
                self.max_per_window,
                self.last_dropped.by_window_cap,
                num_windows,
            )
        if self.last_dropped.by_photo_cap:
            logger.warning(
                "Tiled prediction: max_per_photo=%d left out the %d lowest-scored views",
                self.max_per_photo,
                self.last_dropped.by_photo_cap,
            )
