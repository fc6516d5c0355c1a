"""
Rosin-Rammler and Swebrec fits to a cumulative size curve.

Both are fitted by least squares in percent passing (``scipy.optimize.curve_fit``) to the curve's
plotting positions, one point per particle (see ``distribution.INTERPOLATION``); R^2 and RMSE are
taken over the same points. Sizes and size parameters are in the curve's unit (mm).

* Rosin-Rammler: P(x) = 100 (1 - exp(-(x / x_c)^n)).
* Swebrec (Ouchterlony): P(x) = 100 / (1 + (ln(x_max / x) / ln(x_max / x50))^b) for x < x_max,
  100 above; x_max is fitted above the largest particle.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from .distribution import CumulativeCurve

__all__ = [
    "MIN_PARTICLES",
    "MODELS",
    "FitResult",
    "fit_models",
    "fit_rosin_rammler",
    "fit_swebrec",
    "rosin_rammler_passing",
    "rosin_rammler_size",
    "swebrec_passing",
    "swebrec_size",
]

MIN_PARTICLES = 3
MODELS = ("rosin_rammler", "swebrec")

# Largest x_max / (largest particle) the Swebrec fit may reach, and candidates to start from.
_SWEBREC_MAX_RATIO = 1e4
_SWEBREC_START_RATIOS = (1.01, 1.1, 1.5, 2.0, 4.0, 10.0)


def rosin_rammler_passing(x, x_c: float, n: float) -> np.ndarray:
    """Percent passing at sizes `x` of a Rosin-Rammler distribution."""
    return 100.0 * -np.expm1(-((np.asarray(x, dtype=np.float64) / x_c) ** n))


def rosin_rammler_size(percent, x_c: float, n: float) -> np.ndarray:
    """Size at which `percent` (in (0, 100)) passes: x_c (-ln(1 - P))^(1/n)."""
    return x_c * (-np.log1p(-np.asarray(percent, dtype=np.float64) / 100.0)) ** (1.0 / n)


def swebrec_passing(x, x_max: float, x50: float, b: float) -> np.ndarray:
    """Percent passing at sizes `x` of a Swebrec distribution (100 at and above x_max)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.log(x_max / np.minimum(x, x_max)) / math.log(x_max / x50)
        return 100.0 / (1.0 + ratio**b)


def swebrec_size(percent, x_max: float, x50: float, b: float) -> np.ndarray:
    """Size at which `percent` (in (0, 100)) passes."""
    odds = 100.0 / np.asarray(percent, dtype=np.float64) - 1.0
    return x_max * np.exp(-math.log(x_max / x50) * odds ** (1.0 / b))


_PASSING = {"rosin_rammler": rosin_rammler_passing, "swebrec": swebrec_passing}
_SIZE = {"rosin_rammler": rosin_rammler_size, "swebrec": swebrec_size}


@dataclass(frozen=True)
class FitResult:
    """
    A fitted model, or the reason it could not be fitted (then the numbers are NaN).

    Attributes:
        model: one of MODELS.
        fitted: whether the fit succeeded.
        reason: why not, "" when fitted.
        params: keyword parameters of the model's ``*_passing`` function (sizes in mm).
        r2: coefficient of determination over the curve points.
        rmse_pct: root-mean-square residual, in percent passing.
        d50_mm, d80_mm: sizes at which the fitted curve passes 50% and 80%.
        note: a caveat on a fitted model ("" when none), e.g. a parameter stopped at its bound.
    """

    model: str
    fitted: bool
    reason: str
    params: dict[str, float]
    r2: float
    rmse_pct: float
    d50_mm: float
    d80_mm: float
    note: str = ""

    @classmethod
    def not_fitted(cls, model: str, reason: str) -> "FitResult":
        return cls(model, False, reason, {}, math.nan, math.nan, math.nan, math.nan)

    def percent_passing(self, sizes_mm) -> np.ndarray:
        """The fitted curve at `sizes_mm` (NaN when not fitted)."""
        if not self.fitted:
            return np.full(np.shape(sizes_mm), math.nan)
        return _PASSING[self.model](sizes_mm, **self.params)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "fitted": self.fitted,
            "reason": self.reason,
            "params": dict(self.params),
            "r2": self.r2,
            "rmse_pct": self.rmse_pct,
            "d50_mm": self.d50_mm,
            "d80_mm": self.d80_mm,
            "note": self.note,
        }


def _check_curve(curve: CumulativeCurve):
    """The reason `curve` cannot be fitted, or None."""
    if len(curve) < MIN_PARTICLES:
        return f"needs at least {MIN_PARTICLES} particles, got {len(curve)}"
    if curve.sizes[0] == curve.sizes[-1]:
        return "all particles have the same size"
    return None


