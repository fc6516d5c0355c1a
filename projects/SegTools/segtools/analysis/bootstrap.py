"""
Bootstrap confidence intervals of a particle-size distribution: D-values, the passing at every
sieve and the whole cumulative curve, by count and by mass.

Resampling follows how the particles were sampled: with particles from several images, images
are drawn with replacement and then, within each drawn image, its particles (a two-stage
bootstrap: particles of one photo are not independent of each other); from one image, particles
only. A particle drawn k times weighs k times its weight. Intervals are the percentile intervals
of the resampled statistics; the generator is seeded, so a report is reproducible.
"""

from dataclasses import dataclass

import numpy as np

from .distribution import (
    D_PERCENTS,
    TOPSIZE_PERCENT,
    WEIGHTINGS,
    CumulativeCurve,
    SizeDistribution,
    mass_proxy,
    particle_weights,
)
from .size_measures import ParticleTable

__all__ = ["BAND_PERCENTS", "BootstrapBands", "BootstrapOptions", "bootstrap_bands"]

# Percents passing at which the plotted band gives the size interval.
BAND_PERCENTS = np.linspace(1, 99, 99)


@dataclass(frozen=True)
class BootstrapOptions:
    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self):
        if not (isinstance(self.resamples, int) and self.resamples >= 2):
            raise ValueError(f"bootstrap resamples must be an integer >= 2, got {self.resamples!r}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"bootstrap confidence must be in (0, 1), got {self.confidence!r}")


@dataclass(frozen=True)
class BootstrapBands:
    """
    Percentile intervals, per weighting ("count", "mass"), each (low, high):

    Attributes:
        resampled: "images and particles" or "particles".
        d_values_mm: {weighting: {"D10": (low, high), ..., "topsize": (low, high)}}.
        passing_pct: {weighting: ((S,) low, (S,) high)} percent passing at each sieve.
        band_mm: {weighting: ((B,) low, (B,) high)} sizes at :data:`BAND_PERCENTS` passing.
    """

    options: BootstrapOptions
    resampled: str
    d_values_mm: dict
    passing_pct: dict
    band_mm: dict


def _uniform_draws(rng, draws: int, items: int, resamples: int | None = None) -> np.ndarray:
    """How often each of `items` is drawn in `draws` draws with replacement."""
    return rng.multinomial(draws, np.full(items, 1 / items), resamples)


def _multiplicities(image_ids: np.ndarray, resamples: int, rng) -> np.ndarray:
    """(resamples, N) how often each particle is drawn, images first if there are several."""
    images, inverse = np.unique(image_ids, return_inverse=True)
    if len(images) < 2:
        return _uniform_draws(rng, len(image_ids), len(image_ids), resamples)
    drawn_images = _uniform_draws(rng, len(images), len(images), resamples)
    counts = np.zeros((resamples, len(image_ids)), dtype=np.int64)
    for image in range(len(images)):
        members = np.flatnonzero(inverse == image)
        # k copies of an image drawing n particles each: one draw of k x n from its particles.
        for resample in np.flatnonzero(drawn_images[:, image]):
            draws = drawn_images[resample, image] * len(members)
            counts[resample, members] = _uniform_draws(rng, draws, len(members))
    return counts


def bootstrap_bands(
    particles: ParticleTable, distribution: SizeDistribution, options: BootstrapOptions
) -> BootstrapBands | None:
    """
    Bootstrap `distribution` (of `particles`) as the module docstring says.

    Returns:
        None when fewer than 2 particles are used (nothing to resample).
    """
    if distribution.n_used < 2:
        return None
    rng = np.random.default_rng(options.seed)
    sizes = particles.size_mm(distribution.measure)
    weights = particle_weights(particles, distribution.edge_mode, distribution.size_correction)
    order = np.argsort(sizes, kind="stable")
    used = order[weights[order] > 0]
    used_sizes = sizes[used]  # ascending
    base = {"count": weights[used], "mass": (weights * mass_proxy(particles))[used]}
    counts = _multiplicities(particles.records["image_id"][used], options.resamples, rng)
    percents = np.array([*D_PERCENTS, TOPSIZE_PERCENT, *BAND_PERCENTS], dtype=np.float64)
    tail = (1 - options.confidence) / 2 * 100
    d_values, passing, band = {}, {}, {}
    for weighting in WEIGHTINGS:
        size_samples, passing_samples = [], []
        for drawn in counts:
            keep = drawn > 0
            curve = CumulativeCurve(used_sizes[keep], (base[weighting] * drawn)[keep])
            size_samples.append(curve.size_at_percent(percents))
            passing_samples.append(curve.percent_passing(distribution.sieves_mm))
        low, high = np.percentile(np.array(size_samples), [tail, 100 - tail], axis=0)
        names = [f"D{p}" for p in D_PERCENTS] + ["topsize"]
        d_values[weighting] = {
            name: (float(low[i]), float(high[i])) for i, name in enumerate(names)
        }
        band[weighting] = (low[len(names) :], high[len(names) :])
        passing[weighting] = tuple(
            np.percentile(np.array(passing_samples), [tail, 100 - tail], axis=0)
        )
    resampled = (
        "images and particles"
        if len(np.unique(particles.records["image_id"][used])) > 1
        else "particles"
    )
    return BootstrapBands(options, resampled, d_values, passing, band)
