"""
Size correction: per-size detection efficiency of a model, measured on annotated images, so that
a sieve curve from its predictions counts each size as often as the annotations do.

A detector misses small particles more often than large ones (on the synthetic ore set LosNet
finds about 1 in 10 annotated particles under 10 px and 9 in 10 above 30 px at its count-calibrated
threshold), so its count curve is too coarse even when its total count is right. Image-analysis
fragmentation tools correct for this with a "fines correction" fitted to sieving; here the
correction is fitted to annotated images: the predicted sizes are cut into bins holding equal
numbers of predictions, and each bin's factor is the number of annotated particles of those sizes
over the number predicted. A predicted particle then weighs its bin's factor in both the count
and the mass curve (bin-by-bin unfolding; it moves no particle to another size, so it cannot
create sizes the model never reports).

Sizes are equivalent-circle diameters in pixels of the image the model sees, because detection
efficiency depends on how many pixels a particle covers, not on its size in mm.
"""

from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_PREDICTIONS_PER_BIN", "SizeCorrection", "fit_size_correction"]

# Fewer predictions per bin make the factors mostly noise.
MIN_PREDICTIONS_PER_BIN = 30


@dataclass(frozen=True)
class SizeCorrection:
    """
    Attributes:
        edges_px: (K - 1,) ascending ECD bin edges, px; bin k holds sizes in
            [edges_px[k - 1], edges_px[k]), the first bin from 0 and the last to infinity.
        factors: (K,) weight of a predicted particle in each bin, >= 0.
    """

    edges_px: tuple
    factors: tuple

    def __post_init__(self):
        edges = np.asarray(self.edges_px, dtype=np.float64)
        factors = np.asarray(self.factors, dtype=np.float64)
        if edges.ndim != 1 or not (np.isfinite(edges).all() and (edges > 0).all()):
            raise ValueError(f"size correction edges_px must be sizes > 0, got {self.edges_px!r}")
        if (np.diff(edges) <= 0).any():
            raise ValueError(f"size correction edges_px must ascend, got {self.edges_px!r}")
        if factors.shape != (len(edges) + 1,) or not (
            np.isfinite(factors).all() and (factors >= 0).all()
        ):
            raise ValueError(
                f"size correction factors must be {len(edges) + 1} numbers >= 0 (one more than "
                f"edges_px), got {self.factors!r}"
            )

    def factors_for(self, ecd_px: np.ndarray) -> np.ndarray:
        """(N,) factor of each of the (N,) sizes `ecd_px`."""
        bins = np.searchsorted(np.asarray(self.edges_px), np.asarray(ecd_px), side="right")
        return np.asarray(self.factors, dtype=np.float64)[bins]

    def to_dict(self) -> dict:
        return {"edges_px": list(self.edges_px), "factors": list(self.factors)}

    @classmethod
    def from_dict(cls, fields) -> "SizeCorrection":
        """Raises ValueError naming what is wrong with `fields`."""
        if not isinstance(fields, dict) or set(fields) != {"edges_px", "factors"}:
            raise ValueError(f"a size correction has edges_px and factors, got {fields!r}")
        try:
            edges = tuple(float(v) for v in fields["edges_px"])
            factors = tuple(float(v) for v in fields["factors"])
        except (TypeError, ValueError):
            raise ValueError(f"size correction values must be numbers, got {fields!r}") from None
        return cls(edges, factors)


def fit_size_correction(
    predicted_px: np.ndarray, annotated_px: np.ndarray, bins: int
) -> SizeCorrection | None:
    """
    Fit the correction that maps the predicted sizes' histogram onto the annotated one.

    Args:
        predicted_px: (N,) ECD of the predictions kept, px.
        annotated_px: (M,) ECD of the annotated particles of the same images, px.
        bins: at most this many bins; fewer when there are fewer than
            :data:`MIN_PREDICTIONS_PER_BIN` predictions per bin, or tied sizes.

    Returns:
        None when bins is 0 or there are too few predictions for one bin.
    """
    predicted = np.asarray(predicted_px, dtype=np.float64)
    annotated = np.asarray(annotated_px, dtype=np.float64)
    bins = min(int(bins), len(predicted) // MIN_PREDICTIONS_PER_BIN)
    if bins < 1:
        return None
    edges = np.unique(np.quantile(predicted, np.arange(1, bins) / bins))
    edges = edges[edges > 0]
    predicted_counts = _bin_counts(predicted, edges)
    while (predicted_counts == 0).any():
        # Tied sizes can leave a bin below a quantile edge empty: merge it upwards.
        empty = int(np.argmin(predicted_counts))
        edges = np.delete(edges, max(empty - 1, 0) if empty else 0)
        predicted_counts = _bin_counts(predicted, edges)
    factors = _bin_counts(annotated, edges) / predicted_counts
    return SizeCorrection(tuple(edges.tolist()), tuple(factors.tolist()))


def _bin_counts(sizes: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(len(edges) + 1,) counts of `sizes` in the bins of :meth:`SizeCorrection.factors_for`."""
    bins = np.searchsorted(edges, sizes, side="right")
    return np.bincount(bins, minlength=len(edges) + 1)