def _result(
    model: str, params: dict[str, float], curve: CumulativeCurve, note: str = ""
) -> FitResult:
    percent = curve.plotting_percent()
    residuals = _PASSING[model](curve.sizes, **params) - percent
    total = np.sum((percent - percent.mean()) ** 2)
    d50, d80 = _SIZE[model]([50.0, 80.0], **params)
    return FitResult(
        model=model,
        fitted=True,
        reason="",
        params={name: float(value) for name, value in params.items()},
        r2=float(1.0 - np.sum(residuals**2) / total),
        rmse_pct=float(np.sqrt(np.mean(residuals**2))),
        d50_mm=float(d50),
        d80_mm=float(d80),
        note=note,
    )


def _least_squares(function, x, y, start, lower, upper) -> np.ndarray:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", OptimizeWarning)
        params, _ = curve_fit(function, x, y, p0=start, bounds=(lower, upper))
    return params


def fit_rosin_rammler(curve: CumulativeCurve) -> FitResult:
    """Fit Rosin-Rammler (parameters x_c in mm, n) to the curve's plotting positions."""
    model = "rosin_rammler"
    reason = _check_curve(curve)
    if reason:
        return FitResult.not_fitted(model, reason)
    log_x, percent = np.log(curve.sizes), curve.plotting_percent()
    # Start from the linearised form ln(-ln(1 - P)) = n ln x - n ln x_c.
    slope, intercept = np.polyfit(log_x, np.log(-np.log1p(-percent / 100.0)), 1)
    slope = slope if slope > 0 else 1.0
    start = (np.clip(-intercept / slope, log_x[0], log_x[-1]), np.clip(slope, 0.01, 100.0))

    def passing(x, log_x_c, n):
        return rosin_rammler_passing(x, math.exp(log_x_c), n)

    try:
        log_x_c, n = _least_squares(
            passing, curve.sizes, percent, start, (-np.inf, 0.01), (np.inf, 100.0)
        )
    except (RuntimeError, ValueError) as e:
        return FitResult.not_fitted(model, f"least squares failed: {e}")
    return _result(model, {"x_c": math.exp(log_x_c), "n": n}, curve)


def fit_swebrec(curve: CumulativeCurve) -> FitResult:
    """Fit Swebrec (parameters x_max and x50 in mm, b) to the curve's plotting positions."""
    model = "swebrec"
    reason = _check_curve(curve)
    if reason:
        return FitResult.not_fitted(model, reason)
    percent = curve.plotting_percent()
    log_largest = math.log(curve.sizes[-1])
    odds = np.log(100.0 / percent - 1.0)

    # Fitted as (ln x_max, ln ln(x_max / x50), b) so that x50 < x_max holds by construction.
    def passing(x, log_x_max, log_log_ratio, b):
        x_max = math.exp(log_x_max)
        return swebrec_passing(x, x_max, x_max * math.exp(-math.exp(log_log_ratio)), b)

    # Start: for each candidate x_max, the linearised form
    # ln(1 / P - 1) = b ln ln(x_max / x) - b ln ln(x_max / x50); keep the best in percent.
    starts = []
    for ratio in _SWEBREC_START_RATIOS:
        log_x_max = log_largest + math.log(ratio)
        b, intercept = np.polyfit(np.log(log_x_max - np.log(curve.sizes)), odds, 1)
        b = float(np.clip(b, 0.01, 100.0))
        start = (log_x_max, -intercept / b, b)
        starts.append((np.sum((passing(curve.sizes, *start) - percent) ** 2), start))
    start = min(starts, key=lambda item: item[0])[1]

    lower = (log_largest + 1e-9, -np.inf, 0.01)
    upper = (log_largest + math.log(_SWEBREC_MAX_RATIO), np.inf, 100.0)
    try:
        log_x_max, log_log_ratio, b = _least_squares(
            passing, curve.sizes, percent, start, lower, upper
        )
    except (RuntimeError, ValueError) as e:
        return FitResult.not_fitted(model, f"least squares failed: {e}")
    x_max = math.exp(log_x_max)
    x50 = x_max * math.exp(-math.exp(log_log_ratio))
    note = ""
    if log_x_max >= upper[0] - 1e-6:
        # Swebrec tends to a log-logistic curve as x_max grows; the data then set no top size.
        note = (
            f"x_max stopped at its bound ({_SWEBREC_MAX_RATIO:g} x the largest particle): the "
            "data determine no maximum size, and the curve is effectively log-logistic"
        )
    return _result(model, {"x_max": x_max, "x50": x50, "b": b}, curve, note)


def fit_models(curve: CumulativeCurve) -> dict[str, FitResult]:
    """{"rosin_rammler": ..., "swebrec": ...} fitted to `curve`."""
    return {"rosin_rammler": fit_rosin_rammler(curve), "swebrec": fit_swebrec(curve)}
