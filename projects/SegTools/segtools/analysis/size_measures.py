"""
Size measures of ore particles from instance masks, in pixels and millimetres.

Geometry convention: pixel (row r, column c) is the unit square [c, c + 1] x [r, r + 1] of the
image plane, as in COCO boxes and Detectron2, so its centre is (c + 0.5, r + 0.5). A mask is taken
as the union of its pixels:

* area is the pixel count; the equivalent-circle diameter (ECD) is sqrt(4 A / pi);
* the second-moment ellipse uses the exact moments of that union of unit squares (pixel-centre
  moments + 1/12 per pixel), so an s-pixel-wide block has variance s^2 / 12, not (s^2 - 1) / 12;
  its axes are 4 sqrt(eigenvalue), which equals the full axes of an elliptical particle
  (and 2 / sqrt(3) times the sides of a rectangle);
* caliper measures (minimum and maximum Feret diameter, minimum-area rectangle) are taken on the
  convex hull of the pixel centres widened by one pixel, i.e. each pixel counts as a disc of unit
  diameter, so the width in every direction is the centre hull's width + 1. The hull of pixel
  corners would instead add |cos t| + |sin t| (1 to 1.41 px) depending on the direction t and
  over-measure a rectangle at 30 degrees by about 1.35 px; with the unit disc a shape rasterised
  by "pixel centre inside" measures within one pixel of its true size at every orientation
  (axis-aligned rectangles exactly; tilted edges up to +1 px; circles' Feret between D - 1 and
  D + 1). The rectangle is ``cv2.minAreaRect`` of the centre hull with 1 px added to both sides.
  A mask in several pieces is measured as one particle: its hull spans all pieces.

The per-image table (:class:`ParticleTable`) is columnar: a structured NumPy array of
:data:`PARTICLE_DTYPE`, one record per particle in pixels, plus the image scale ``mm_per_px`` that
turns lengths into millimetres (:meth:`ParticleTable.size_mm`).
"""

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial.distance import pdist
from tqdm import tqdm

from ..data.coco_format import decode_in_box

__all__ = [
    "LENGTH_MEASURES",
    "PARTICLE_DTYPE",
    "ParticleMeasures",
    "ParticleTable",
    "box_touches_border",
    "check_mm_per_px",
    "equivalent_circle_diameter",
    "measure_instances",
    "measure_particle",
]

logger = logging.getLogger(__name__)

# Length measures a distribution can be built on (fields of ParticleMeasures, in pixels).
LENGTH_MEASURES = (
    "ecd",
    "feret_min",
    "feret_max",
    "rect_width",
    "rect_length",
    "ellipse_major",
    "ellipse_minor",
)


@dataclass(frozen=True)
class ParticleMeasures:
    """
    Geometry of one particle, in pixels of the frame it was measured in.

    ``rect_width`` (the short side of the minimum-area rectangle) is the sieve-size proxy; the
    centroid is in pixel-corner coordinates (a pixel's centre is at +0.5); the box is the COCO
    (x, y, w, h) of the mask's pixels.
    """

    area: float
    ecd: float
    feret_min: float
    feret_max: float
    rect_width: float
    rect_length: float
    ellipse_major: float
    ellipse_minor: float
    centroid_x: float
    centroid_y: float
    bbox_x: int
    bbox_y: int
    bbox_w: int
    bbox_h: int
    touches_border: bool


# One record per particle: where it comes from, then its ParticleMeasures fields (pixels).
PARTICLE_DTYPE = np.dtype(
    [
        ("image_id", np.int64),
        ("annotation_id", np.int64),
        ("score", np.float64),  # NaN for ground truth
        ("image_width", np.int64),
        ("image_height", np.int64),
    ]
    + [
        (field.name, {bool: np.bool_, int: np.int64, float: np.float64}[field.type])
        for field in dataclasses.fields(ParticleMeasures)
    ]
)


def check_mm_per_px(mm_per_px: float) -> float:
    """Return `mm_per_px` as a float, or raise ValueError naming it unless finite and > 0."""
    try:
        value = float(mm_per_px)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"mm_per_px must be a finite number > 0, got {mm_per_px!r}")
    return value


def equivalent_circle_diameter(area):
    """Diameter of the circle of `area` (a number or an array), in the same length unit."""
    return np.sqrt(4.0 * np.asarray(area, dtype=np.float64) / np.pi)


