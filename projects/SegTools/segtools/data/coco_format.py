"""
Small helpers between binary masks and COCO-format instance annotations: encode a mask, decode a
segmentation over the whole frame or over the particle's box only, say where it lies in its image.

Polygons are clipped to the image (with a margin of one pixel) before pycocotools rasterises
them: its rasteriser walks every edge in 1/5 px steps, so a vertex far outside the image takes
all memory or overflows its integers and crashes the process.
"""

import enum
from typing import NamedTuple

import numpy as np
import pycocotools.mask as mask_util
import shapely

__all__ = [
    "BoxMask",
    "Placement",
    "encode_mask",
    "decode_segmentation",
    "decode_in_box",
    "frame_runs",
    "annotation_from_mask",
    "mask_box",
    "place_segmentation",
]


def encode_mask(mask: np.ndarray, origin=(0, 0), frame_size=None) -> dict:
    """
    Args:
        mask: (h, w) boolean or {0, 1} array.
        origin: (x, y) pixel of the frame where mask[0, 0] lies.
        frame_size: (height, width) of the frame the RLE describes, zero outside `mask`;
            default: the mask is the frame.

    Returns:
        A compressed COCO RLE dict whose "counts" is a str, so it can be written to JSON.
    """
    if frame_size is None:
        if tuple(origin) != (0, 0):
            raise ValueError(f"An origin {origin} needs the frame_size")
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    else:
        rle = _encode_in_frame(mask, origin, frame_size)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _encode_in_frame(mask: np.ndarray, origin, frame_size) -> dict:
    """
    The RLE of a frame holding `mask` at `origin`, without building the frame: a particle's mask
    over its box is a few KB where the 4000 x 3000 frame would be 12 MB.
    """
    height, width = (int(v) for v in frame_size)
    x0, y0 = (int(v) for v in origin)
    h, w = mask.shape
    if x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height:
        raise ValueError(
            f"A {w} x {h} mask at (x, y) = ({x0}, {y0}) does not fit a {width} x {height} frame"
        )
    # COCO runs go down the columns. Only columns x0 .. x0 + w hold ones: find the runs of that
    # strip, then lengthen its first and last zero runs by the empty columns before and after.
    strip = np.zeros((height, w), dtype=np.uint8)
    strip[y0 : y0 + h] = mask
    pixels = strip.ravel(order="F")
    changes = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    runs = np.diff(np.concatenate(([0], changes, [pixels.size])))
    if pixels.size and pixels[0]:
        runs = np.concatenate(([0], runs))  # counts start with a run of zeros
    runs[0] += x0 * height
    zeros_after = (width - x0 - w) * height
    if len(runs) % 2:  # the last run is of zeros
        runs[-1] += zeros_after
    elif zeros_after:
        runs = np.append(runs, zeros_after)
    return mask_util.frPyObjects({"counts": runs.tolist(), "size": [height, width]}, height, width)


def _clip_ring(points: np.ndarray, low: tuple, high: tuple) -> np.ndarray:
    """
    The ring `points` (K, 2) clipped to the box [low, high] (x, y) by Sutherland-Hodgman, one
    side of the box at a time: the parts outside become runs along the box's sides. Unlike a
    shapely intersection, it keeps a self-intersecting ring one ring, filled by the even-odd rule
    as pycocotools fills it, and gives no holes (which pycocotools would fill).
    """
    for axis in (0, 1):
        for bound, sign in ((low[axis], 1.0), (high[axis], -1.0)):
            inside = sign * (points[:, axis] - bound) >= 0
            following = np.roll(points, -1, axis=0)
            crosses = inside != np.roll(inside, -1)
            delta = following[:, axis] - points[:, axis]
            t = np.divide(bound - points[:, axis], delta, out=np.zeros(len(points)), where=crosses)
            cut = points + t[:, None] * (following - points)
            cut[:, axis] = bound
            # Each vertex inside is kept, followed by the point where its edge leaves or enters.
            points = np.stack([points, cut], axis=1)[np.stack([inside, crosses], axis=1)]
    return points


