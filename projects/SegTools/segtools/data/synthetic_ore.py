"""
A synthetic crushed-ore instance-segmentation set with exactly known particle sizes.

Each image shows crushed ore on a conveyor belt, as in the LosNet paper (section 4.1.2, Fig. 7):
angular convex and concave particles with faceted shading, a darker rim and a cast shadow, lying
sparse to dense, touching and occluding each other, on a dark rubber belt, under low, normal or
bright light. Images are drawn without anti-aliasing, so every pixel belongs to exactly one
particle or to the background and each annotation's mask is exact.

Layout written::

    out_dir/images/000000.png ...   BGR, uint8
    out_dir/annotations.json        COCO instances, category 1 = "ore"

Besides the COCO keys, each annotation carries:

* ``true_diameter_px``: equivalent-circle diameter sqrt(4 A / pi) of the particle's full,
  unoccluded shape, A being the pixel count of that shape rasterised in full (also the part
  outside the frame);
* ``visible_fraction``: visible pixels in the image / A, in (0, 1];
* ``touches_border``: whether the visible mask touches the image border.

Particles whose visible part has fewer than ``MIN_VISIBLE_AREA`` (16) pixels are drawn but not
annotated: such slivers carry no shape to learn and no size to measure.

Particle diameters (ECD) are log-uniform, so skewed to small as crushed ore is, from
max(8, S / 32) px to a per-image maximum of S / 4 to S / 8 (S = short image side; 10 to 40-80 px
at 320 px).

Each image ``k`` is drawn from its own generator ``np.random.default_rng([seed, k])``, so it does
not depend on how many images are generated. Its density level is ``DENSITY_LEVELS[k % 3]`` and its
lighting level ``LIGHTING_LEVELS[(k + k // 3) % 3]``: every 3 consecutive images hold each level
of both, and every 9 each of their combinations, so even a tiny set varies.
"""

import json
import logging
import os
import shutil
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from ..atomic_io import (
    atomic_directory,
    atomic_write_image,
    atomic_write_json,
    check_new_or_empty_folder,
)
from .coco_format import annotation_from_mask

__all__ = [
    "DENSITY_LEVELS",
    "LIGHTING_LEVELS",
    "MIN_IMAGE_SIDE",
    "MIN_VISIBLE_AREA",
    "SyntheticOreImage",
    "StaleSyntheticOreError",
    "ensure_synthetic_ore",
    "generate_synthetic_ore",
    "render_synthetic_ore_image",
]

# Bump when the generator's output changes: cached sets of another version are regenerated.
FORMAT_VERSION = 1
_DESCRIPTION = "Synthetic crushed ore on a conveyor belt (segtools)"
MIN_IMAGE_SIDE = 64
MIN_VISIBLE_AREA = 16

DENSITY_LEVELS = ("sparse", "medium", "dense")
LIGHTING_LEVELS = ("low", "normal", "bright")


@dataclass(frozen=True)
class _DensityLevel:
    """How one density level fills the belt."""

    # Summed full-particle area / belt area, drawn uniformly in this range.
    coverage: tuple
    # Probability that a particle is placed against an earlier one rather than anywhere.
    cluster_probability: float
    # Candidate centres tried per particle; the first on bare belt is taken (fills the gaps).
    placement_attempts: int


_DENSITY_SETTINGS = {
    "sparse": _DensityLevel(coverage=(0.12, 0.3), cluster_probability=0.35, placement_attempts=1),
    "medium": _DensityLevel(coverage=(0.35, 0.7), cluster_probability=0.45, placement_attempts=2),
    "dense": _DensityLevel(coverage=(0.9, 1.4), cluster_probability=0.4, placement_attempts=4),
}
# Upper bound on the particles of an image, as a fraction of how many smallest particles would
# tile it: bounds the generation time (208 particles at 320 x 320 px).
_MAX_PARTICLES_PER_SMALLEST_TILING = 0.16