def box_touches_border(x, y, w, h, frame_w, frame_h):
    """Whether the box (x, y, w, h) of a mask's pixels reaches the edge of its frame."""
    return (x == 0) | (y == 0) | (x + w == frame_w) | (y + h == frame_h)


def _caliper_diameters(hull: np.ndarray) -> tuple[float, float]:
    """
    Minimum and maximum width of a convex polygon (rotating calipers, vectorised).

    Args:
        hull: (K, 2) vertices in order, no repeats.
    """
    if len(hull) < 2:
        return 0.0, 0.0
    edges = np.roll(hull, -1, axis=0) - hull
    normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    # The minimum width is attained with one caliper flush against a hull edge.
    projections = hull @ normals.T  # (K vertices, K edge normals)
    min_width = float(np.ptp(projections, axis=0).min())
    return min_width, float(pdist(hull).max())


def measure_particle(instance, image_size: tuple[int, int] | None = None) -> ParticleMeasures:
    """
    Measure one particle.

    Args:
        instance: (H, W) boolean mask of the whole frame, a COCO segmentation (RLE dict or
            polygon list) of it, or the mask over a box of the frame: an object with `mask`
            (h, w) and `mask_origin` (x, y), such as :class:`segtools.inference.Detection`.
            Segmentations and box masks are measured without building the frame (12 MB for a
            4000 x 3000 photo).
        image_size: (height, width) of the frame; needed for polygons and box masks, optional
            otherwise.

    Raises:
        ValueError: if the mask is empty.
    """
    return _measure_mask(*_mask_in_frame(instance, image_size))


def _mask_in_frame(instance, image_size: tuple[int, int] | None) -> tuple:
    """(mask, (x, y) of mask[0, 0] in the frame, (frame height, frame width)) of an instance."""
    if hasattr(instance, "mask_origin"):
        if image_size is None:
            raise ValueError("A mask over a box needs image_size=(height, width)")
        return instance.mask, tuple(instance.mask_origin), tuple(int(v) for v in image_size)
    if isinstance(instance, np.ndarray):
        if instance.ndim != 2:
            raise ValueError(f"A particle mask must be (H, W), got shape {instance.shape}")
        if image_size is not None and tuple(instance.shape) != tuple(image_size):
            raise ValueError(f"Mask shape {instance.shape} differs from image size {image_size}")
        return instance.astype(bool, copy=False), (0, 0), instance.shape
    if image_size is None:
        if not (isinstance(instance, dict) and "size" in instance):
            raise ValueError("A polygon segmentation needs image_size=(height, width)")
        image_size = instance["size"]
    height, width = (int(v) for v in image_size)
    return (*decode_in_box(instance, height, width), (height, width))


def _measure_mask(mask: np.ndarray, origin: tuple, frame_size: tuple) -> ParticleMeasures:
    """Measures of the particle `mask`, whose pixel [0, 0] is `origin` (x, y) in the frame."""
    frame_h, frame_w = frame_size
    # C order: pycocotools decodes to Fortran order, which OpenCV would copy per call anyway.
    mask_u8 = np.ascontiguousarray(mask, dtype=np.uint8)
    x, y, w, h = cv2.boundingRect(mask_u8)
    if w == 0:
        raise ValueError("Cannot measure an empty mask")
    crop = np.ascontiguousarray(mask_u8[y : y + h, x : x + w])
    x, y = x + origin[0], y + origin[1]

    moments = cv2.moments(crop, binaryImage=True)
    area = moments["m00"]
    covariance = (
        np.array([[moments["mu20"], moments["mu11"]], [moments["mu11"], moments["mu02"]]]) / area
        + np.eye(2) / 12.0
    )
    minor_variance, major_variance = np.linalg.eigvalsh(covariance)

    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours)).reshape(-1, 2).astype(np.float64)
    feret_min, feret_max = _caliper_diameters(hull)
    _, rect_sides, _ = cv2.minAreaRect(hull.astype(np.float32))

    return ParticleMeasures(
        area=float(area),
        ecd=float(equivalent_circle_diameter(area)),
        feret_min=feret_min + 1.0,
        feret_max=feret_max + 1.0,
        rect_width=float(min(rect_sides)) + 1.0,
        rect_length=float(max(rect_sides)) + 1.0,
        ellipse_major=4.0 * math.sqrt(major_variance),
        ellipse_minor=4.0 * math.sqrt(max(minor_variance, 0.0)),
        centroid_x=x + moments["m10"] / area + 0.5,
        centroid_y=y + moments["m01"] / area + 0.5,
        bbox_x=x,
        bbox_y=y,
        bbox_w=w,
        bbox_h=h,
        touches_border=bool(box_touches_border(x, y, w, h, frame_w, frame_h)),
    )