def _polygon_rles(polygons: list, height: int, width: int) -> list:
    """
    pycocotools RLEs of `polygons` ([x0, y0, x1, y1, ...] lists) clipped to the frame plus a
    1 px margin: inside the frame the shape is the same (pycocotools may digitise a cut edge one
    of its 1/5 px steps apart). Polygons of fewer than 3 points, which have no area, give none.

    Raises:
        ValueError: if a coordinate is not finite.
    """
    low, high = (-1.0, -1.0), (width + 1.0, height + 1.0)
    clipped = []
    for polygon in polygons:
        points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(points).all():
            bad = points[~np.isfinite(points)][0]
            raise ValueError(f"polygon coordinates must be finite, got {bad}")
        if (points < low).any() or (points > high).any():
            points = _clip_ring(points, low, high)
        # Besides having no area, a polygon of 2 points would be read by pycocotools as a box.
        if len(points) >= 3:
            clipped.append(points.ravel().tolist())
    return mask_util.frPyObjects(clipped, height, width) if clipped else []


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """
    Rasterise a COCO "segmentation" (polygon list, uncompressed or compressed RLE); polygons
    are clipped to the frame first.

    Returns:
        (height, width) boolean mask.
    """
    if isinstance(segmentation, list):
        rles = _polygon_rles(segmentation, height, width)
        if not rles:
            return np.zeros((height, width), dtype=bool)
        rle = mask_util.merge(rles)
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_util.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_util.decode(rle).astype(bool)


class BoxMask(NamedTuple):
    """
    A mask kept over its tight box, as :func:`decode_in_box` gives it; like
    :class:`segtools.inference.Detection`, it is measured without building its frame.

    Attributes:
        mask: (h, w) boolean; (0, 0) when the segmentation has no pixel.
        mask_origin: (x, y) frame pixel of mask[0, 0].
    """

    mask: np.ndarray
    mask_origin: tuple[int, int]


_EMPTY_BOX_MASK = BoxMask(np.zeros((0, 0), dtype=bool), (0, 0))


def _string_runs(counts) -> np.ndarray:
    """
    The run lengths of a compressed RLE's "counts" (str or bytes), as pycocotools' rleFrString
    reads them, vectorised: pycocotools has no Python call that returns them.

    Raises:
        ValueError: if `counts` is not such a string.
    """
    # A run is written in 5-bit chunks, low bits first, each the character "0" + chunk; bit 0x20
    # of a chunk says that another follows, bit 0x10 of the last that the value is negative.
    # From the fourth on, a run is written as its difference to the run two places before.
    if isinstance(counts, str):
        counts = counts.encode()  # a character beyond ASCII gives bytes out of range below
    chunks = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - ord("0")
    if ((chunks < 0) | (chunks > 63)).any() or (chunks[-1:] & 0x20).any():
        raise ValueError("not a compressed COCO RLE string")
    last = np.flatnonzero((chunks & 0x20) == 0)
    lengths = np.diff(last, prepend=-1)
    if (lengths > 7).any():  # 7 chunks already hold 35 bits: no 32-bit run needs more
        raise ValueError("not a compressed COCO RLE string")
    first = last - lengths + 1
    shifts = 5 * (np.arange(len(chunks)) - np.repeat(first, lengths))
    values = np.diff(np.cumsum((chunks & 0x1F) << shifts)[last], prepend=0)
    values -= np.where(chunks[last] & 0x10, 1 << (5 * lengths), 0)
    values[2::2] = np.cumsum(values[2::2])
    values[1::2] = np.cumsum(values[1::2])
    return values


def frame_runs(segmentation, height: int, width: int) -> np.ndarray:
    """
    COCO's run lengths of a "segmentation" over its (height, width) frame, without decoding it:
    runs down the columns, column after column, alternately of zeros and ones, zeros first.

    Args:
        segmentation: polygon list (clipped to the frame, then rasterised by pycocotools),
            uncompressed or compressed RLE.

    Returns:
        (K,) int64 run lengths.

    Raises:
        ValueError: if an RLE's runs are negative or do not cover the frame exactly, or a polygon
            coordinate is not finite.
    """
    if isinstance(segmentation, list):
        rles = _polygon_rles(segmentation, height, width)
        # pycocotools cannot merge an empty list; the frame is all zeros.
        if not rles:
            return np.array([height * width], dtype=np.int64)
        counts = mask_util.merge(rles)["counts"]
    else:
        counts = segmentation["counts"]
    runs = np.asarray(counts, dtype=np.int64) if isinstance(counts, list) else _string_runs(counts)
    if (runs < 0).any() or runs.sum() != height * width:
        raise ValueError(
            f"RLE runs must be >= 0 and sum to {height} x {width} = {height * width} pixels, "
            f"got {len(runs)} runs summing to {runs.sum()}"
        )
    return runs


