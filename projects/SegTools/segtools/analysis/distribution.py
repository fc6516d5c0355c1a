"""
Particle-size distributions (sieve curves) from a table of measured particles.

Weighting. Each particle gets an edge weight (1, 0 if excluded, or its Miles-Lantuejoul weight),
times its size bin's factor when the model's size correction is given (:mod:`.size_correction`),
and the distribution is given twice: by count (weight = that weight) and by mass (weight x volume
proxy, see :data:`MASS_PROXY`), the latter being what a sieve reports.

Curves. Percent passing at a size x is the exact weighted fraction of particles of size <= x (a
step function, as a sieve with aperture x would give); the retained histogram over a sieve series
is its difference. The D-values read the curve through interpolation (:data:`INTERPOLATION`) and
the fits in :mod:`.fits` use the same plotting positions.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .size_correction import SizeCorrection
from .size_measures import ParticleTable

__all__ = [
    "D_PERCENTS",
    "EDGE_MODES",
    "INTERPOLATION",
    "MASS_PROXY",
    "TOPSIZE_DEFINITION",
    "TOPSIZE_PERCENT",
    "WEIGHTINGS",
    "CumulativeCurve",
    "SizeDistribution",
    "edge_weights",
    "mass_proxy",
    "particle_weights",
    "sieve_series",
    "size_distribution",
]

EDGE_MODES = ("exclude", "include", "miles-lantuejoul")
WEIGHTINGS = ("count", "mass")
D_PERCENTS = (10, 20, 50, 80, 90)
TOPSIZE_PERCENT = 95

MASS_PROXY = (
    "mass proportional to volume proportional to (projected area)^1.5, i.e. equal density and "
    "geometrically similar shapes assumed"
)
INTERPOLATION = (
    "particles sorted by size, each placed at the middle of its own weight step (Hazen plotting "
    "position, percent = 100 * (cumulative weight - own weight / 2) / total); D-values "
    "interpolated linearly in log size between these points and clamped to the smallest and "
    "largest particle outside them (with equal weights D50 is the median)"
)
TOPSIZE_DEFINITION = (
    f"topsize = D{TOPSIZE_PERCENT}: unlike the largest particle (D100) it is not set by a single "
    "merged or mis-segmented mask"
)


def edge_weights(particles: ParticleTable, edge_mode: str) -> np.ndarray:
    """
    Per-particle weights for how particles touching the image border are treated.

    Modes:
        "exclude": border particles get 0, others 1.
        "include": every particle gets 1 (border ones stay flagged in the table).
        "miles-lantuejoul": minus-sampling; border particles get 0 (their size is cut by the
            frame) and an interior particle with box w x h in a W x H frame gets
            W H / ((W - w)(H - h)), the inverse of the chance that a particle of its box fits
            inside the frame without touching it. That weight is undefined for w >= W or
            h >= H, which only border particles can have.

    Returns:
        (N,) float64 weights.
    """
    if edge_mode not in EDGE_MODES:
        raise ValueError(f"Unknown edge mode {edge_mode!r}; choose from {EDGE_MODES}")
    records = particles.records
    interior = ~records["touches_border"]
    if edge_mode == "include":
        return np.ones(len(records))
    if edge_mode == "exclude":
        return interior.astype(np.float64)
    frame_w, frame_h = records["image_width"], records["image_height"]
    # Clip so that border particles spanning the frame do not divide by zero; they get 0 anyway.
    free_w = np.maximum(frame_w - records["bbox_w"], 1)
    free_h = np.maximum(frame_h - records["bbox_h"], 1)
    return np.where(interior, frame_w * frame_h / (free_w * free_h), 0.0)


def particle_weights(
    particles: ParticleTable, edge_mode: str, size_correction: SizeCorrection | None = None
) -> np.ndarray:
    """
    (N,) count weight of each particle: its edge weight (:func:`edge_weights`), times its size
    bin's factor when a :class:`SizeCorrection` of the model that predicted it is given.
    """
    weights = edge_weights(particles, edge_mode)
    if size_correction is not None:
        weights = weights * size_correction.factors_for(particles.records["ecd"])
    return weights


def mass_proxy(particles: ParticleTable) -> np.ndarray:
    """(N,) per-particle mass proxy, (area in mm^2)^1.5, see :data:`MASS_PROXY`."""
    return particles.area_mm2() ** 1.5


def sieve_series(min_size: float, max_size: float) -> np.ndarray:
    """
    Sieve apertures 2^(k/2) mm (a sqrt(2) series through 1 mm, as ISO 565 R20/3 roughly) from
    the largest one below `min_size` to the smallest one at or above `max_size`.

    Returns:
        (S,) ascending apertures, so that 0% passes the first and 100% the last.
    """
    k_low = math.floor(2 * math.log2(min_size))
    if 2.0 ** (k_low / 2) >= min_size:
        k_low -= 1
    k_high = math.ceil(2 * math.log2(max_size))
    if 2.0 ** (k_high / 2) < max_size:  # guards against rounding in log2
        k_high += 1
    return 2.0 ** (np.arange(k_low, k_high + 1) / 2)


@dataclass(frozen=True)
class CumulativeCurve:
    """
    A weighted cumulative size distribution.

    Attributes:
        sizes: (K,) ascending particle sizes, mm; only particles of positive weight.
        weights: (K,) their weights, > 0.
    """

    sizes: np.ndarray
    weights: np.ndarray

    @classmethod
    def from_particles(cls, sizes: np.ndarray, weights: np.ndarray) -> "CumulativeCurve":
        """Build from unsorted (N,) sizes and (N,) weights >= 0; zero-weight ones are dropped."""
        keep = weights > 0
        order = np.argsort(sizes[keep], kind="stable")
        return cls(sizes[keep][order].astype(np.float64), weights[keep][order].astype(np.float64))

    def __len__(self) -> int:
        return len(self.sizes)

    def percent_passing(self, sizes_mm) -> np.ndarray:
        """Percent of the weight in particles of size <= each of `sizes_mm` (NaN if empty)."""
        sizes_mm = np.asarray(sizes_mm, dtype=np.float64)
        if len(self) == 0:
            return np.full(sizes_mm.shape, math.nan)
        cumulative = np.concatenate([[0.0], np.cumsum(self.weights)])
        index = np.searchsorted(self.sizes, sizes_mm, side="right")
        return 100.0 * cumulative[index] / cumulative[-1]

    def plotting_percent(self) -> np.ndarray:
        """(K,) percent passing plotted at each particle: the middle of its weight step."""
        cumulative = np.cumsum(self.weights)
        return 100.0 * (cumulative - self.weights / 2) / cumulative[-1]

    def size_at_percent(self, percent) -> np.ndarray:
        """Sizes (mm) at which `percent` passes, interpolated as in :data:`INTERPOLATION`."""
        percent = np.asarray(percent, dtype=np.float64)
        if len(self) == 0:
            return np.full(percent.shape, math.nan)
        return np.exp(np.interp(percent, self.plotting_percent(), np.log(self.sizes)))

    def d_values(self) -> dict[str, float]:
        """{"D10": ..., "D20", "D50", "D80", "D90", "topsize"} in mm (NaN if empty)."""
        percents = (*D_PERCENTS, TOPSIZE_PERCENT)
        names = [f"D{p}" for p in D_PERCENTS] + ["topsize"]
        return {
            name: float(v) for name, v in zip(names, self.size_at_percent(percents), strict=True)
        }


@dataclass(frozen=True)
class SizeDistribution:
    """
    Size distribution of one set of particles.

    Attributes:
        measure: the size measure (one of LENGTH_MEASURES).
        edge_mode: one of EDGE_MODES.
        n_particles: particles in the table.
        n_border: of them, touching the image border (in every mode).
        n_used: of them, with positive weight (in the curves).
        n_spanning_frame: of them, with a box as wide or as tall as the frame (all border
            particles; no Miles-Lantuejoul weight exists for them).
        count, mass: the curves weighted by count and by mass.
        sieves_mm: (S,) sieve series covering the used particles (empty if none).
        size_correction: the per-size factors the weights include, if any.
    """

    measure: str
    edge_mode: str
    n_particles: int
    n_border: int
    n_used: int
    n_spanning_frame: int
    count: CumulativeCurve
    mass: CumulativeCurve
    sieves_mm: np.ndarray
    size_correction: SizeCorrection | None = None

    def curve(self, weighting: str) -> CumulativeCurve:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"Unknown weighting {weighting!r}; choose from {WEIGHTINGS}")
        return self.count if weighting == "count" else self.mass

    def passing_at_sieves(self, weighting: str) -> np.ndarray:
        """(S,) cumulative percent passing each sieve."""
        return self.curve(weighting).percent_passing(self.sieves_mm)

    def retained_at_sieves(self, weighting: str) -> np.ndarray:
        """
        (S,) percent retained on each sieve: sizes in (this sieve, next sieve], and on the top
        sieve all sizes above it (none for the default series).
        """
        return np.diff(self.passing_at_sieves(weighting), append=100.0)


def size_distribution(
    particles: ParticleTable,
    measure: str = "ecd",
    edge_mode: str = "include",
    sieves_mm: Sequence[float] | None = None,
    size_correction: SizeCorrection | None = None,
) -> SizeDistribution:
    """
    Build the count- and mass-weighted size distributions of a particle table.

    Args:
        particles: measured particles (possibly empty).
        measure: size measure, one of LENGTH_MEASURES (default equivalent-circle diameter).
        edge_mode: one of EDGE_MODES, see :func:`edge_weights`.
        sieves_mm: sieve apertures in mm (at least 2, > 0; sorted here); default
            :func:`sieve_series` over the used particles.
        size_correction: see :func:`particle_weights`.
    """
    sizes = particles.size_mm(measure)
    weights = particle_weights(particles, edge_mode, size_correction)
    records = particles.records
    count = CumulativeCurve.from_particles(sizes, weights)
    mass = CumulativeCurve.from_particles(sizes, weights * mass_proxy(particles))
    if sieves_mm is not None:
        sieves = np.unique(np.asarray(sieves_mm, dtype=np.float64))
        if sieves.ndim != 1 or len(sieves) < 2 or not (sieves > 0).all():
            raise ValueError(f"sieves_mm must hold at least 2 sizes > 0, got {sieves_mm!r}")
    elif len(count):
        sieves = sieve_series(count.sizes[0], count.sizes[-1])
    else:
        sieves = np.zeros(0)
    return SizeDistribution(
        measure=measure,
        edge_mode=edge_mode,
        n_particles=len(records),
        n_border=int(records["touches_border"].sum()),
        n_used=len(count),
        n_spanning_frame=int(
            np.sum(
                (records["bbox_w"] >= records["image_width"])
                | (records["bbox_h"] >= records["image_height"])
            )
        ),
        count=count,
        mass=mass,
        sieves_mm=sieves,
        size_correction=size_correction,
    )