@dataclass(frozen=True)
class ParticleTable:
    """
    Measured particles of one image or of several images taken at one scale.

    Attributes:
        records: (N,) structured array of :data:`PARTICLE_DTYPE`, lengths in pixels, area in
            pixels^2.
        mm_per_px: millimetres per pixel, > 0.
    """

    records: np.ndarray
    mm_per_px: float

    def __post_init__(self):
        object.__setattr__(self, "mm_per_px", check_mm_per_px(self.mm_per_px))
        if self.records.dtype != PARTICLE_DTYPE or self.records.ndim != 1:
            raise ValueError("ParticleTable.records must be a 1-D array of PARTICLE_DTYPE")

    def __len__(self) -> int:
        return len(self.records)

    @classmethod
    def empty(cls, mm_per_px: float) -> "ParticleTable":
        return cls(np.zeros(0, dtype=PARTICLE_DTYPE), mm_per_px)

    @classmethod
    def concatenate(cls, tables: Sequence["ParticleTable"], mm_per_px: float) -> "ParticleTable":
        """Join tables measured at scale `mm_per_px` (ValueError if one has another scale)."""
        mm_per_px = check_mm_per_px(mm_per_px)
        for table in tables:
            if table.mm_per_px != mm_per_px:
                raise ValueError(
                    f"Cannot join a table at {table.mm_per_px} mm/px with one at {mm_per_px}"
                )
        records = [table.records for table in tables]
        return cls(np.concatenate(records) if records else np.zeros(0, PARTICLE_DTYPE), mm_per_px)

    def size_px(self, measure: str) -> np.ndarray:
        """(N,) lengths in pixels of one of :data:`LENGTH_MEASURES`."""
        if measure not in LENGTH_MEASURES:
            raise ValueError(f"Unknown size measure {measure!r}; choose from {LENGTH_MEASURES}")
        return self.records[measure]

    def size_mm(self, measure: str) -> np.ndarray:
        """(N,) lengths in millimetres of one of :data:`LENGTH_MEASURES`."""
        return self.size_px(measure) * self.mm_per_px

    def area_mm2(self) -> np.ndarray:
        """(N,) areas in square millimetres."""
        return self.records["area"] * self.mm_per_px**2


def measure_instances(
    instances: Sequence,
    image_size: tuple[int, int],
    mm_per_px: float,
    image_id: int = 0,
    annotation_ids: Sequence[int] | None = None,
    scores: Sequence[float] | None = None,
    show_progress: bool = False,
) -> ParticleTable:
    """
    Measure all instances of one image.

    Args:
        instances: per particle a (H, W) boolean mask or a COCO segmentation of the frame, or
            its mask over a box (see :func:`measure_particle`).
        image_size: (height, width) of the frame.
        mm_per_px: scale, > 0 (ValueError naming the value otherwise).
        image_id: written to every record.
        annotation_ids: per instance (default: its index).
        scores: per instance (default: NaN, as for ground truth).

    Returns:
        The table of the non-empty instances, in input order; empty masks (a predicted mask can
        have no pixel) are skipped with a logged warning.
    """
    mm_per_px = check_mm_per_px(mm_per_px)
    height, width = (int(v) for v in image_size)
    if annotation_ids is None:
        annotation_ids = range(len(instances))
    if scores is None:
        scores = [math.nan] * len(instances)
    if not len(annotation_ids) == len(scores) == len(instances):
        raise ValueError("instances, annotation_ids and scores must have the same length")

    records = []
    for instance, annotation_id, score in tqdm(
        list(zip(instances, annotation_ids, scores, strict=True)),
        desc=f"measuring image {image_id}",
        disable=not show_progress,
    ):
        mask, origin, frame_size = _mask_in_frame(instance, (height, width))
        if not mask.any():
            continue
        measures = dataclasses.astuple(_measure_mask(mask, origin, frame_size))
        records.append((image_id, annotation_id, score, width, height) + measures)
    if len(records) < len(instances):
        logger.warning(
            f"Image {image_id}: skipped {len(instances) - len(records)} empty mask(s) of "
            f"{len(instances)}"
        )
    return ParticleTable(np.array(records, dtype=PARTICLE_DTYPE), mm_per_px)