def decode_in_box(segmentation, height: int, width: int) -> BoxMask:
    """
    Rasterise a COCO "segmentation" (polygon list, uncompressed or compressed RLE) of a
    (height, width) frame over its tight box only: the same pixels as
    :func:`decode_segmentation`, without its (height, width) array (12 MB for a 4000 x 3000
    photo, per particle).

    Raises:
        ValueError: as :func:`frame_runs`.
    """
    runs = frame_runs(segmentation, height, width)
    ends, lengths = np.cumsum(runs)[1::2], runs[1::2]  # runs of ones, frame pixels in column order
    ends = ends[lengths > 0]
    starts = ends - lengths[lengths > 0]
    if len(starts) == 0:
        return _EMPTY_BOX_MASK
    # A run may go on from the bottom of a column to the top of the next: cut it at each column.
    first_columns, last_columns = starts // height, (ends - 1) // height
    pieces = last_columns - first_columns + 1
    run = np.repeat(np.arange(len(starts)), pieces)
    columns = first_columns[run] + np.arange(len(run)) - (np.cumsum(pieces) - pieces)[run]
    tops = np.maximum(starts[run] - columns * height, 0)
    bottoms = np.minimum(ends[run] - columns * height, height)
    x0, y0 = int(columns[0]), int(tops.min())
    # Each piece steps up at its top row and down below its last; summed down each column, the
    # steps give its pixels. add.at, since runs of ones may abut (after a run of 0 zeros).
    steps = np.zeros((int(bottoms.max()) - y0 + 1, int(columns[-1]) - x0 + 1), dtype=np.int8)
    np.add.at(steps, (tops - y0, columns - x0), 1)
    np.add.at(steps, (bottoms - y0, columns - x0), -1)
    return BoxMask(np.cumsum(steps, axis=0, out=steps)[:-1] > 0, (x0, y0))


class Placement(enum.Enum):
    """Where a segmentation lies in its image; the last three leave it without a pixel."""

    INSIDE = "inside the image"
    CLIPPED = "clipped at the image border"
    EMPTY = "empty segmentation"
    TOO_THIN = "too thin to cover a pixel"
    OUTSIDE = "wholly outside the image"


def _polygons_with_area(polygons: list) -> tuple[list, list]:
    """(polygons, their shapely shapes) of the `polygons` of at least 3 points with an area."""
    kept, shapes = [], []
    for polygon in polygons:
        if len(polygon) >= 6:
            # make_valid keeps the area of self-intersecting rings, whose shoelace area may be 0.
            shape = shapely.make_valid(shapely.Polygon(np.reshape(polygon, (-1, 2))))
            if shape.area > 0:
                kept.append(polygon)
                shapes.append(shape)
    return kept, shapes


def place_segmentation(segmentation, height: int, width: int) -> tuple[Placement, BoxMask]:
    """
    Rasterise a checked COCO "segmentation" of a (height, width) image over its box (as
    :func:`decode_in_box`) and say where it lies. Polygons without an area are left out.

    Returns:
        (placement, box mask); the mask is (0, 0) for EMPTY (no polygon point, or an RLE without
        a pixel), TOO_THIN (polygons of no area, or too thin to cover a pixel centre) and
        OUTSIDE (polygons with no area inside the image).
    """
    if not isinstance(segmentation, list):
        box_mask = decode_in_box(segmentation, height, width)
        return (Placement.INSIDE if box_mask.mask.size else Placement.EMPTY), box_mask
    if not any(segmentation):
        return Placement.EMPTY, _EMPTY_BOX_MASK
    polygons, shapes = _polygons_with_area(segmentation)
    if not polygons:
        return Placement.TOO_THIN, _EMPTY_BOX_MASK
    image, union = shapely.box(0, 0, width, height), shapely.union_all(shapes)
    if shapely.intersection(union, image).area == 0:
        return Placement.OUTSIDE, _EMPTY_BOX_MASK
    box_mask = decode_in_box(polygons, height, width)
    if box_mask.mask.size == 0:
        return Placement.TOO_THIN, box_mask
    return (Placement.INSIDE if image.covers(union) else Placement.CLIPPED), box_mask


def mask_box(mask: np.ndarray):
    """
    (x0, y0, x1, y1) of the set pixels of a (H, W) mask, end-exclusive, or None if it is empty.
    """
    # Row and column projections find the box far faster than np.nonzero over the whole mask.
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return None
    columns = np.flatnonzero(mask.any(axis=0))
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def annotation_from_mask(mask: np.ndarray, category_id: int = 1, **extra) -> dict:
    """
    A COCO annotation (without "id" and "image_id") whose box and area are exact for `mask`.

    Args:
        mask: (H, W) boolean array with at least one True pixel.
        extra: additional per-annotation keys, written as given.
    """
    x0, y0, x1, y1 = mask_box(mask)
    return {
        "category_id": category_id,
        "segmentation": encode_mask(mask),
        "area": int(np.count_nonzero(mask)),
        "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
        "iscrowd": 0,
        **extra,
    }