# Camera gain, gamma and read-noise sigma (intensity units), drawn uniformly per lighting level.
# Low light is dark and noisy (amplified sensor noise); bright light saturates the top facets.
_LIGHTING_RANGES = {
    "low": {"gain": (0.45, 0.6), "gamma": (0.9, 1.0), "noise": (3.0, 5.0)},
    "normal": {"gain": (0.8, 1.0), "gamma": (0.95, 1.05), "noise": (1.5, 3.0)},
    "bright": {"gain": (1.25, 1.5), "gamma": (0.8, 0.95), "noise": (1.5, 2.5)},
}

# Ore tints (B, G, R multipliers of the grey reflectance): grey, brown, rust, bluish grey.
_ORE_TINTS = np.array(
    [[1.0, 1.0, 1.0], [0.85, 0.95, 1.05], [0.78, 0.9, 1.08], [1.03, 1.0, 0.97]], dtype=np.float32
)

# fillPoly takes fixed-point vertices with this many fractional bits (sub-pixel placement).
_SUBPIXEL_BITS = 4
# Padding of a particle's local canvas: room for the cast shadow and a zero border.
_MAX_SHADOW_PX = 4
_LOCAL_PAD = _MAX_SHADOW_PX + 2


@dataclass
class SyntheticOreImage:
    """
    One rendered image and its exact ground truth.

    Attributes:
        image: (H, W, 3) uint8 BGR image.
        labels: (H, W) int32 map: 0 = belt, k >= 1 = the k-th drawn particle (top-most visible).
        shape_origins: (num_particles_drawn, 2) int64 x, y in image px of each particle's shape
            canvas; row k - 1 belongs to label k.
        shape_masks: num_particles_drawn (h, w) bool arrays: each particle's full, unoccluded
            shape on its own canvas, also where it lies outside the image.
        scene: JSON-ready description of the draw (density and lighting levels, counts, ...).
    """

    image: np.ndarray
    labels: np.ndarray
    shape_origins: np.ndarray
    shape_masks: list
    scene: dict

    @property
    def full_areas(self) -> np.ndarray:
        """(num_particles_drawn,) int64 pixel count of each particle's full shape."""
        return np.array([np.count_nonzero(m) for m in self.shape_masks], dtype=np.int64)


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_int(name: str, value, minimum: int) -> int:
    if not _is_integer(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_size(size) -> tuple:
    """(width, height) as ints, or ValueError naming `size`."""
    try:
        width, height = size
    except (TypeError, ValueError):
        width = height = None
    if not all(_is_integer(v) and v >= MIN_IMAGE_SIDE for v in (width, height)):
        raise ValueError(
            f"size must be two integers (width, height), both >= {MIN_IMAGE_SIDE} px, got {size!r}"
        )
    return int(width), int(height)


def _uniform(rng: np.random.Generator, bounds: tuple) -> float:
    return float(rng.uniform(*bounds))


def _texture_noise(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Zero-mean, unit-variance uniform float32 noise: looks as Gaussian would, 5x faster."""
    noise = rng.random(shape, dtype=np.float32) - np.float32(0.5)
    noise *= np.float32(np.sqrt(12.0))
    return noise


def _sample_scene(rng: np.random.Generator, index: int, width: int, height: int) -> dict:
    """Scene-wide parameters of image `index`; see the module docstring for the level cycle."""
    density = DENSITY_LEVELS[index % 3]
    lighting = LIGHTING_LEVELS[(index + index // 3) % 3]
    short_side = min(width, height)
    # Crushed ore: sizes from ~10 px (at 320 px) up to a quarter of the short side; some images
    # carry finer ore only (Fig. 7e), hence the per-image maximum.
    min_diameter = max(8.0, short_side / 32)
    max_diameter = max(min_diameter * 1.5, short_side / 4 * rng.uniform(0.5, 1.0))
    belt_edge = str(rng.choice(["none", "none", "none", "left", "right"]))
    return {
        "density": density,
        "lighting": lighting,
        "coverage": round(_uniform(rng, _DENSITY_SETTINGS[density].coverage), 4),
        "min_diameter_px": round(min_diameter, 3),
        "max_diameter_px": round(float(max_diameter), 3),
        "belt_edge": belt_edge,
        "belt_edge_width_px": int(rng.uniform(0.05, 0.14) * width) if belt_edge != "none" else 0,
        **{
            key: round(_uniform(rng, bounds), 4)
            for key, bounds in _LIGHTING_RANGES[lighting].items()
        },
    }


def _render_belt(rng: np.random.Generator, width: int, height: int, scene: dict) -> np.ndarray:
    """
    Dark rubber belt running along y, with longitudinal streaks, an optional frame edge and fines.

    Returns:
        (H, W, 3) float32 BGR reflectance in intensity units (about 0-255 before the camera).
    """
    base = rng.uniform(38.0, 62.0)
    streaks = cv2.blur(_texture_noise(rng, (height, width)), (1, 41))
    streaks *= rng.uniform(4.0, 8.0) / max(float(streaks.std()), 1e-6)
    grain = _texture_noise(rng, (height, width)) * np.float32(rng.uniform(1.5, 3.5))
    grey = base + streaks + grain
    edge_width = scene["belt_edge_width_px"]
    if edge_width:
        # The steel frame beside the belt: lighter, smooth, with a dark gap at the belt's edge.
        columns = slice(0, edge_width) if scene["belt_edge"] == "left" else slice(-edge_width, None)
        grey[:, columns] = rng.uniform(85.0, 120.0) + grain[:, columns]
        gap = edge_width if scene["belt_edge"] == "left" else width - edge_width - 2
        grey[:, gap : gap + 2] = base * 0.4
    belt = grey[:, :, None] * np.array([1.04, 1.0, 0.97], dtype=np.float32)
    # Fines: specks of at most 13 px (radius 2), below MIN_VISIBLE_AREA, part of the background.
    num_fines = int(rng.uniform(0.0, 1.0) * width * height / 600)
    centres = rng.integers(0, [width, height], size=(num_fines, 2)).tolist()
    radii = rng.integers(0, 3, size=num_fines).tolist()
    tones = (base * rng.uniform(1.2, 1.7, size=num_fines)).tolist()
    for k in range(num_fines):
        cv2.circle(belt, tuple(centres[k]), radii[k], (tones[k],) * 3, -1, lineType=cv2.LINE_8)
    return belt


def _particle_polygon(rng: np.random.Generator, diameter: float) -> np.ndarray:
    """
    An angular crushed-rock outline whose polygon area is that of a circle of `diameter`.

    Vertices lie at jittered, increasing angles around the origin with random radii (mildly
    concave); a third of the outlines are replaced by their convex hull (blocky), another third
    get one or two deep dents (strongly concave). The outline is star-shaped around the origin,
    then stretched (elongation 1-2.2) and rotated, which keeps it star-shaped.

    Returns:
        (N, 2) float64 vertices (x, y) in px, relative to the particle's centre, in angular order.
    """
    num_vertices = int(rng.integers(5, 12))
    spacing = 2 * np.pi / num_vertices
    angles = np.arange(num_vertices) * spacing + rng.uniform(-0.35, 0.35, num_vertices) * spacing
    radii = rng.uniform(0.75, 1.15, num_vertices)
    kind = rng.integers(3)
    if kind == 1:
        dents = rng.choice(num_vertices, size=int(rng.integers(1, 3)), replace=False)
        radii[dents] *= rng.uniform(0.45, 0.7, dents.size)
    points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    if kind == 2:
        points = cv2.convexHull(points.astype(np.float32))[:, 0].astype(np.float64)
    elongation = 1.0 + 1.2 * rng.beta(1.5, 3.0)
    rotation = rng.uniform(0, np.pi)
    cos_r, sin_r = np.cos(rotation), np.sin(rotation)
    stretch = np.array([np.sqrt(elongation), 1 / np.sqrt(elongation)])
    points = (points * stretch) @ np.array([[cos_r, sin_r], [-sin_r, cos_r]])
    points = points[np.argsort(np.arctan2(points[:, 1], points[:, 0]))]
    area = cv2.contourArea(points.astype(np.float32))
    return points * np.sqrt(np.pi * diameter**2 / 4 / area)


def _fixed_point(vertices: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """(N, 2) px vertices, relative to `origin`, as the int32 fixed-point values fillPoly takes."""
    return np.round((vertices - origin) * (1 << _SUBPIXEL_BITS)).astype(np.int32)


def _rasterise(vertices: np.ndarray, origin: np.ndarray, shape: tuple) -> np.ndarray:
    """Fill `vertices` (px, image frame) on a (h, w) uint8 canvas whose pixel (0, 0) is `origin`."""
    mask = np.zeros(shape, dtype=np.uint8)
    cv2.fillPoly(
        mask, [_fixed_point(vertices, origin)], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS
    )
    return mask


def _shade_particle(
    rng: np.random.Generator,
    mask: np.ndarray,
    centre: np.ndarray,
    vertices: np.ndarray,
    light: np.ndarray,
    texture: np.ndarray,
    colour: np.ndarray,
) -> np.ndarray:
    """
    Faceted, rim-darkened, textured appearance of one particle on its local canvas.

    The particle is a low pyramid: one planar facet per polygon edge, all meeting over `centre`,
    sometimes with a flat top; each facet is lit by the directional `light` (Lambert), the rim
    darkens towards the outline so touching particles stay apart, and `texture` modulates it.

    Args:
        mask: (h, w) uint8 full shape, with a zero border.
        centre: (2,) x, y of the particle's centre on the local canvas, px.
        vertices: (N, 2) outline on the local canvas, px, in angular order around `centre`.
        light: (3,) unit vector towards the light (x, y, up).
        texture: (h, w) float32 zero-mean relative modulation.
        colour: (3,) float32 BGR reflectance of the particle.

    Returns:
        (h, w, 3) float32 BGR reflectance (meaningful where `mask` is set).
    """
    num_facets = len(vertices)
    vertex_angles = np.arctan2(vertices[:, 1] - centre[1], vertices[:, 0] - centre[0])
    # Facet k spans the triangle (centre, vertex k - 1, vertex k) and tilts outwards.
    previous_angles = np.concatenate([[vertex_angles[-1] - 2 * np.pi], vertex_angles[:-1]])
    azimuth = 0.5 * (previous_angles + vertex_angles) + rng.normal(0.0, 0.3, num_facets)
    tilt = rng.uniform(0.25, 0.9, num_facets)
    normals = np.stack(
        [np.sin(tilt) * np.cos(azimuth), np.sin(tilt) * np.sin(azimuth), np.cos(tilt)], axis=1
    )
    ambient = 0.42
    brightness = ambient + (1 - ambient) * np.maximum(normals @ light, 0.0)

    # Facet of each pixel from its angle around the centre; angles past the last vertex wrap
    # round to facet 0, hence the repeated first entry.
    height, width = mask.shape
    pixel_angles = np.arctan2(
        np.arange(height, dtype=np.float32)[:, None] - np.float32(centre[1]),
        np.arange(width, dtype=np.float32)[None, :] - np.float32(centre[0]),
    )
    facet_brightness = np.append(brightness, brightness[0]).astype(np.float32)
    shading = facet_brightness[np.searchsorted(vertex_angles.astype(np.float32), pixel_angles)]
    distance = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    if rng.random() < 0.4:
        shading[distance > rng.uniform(0.45, 0.7) * distance.max()] = (
            ambient + (1 - ambient) * light[2]
        )
    # Distance is 1 on the outline and 0 outside the mask, where the result is not used.
    rim_width = max(1.5, 0.1 * np.sqrt(np.count_nonzero(mask)))
    rim_darkness = rng.uniform(0.4, 0.6)
    shading *= rim_darkness + (1 - rim_darkness) / rim_width * np.minimum(distance - 1, rim_width)
    shading *= 1.0 + texture
    return cv2.merge([shading * channel for channel in colour])


def _particle_colour(rng: np.random.Generator, ore_tint: int) -> np.ndarray:
    """(3,) BGR reflectance: the image's ore tint, sometimes another, with per-particle jitter."""
    tint = ore_tint if rng.random() < 0.75 else int(rng.integers(len(_ORE_TINTS)))
    grey = rng.uniform(100.0, 180.0)
    jitter = rng.uniform(0.97, 1.03, 3).astype(np.float32)
    return np.float32(grey) * _ORE_TINTS[tint] * jitter


def _place(
    rng: np.random.Generator,
    diameter: float,
    placed: list,
    labels: np.ndarray,
    x_range: tuple,
    y_range: tuple,
    density: _DensityLevel,
) -> np.ndarray:
    """
    Centre (x, y) px of a new particle: against an earlier one (touching) or anywhere.

    Of up to `density.placement_attempts` candidates, the first that lies on bare belt (or
    outside the image) is taken, else the last.

    Args:
        placed: (centre, diameter) of the particles placed so far.
        labels: (H, W) particle map drawn so far, 0 = bare belt.
    """
    height, width = labels.shape
    for _ in range(density.placement_attempts):
        if placed and rng.random() < density.cluster_probability:
            other_centre, other_diameter = placed[int(rng.integers(len(placed)))]
            direction = rng.uniform(0, 2 * np.pi)
            distance = 0.5 * (diameter + other_diameter) * rng.uniform(0.6, 1.0)
            centre = other_centre + distance * np.array([np.cos(direction), np.sin(direction)])
            centre = np.clip(centre, [x_range[0], y_range[0]], [x_range[1], y_range[1]])
        else:
            centre = np.array([rng.uniform(*x_range), rng.uniform(*y_range)])
        x, y = np.floor(centre).astype(np.int64)
        if not (0 <= x < width and 0 <= y < height) or labels[y, x] == 0:
            break
    return centre


def _apply_camera(rng: np.random.Generator, reflectance: np.ndarray, scene: dict) -> np.ndarray:
    """
    Uneven illumination, gain, sensor noise (on the linear signal) and gamma.

    Args:
        reflectance: (H, W, 3) float32 BGR, about 0-255.

    Returns:
        (H, W, 3) uint8 BGR image.
    """
    height, width = reflectance.shape[:2]
    ys = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    direction = rng.uniform(0, 2 * np.pi)
    illumination = (
        1.0
        + rng.uniform(0.0, 0.15) * (xs * np.cos(direction) + ys * np.sin(direction))
        - rng.uniform(0.0, 0.15) * (xs**2 + ys**2) / 2
    )
    signal = reflectance * cv2.merge([scene["gain"] * illumination] * 3)
    # Read noise plus shot noise that grows with the signal (taken from the green channel).
    sigma = scene["noise"] * (0.6 + 0.4 * np.sqrt(np.maximum(signal[:, :, 1], 0.0) / 64.0))
    signal += rng.standard_normal(signal.shape, dtype=np.float32) * cv2.merge([sigma] * 3)
    quantised = np.rint(np.clip(signal, 0.0, 255.0)).astype(np.uint8)
    gamma_table = np.rint(255.0 * (np.arange(256) / 255.0) ** scene["gamma"]).astype(np.uint8)
    return cv2.LUT(quantised, gamma_table)


def _light_direction(rng: np.random.Generator) -> np.ndarray:
    """(3,) unit vector (x, y, up) towards a light 35-65 degrees above the belt."""
    azimuth = rng.uniform(0, 2 * np.pi)
    elevation = rng.uniform(np.radians(35), np.radians(65))
    return np.array(
        [
            np.cos(elevation) * np.cos(azimuth),
            np.cos(elevation) * np.sin(azimuth),
            np.sin(elevation),
        ]
    )


def _clip_to_image(origin: np.ndarray, local_shape: tuple, width: int, height: int):
    """
    The part of a local canvas at `origin` (x, y) that lies inside the image.

    Returns:
        (image_window, local_window): pairs of (rows, columns) slices, or None if it lies outside.
    """
    left, top = int(origin[0]), int(origin[1])
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + local_shape[1], width), min(top + local_shape[0], height)
    if x0 >= x1 or y0 >= y1:
        return None
    image_window = (slice(y0, y1), slice(x0, x1))
    local_window = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    return image_window, local_window


def _shifted(mask: np.ndarray, shift_xy: np.ndarray) -> np.ndarray:
    """`mask` (h, w) moved by whole pixels `shift_xy` (x, y), zeros shifted in."""
    translation = np.array([[1, 0, shift_xy[0]], [0, 1, shift_xy[1]]], dtype=np.float32)
    return cv2.warpAffine(mask, translation, mask.shape[::-1], flags=cv2.INTER_NEAREST)


@dataclass(frozen=True)
class _Look:
    """What the particles of one image share: light, ore tint and texture noise."""

    light: np.ndarray  # (3,) unit vector towards the light (x, y, up)
    shadow_direction: np.ndarray  # (2,) unit vector x, y away from the light
    ore_tint: int  # index into _ORE_TINTS
    fine_noise: np.ndarray  # (h, w) float32 white noise
    coarse_noise: np.ndarray  # (h, w) float32 smooth noise, same shape

    @classmethod
    def sample(cls, rng: np.random.Generator, width: int, height: int) -> "_Look":
        # Each particle reads its texture at its own random offset in these fields, so textures
        # do not continue across particle borders. A particle's canvas spans at most about half
        # the short image side plus padding, which fits.
        light = _light_direction(rng)
        ore_tint = int(rng.integers(len(_ORE_TINTS)))
        noise_shape = (height * 3 // 2, width * 3 // 2)
        coarse_noise = cv2.resize(
            rng.standard_normal((height // 8, width // 8), dtype=np.float32),
            noise_shape[::-1],
            interpolation=cv2.INTER_CUBIC,
        )
        fine_noise = _texture_noise(rng, noise_shape)
        shadow_direction = -light[:2] / np.linalg.norm(light[:2])
        return cls(light, shadow_direction, ore_tint, fine_noise, coarse_noise)


def _draw_particle(
    rng: np.random.Generator,
    canvas: np.ndarray,
    labels: np.ndarray,
    label: int,
    vertices: np.ndarray,
    centre: np.ndarray,
    look: _Look,
):
    """
    Draw one particle over `canvas` and `labels` (in place), casting its shadow first.

    Args:
        canvas: (H, W, 3) float32 BGR reflectance drawn so far.
        labels: (H, W) int32 particle map drawn so far; its pixels become `label`.
        vertices: (N, 2) px outline in the image frame, in angular order around `centre`.

    Returns:
        (origin, mask): (2,) int64 x, y of the shape canvas and its (h, w) bool full shape, or
        None (nothing drawn) if the shape lies outside the image.
    """
    height, width = labels.shape
    # The full shape on its own canvas, so the part outside the image is counted too.
    origin = np.floor(vertices.min(axis=0)).astype(np.int64) - _LOCAL_PAD
    end = np.ceil(vertices.max(axis=0)).astype(np.int64) + _LOCAL_PAD + 1
    mask = _rasterise(vertices, origin, (int(end[1] - origin[1]), int(end[0] - origin[0])))
    windows = _clip_to_image(origin, mask.shape, width, height)
    if windows is None or not mask[windows[1]].any():
        return None
    image_window, local_window = windows

    offset = rng.integers(0, np.subtract(look.fine_noise.shape, mask.shape) + 1)
    noise_window = (
        slice(offset[0], offset[0] + mask.shape[0]),
        slice(offset[1], offset[1] + mask.shape[1]),
    )
    texture = (
        rng.uniform(0.04, 0.1) * look.fine_noise[noise_window]
        + rng.uniform(0.05, 0.15) * look.coarse_noise[noise_window]
    )
    appearance = _shade_particle(
        rng,
        mask,
        centre - origin,
        vertices - origin,
        look.light,
        texture,
        _particle_colour(rng, look.ore_tint),
    )
    # The cast shadow falls away from the light, longer for larger particles.
    diameter = np.sqrt(4 * np.count_nonzero(mask) / np.pi)
    shadow_length = min(_MAX_SHADOW_PX, 1 + 0.06 * diameter)
    shadow = _shifted(mask, np.rint(look.shadow_direction * shadow_length))

    canvas_window = canvas[image_window]
    shadowed = canvas_window * np.float32(rng.uniform(0.5, 0.7))
    canvas[image_window] = cv2.copyTo(shadowed, shadow[local_window], canvas_window)
    canvas[image_window] = cv2.copyTo(appearance[local_window], mask[local_window], canvas_window)
    labels[image_window][mask[local_window].astype(bool)] = label
    return origin, mask.astype(bool)


def render_synthetic_ore_image(seed: int, index: int, size=(320, 320)) -> SyntheticOreImage:
    """
    Render image `index` of the synthetic ore set with `seed` (no validation, no files).

    Args:
        seed, index: non-negative integers; the image depends on nothing else but `size`.
        size: (width, height) px.
    """
    width, height = size
    rng = np.random.default_rng([seed, index])
    scene = _sample_scene(rng, index, width, height)
    canvas = _render_belt(rng, width, height, scene)
    labels = np.zeros((height, width), dtype=np.int32)
    look = _Look.sample(rng, width, height)
    density = _DENSITY_SETTINGS[scene["density"]]

    edge_width = scene["belt_edge_width_px"]
    min_diameter, max_diameter = scene["min_diameter_px"], scene["max_diameter_px"]
    belt_x0 = edge_width if scene["belt_edge"] == "left" else 0
    belt_x1 = width - edge_width if scene["belt_edge"] == "right" else width
    target_area = scene["coverage"] * (belt_x1 - belt_x0) * height
    max_particles = int(
        _MAX_PARTICLES_PER_SMALLEST_TILING * width * height / (np.pi * min_diameter**2 / 4)
    )

    placed, shape_origins, shape_masks = [], [], []
    drawn_area = 0.0
    while drawn_area < target_area and len(placed) < max_particles:
        # Log-uniform diameters: as many particles per size octave, so most are small.
        diameter = float(np.exp(rng.uniform(np.log(min_diameter), np.log(max_diameter))))
        drawn_area += np.pi * diameter**2 / 4
        # Centres may lie a little past the image border (cut particles) but not on the frame.
        overhang = 0.3 * diameter
        x_range = (
            belt_x0 + (0.2 * diameter if belt_x0 else -overhang),
            belt_x1 - (0.2 * diameter if belt_x1 < width else -overhang),
        )
        y_range = (-overhang, height + overhang)
        centre = _place(rng, diameter, placed, labels, x_range, y_range, density)
        vertices = _particle_polygon(rng, diameter) + centre
        drawn = _draw_particle(rng, canvas, labels, len(shape_masks) + 1, vertices, centre, look)
        if drawn is not None:
            placed.append((centre, diameter))
            shape_origins.append(drawn[0])
            shape_masks.append(drawn[1])

    scene["num_particles_drawn"] = len(shape_masks)
    return SyntheticOreImage(
        image=_apply_camera(rng, canvas, scene),
        labels=labels,
        shape_origins=np.array(shape_origins, dtype=np.int64).reshape(-1, 2),
        shape_masks=shape_masks,
        scene=scene,
    )


def _annotations(rendered: SyntheticOreImage) -> list:
    """COCO annotations (without "id" and "image_id") of the particles visible enough."""
    height, width = rendered.labels.shape
    full_areas = rendered.full_areas
    visible_areas = np.bincount(rendered.labels.ravel(), minlength=len(full_areas) + 1)
    annotations = []
    for label in np.flatnonzero(visible_areas[1:] >= MIN_VISIBLE_AREA) + 1:
        origin, shape_mask = rendered.shape_origins[label - 1], rendered.shape_masks[label - 1]
        # The visible pixels lie inside the part of the shape canvas that is in the image.
        image_window, _ = _clip_to_image(origin, shape_mask.shape, width, height)
        mask = np.zeros((height, width), dtype=bool)
        mask[image_window] = rendered.labels[image_window] == label
        touches_border = bool(
            mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
        )
        annotations.append(
            annotation_from_mask(
                mask,
                1,
                true_diameter_px=float(np.sqrt(4 * full_areas[label - 1] / np.pi)),
                visible_fraction=float(visible_areas[label] / full_areas[label - 1]),
                touches_border=touches_border,
            )
        )
    return annotations


def generate_synthetic_ore(
    out_dir: str, num_images: int, seed: int, size=(320, 320), show_progress: bool = True
) -> str:
    """
    Write the synthetic ore set (see the module docstring) into the new folder `out_dir`.

    Args:
        out_dir: folder to create; it may exist only if empty. Written atomically.
        num_images: number of images, >= 1.
        seed: non-negative integer; the same arguments give byte-identical files.
        size: (width, height) px, both >= MIN_IMAGE_SIDE.
        show_progress: show a tqdm progress bar.

    Returns:
        The path of the written COCO json, ``out_dir/annotations.json``. Image ``k`` is
        ``images/{k:06d}.png`` with COCO image id ``k + 1``.
    """
    num_images = _check_int("num_images", num_images, 1)
    seed = _check_int("seed", seed, 0)
    width, height = _check_size(size)
    check_new_or_empty_folder(out_dir, "Synthetic ore output folder")

    images, annotations = [], []
    with atomic_directory(out_dir) as tmp_dir:
        os.makedirs(os.path.join(tmp_dir, "images"))
        for index in tqdm(
            range(num_images), desc="synthetic ore", unit="img", disable=not show_progress
        ):
            rendered = render_synthetic_ore_image(seed, index, (width, height))
            file_name = f"{index:06d}.png"
            atomic_write_image(os.path.join(tmp_dir, "images", file_name), rendered.image)
            image_annotations = _annotations(rendered)
            for annotation in image_annotations:
                annotation.update(id=len(annotations) + 1, image_id=index + 1)
                annotations.append(annotation)
            rendered.scene["num_particles_annotated"] = len(image_annotations)
            images.append(
                {
                    "id": index + 1,
                    "file_name": file_name,
                    "width": width,
                    "height": height,
                    "scene": rendered.scene,
                }
            )
        coco = {
            "info": {
                "description": _DESCRIPTION,
                "format_version": FORMAT_VERSION,
                "seed": seed,
                "size": [width, height],
                "num_images": num_images,
                "min_visible_area": MIN_VISIBLE_AREA,
            },
            "categories": [{"id": 1, "name": "ore"}],
            "images": images,
            "annotations": annotations,
        }
        atomic_write_json(os.path.join(tmp_dir, "annotations.json"), coco)
    return os.path.join(out_dir, "annotations.json")


class StaleSyntheticOreError(FileExistsError):
    """A folder where a synthetic ore set belongs holds something this generator did not write."""


def _generator_settings(num_images: int, seed: int, size) -> dict:
    """What an annotations.json "info" records of the generator and its arguments."""
    return {
        "description": _DESCRIPTION,
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "size": list(size),
        "num_images": num_images,
    }


def _cached_settings(json_path: str) -> dict | None:
    """The generator settings recorded in `json_path`, or None if it holds none."""
    try:
        with open(json_path, encoding="utf-8") as f:
            info = json.load(f).get("info", {})
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(info, dict) or info.get("description") != _DESCRIPTION:
        return None
    return {key: info.get(key) for key in _generator_settings(1, 0, (0, 0))}


def ensure_synthetic_ore(out_dir: str, num_images: int, seed: int, size=(320, 320)) -> str:
    """
    The synthetic ore set of these arguments in `out_dir`, generated if the folder is missing
    or empty, and regenerated (with a logged message) if it holds a set of another format
    version or other arguments.

    Returns:
        The path of ``out_dir/annotations.json``.

    Raises:
        StaleSyntheticOreError: if `out_dir` holds files that this generator did not write
            (they are left as they are).
    """
    json_path = os.path.join(out_dir, "annotations.json")
    expected = _generator_settings(num_images, seed, size)
    if not os.path.exists(out_dir) or (os.path.isdir(out_dir) and not os.listdir(out_dir)):
        return generate_synthetic_ore(out_dir, num_images, seed, size)
    cached = _cached_settings(json_path)
    if cached == expected:
        return json_path
    if cached is None:
        raise StaleSyntheticOreError(
            f"{out_dir} should hold the synthetic ore set but holds no annotations.json written "
            "by this generator: move the folder away (it is generated again on first use)"
        )
    logging.getLogger(__name__).warning(
        "Regenerating the synthetic ore set in %s: it was written with %s, this generator "
        "writes %s",
        out_dir,
        {k: v for k, v in cached.items() if v != expected[k]},
        {k: v for k, v in expected.items() if v != cached[k]},
    )
    stale = f"{os.path.normpath(out_dir)}.stale-{os.getpid()}"
    os.rename(out_dir, stale)
    try:
        json_path = generate_synthetic_ore(out_dir, num_images, seed, size)
    except BaseException:
        os.rename(stale, out_dir)
        raise
    shutil.rmtree(stale)
    return json_path
