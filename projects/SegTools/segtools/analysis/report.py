"""
Particle-size reports: CSV tables, a JSON summary, a sieve-curve plot and a size overlay.

A report folder holds:

* ``particles.csv``: one row per particle, measures in px and mm, border flag and weights;
* ``distribution.csv``: per sieve, percent retained and cumulative percent passing, by count
  and by mass, with the passing's bootstrap interval;
* ``summary.json``: scale, counts (border particles included, annotations skipped unmeasured
  by reason), edge mode, size correction, D-values with their bootstrap intervals and fits by
  count and by mass, and the statements of how mass, interpolation, topsize and the intervals
  are defined;
* ``psd.png``: cumulative passing on a log size axis with its bootstrap band, and the histogram
  over the sieve series.
"""

import csv
import io
import math
import os
from collections.abc import Mapping

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ..atomic_io import (
    atomic_directory,
    atomic_write_image,
    atomic_write_json,
    atomic_write_text,
    check_new_or_empty_folder,
    strict_json_value,
)
from ..data.coco_format import decode_in_box
from .bootstrap import BAND_PERCENTS, BootstrapBands, BootstrapOptions, bootstrap_bands
from .distribution import (
    D_PERCENTS,
    INTERPOLATION,
    MASS_PROXY,
    TOPSIZE_DEFINITION,
    WEIGHTINGS,
    SizeDistribution,
    edge_weights,
    mass_proxy,
    particle_weights,
    size_distribution,
)
from .fits import FitResult, fit_models
from .size_correction import SizeCorrection
from .size_measures import LENGTH_MEASURES, ParticleTable

__all__ = [
    "DISTRIBUTION_CSV",
    "PARTICLES_CSV",
    "PLOT_PNG",
    "SKIPPED_CSV",
    "SUMMARY_JSON",
    "d_values_csv",
    "d_values_text",
    "csv_text",
    "draw_size_overlay",
    "render_psd_plot",
    "skipped_csv",
    "skipped_text",
    "summarize",
    "write_psd_report",
]

PARTICLES_CSV = "particles.csv"
DISTRIBUTION_CSV = "distribution.csv"
SUMMARY_JSON = "summary.json"
PLOT_PNG = "psd.png"
SKIPPED_CSV = "skipped.csv"

# Reports carry bootstrap intervals unless asked not to.
DEFAULT_BOOTSTRAP = BootstrapOptions()
_COLOURS = {"count": "tab:blue", "mass": "tab:red"}
_FIT_STYLES = {"rosin_rammler": ("Rosin-Rammler", "--"), "swebrec": ("Swebrec", (0, (6, 2, 1, 2)))}


def csv_text(header: list[str], rows) -> str:
    """A CSV file's text: the header line, then one line per row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _particles_csv(
    particles: ParticleTable, edge_mode: str, size_correction: SizeCorrection | None
) -> str:
    records, scale = particles.records, particles.mm_per_px
    weights = particle_weights(particles, edge_mode, size_correction)
    columns = {
        "image_id": records["image_id"],
        "annotation_id": records["annotation_id"],
        "score": records["score"],
        "touches_border": records["touches_border"].astype(int),
        "edge_weight": edge_weights(particles, edge_mode),
        "weight": weights,
        "mass_weight_mm3": weights * mass_proxy(particles),
        "area_px": records["area"],
        "area_mm2": particles.area_mm2(),
    }
    for measure in LENGTH_MEASURES:
        columns[f"{measure}_px"] = records[measure]
        columns[f"{measure}_mm"] = records[measure] * scale
    for name in ("centroid_x", "centroid_y", "bbox_x", "bbox_y", "bbox_w", "bbox_h"):
        columns[f"{name}_px"] = records[name]
    columns["image_width_px"] = records["image_width"]
    columns["image_height_px"] = records["image_height"]
    rows = zip(*(column.tolist() for column in columns.values()), strict=True)
    return csv_text(list(columns), rows)


def _distribution_csv(distribution: SizeDistribution, bands: BootstrapBands | None) -> str:
    columns = {"sieve_mm": distribution.sieves_mm}
    for weighting in WEIGHTINGS:
        columns[f"retained_{weighting}_pct"] = distribution.retained_at_sieves(weighting)
        columns[f"passing_{weighting}_pct"] = distribution.passing_at_sieves(weighting)
        no_band = np.full(len(distribution.sieves_mm), math.nan)
        low, high = bands.passing_pct[weighting] if bands else (no_band, no_band)
        columns[f"passing_{weighting}_pct_low"] = low
        columns[f"passing_{weighting}_pct_high"] = high
    rows = zip(*(column.tolist() for column in columns.values()), strict=True)
    return csv_text(list(columns), rows)


def skipped_csv(rows) -> str:
    """CSV text of annotations skipped unmeasured: rows of (image_id, annotation_id, reason)."""
    return csv_text(["image_id", "annotation_id", "reason"], rows)


def skipped_text(skipped: Mapping[str, int]) -> str:
    """
    One line, e.g. "3 annotations skipped: 2 empty segmentation, 1 wholly outside the image".

    Args:
        skipped: {reason: count}; shown most frequent first.
    """
    total = sum(skipped.values())
    by_count = sorted(skipped.items(), key=lambda item: -item[1])
    reasons = ", ".join(f"{count} {reason}" for reason, count in by_count)
    return f"{total} annotation{'' if total == 1 else 's'} skipped: {reasons}"


def summarize(
    distribution: SizeDistribution,
    fits: Mapping[str, Mapping[str, FitResult]],
    mm_per_px: float,
    title: str = "",
    skipped: Mapping[str, int] | None = None,
    bands: BootstrapBands | None = None,
) -> dict:
    """
    The JSON summary of a report (NaN written as null).

    Args:
        fits: {weighting: {model: FitResult}} for weightings "count" and "mass".
        skipped: {reason: count} of the annotations left out unmeasured (e.g. without a pixel).
        bands: the bootstrap intervals, if any.
    """
    skipped = dict(skipped or {})
    count = distribution.count
    return strict_json_value(
        {
            "title": title,
            "mm_per_px": mm_per_px,
            "size_measure": distribution.measure,
            "edge_mode": distribution.edge_mode,
            "counts": {
                "particles": distribution.n_particles,
                "border": distribution.n_border,
                "used": distribution.n_used,
                "excluded": distribution.n_particles - distribution.n_used,
                "spanning_frame": distribution.n_spanning_frame,
                "skipped": sum(skipped.values()),
            },
            "skipped_by_reason": skipped,
            "weighting": {
                "count": "each used particle weighs its edge weight"
                + (" x its size bin's factor" if distribution.size_correction else ""),
                "mass": f"count weight x mass proxy; {MASS_PROXY}",
            },
            "size_correction": (
                distribution.size_correction.to_dict() if distribution.size_correction else None
            ),
            "interpolation": INTERPOLATION,
            "topsize_definition": TOPSIZE_DEFINITION,
            "d_values_mm": {w: distribution.curve(w).d_values() for w in WEIGHTINGS},
            "confidence_intervals": _intervals_summary(bands),
            "largest_particle_mm": float(count.sizes[-1]) if len(count) else math.nan,
            "fits": {
                w: {model: fit.to_dict() for model, fit in fits[w].items()} for w in WEIGHTINGS
            },
        }
    )


def _intervals_summary(bands: BootstrapBands | None) -> dict | None:
    if bands is None:
        return None
    return {
        "method": f"percentile bootstrap, resampling {bands.resampled} (see segtools.analysis."
        "bootstrap)",
        "confidence": bands.options.confidence,
        "resamples": bands.options.resamples,
        "seed": bands.options.seed,
        "d_values_mm": {
            w: {name: list(interval) for name, interval in bands.d_values_mm[w].items()}
            for w in WEIGHTINGS
        },
    }


def render_psd_plot(
    distribution: SizeDistribution,
    fits: Mapping[str, Mapping[str, FitResult]],
    title: str = "",
    bands: BootstrapBands | None = None,
) -> np.ndarray:
    """
    Cumulative passing (log size axis; count and mass, fits dashed, D50/D80 marked, bootstrap
    bands shaded) beside the histogram over the sieve series.

    Returns:
        (H, W, 3) BGR uint8 image.
    """
    # Constrained layout keeps the axis labels and the two-line title inside the picture.
    figure = Figure(figsize=(12, 4.8), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    curve_axes, histogram_axes = figure.subplots(1, 2)
    figure.suptitle(title or "Particle-size distribution")
    size_label = f"size: {distribution.measure} (mm)"
    if distribution.n_used == 0:
        for axes in (curve_axes, histogram_axes):
            axes.text(0.5, 0.5, "no particles", ha="center", va="center", transform=axes.transAxes)
    else:
        for weighting in WEIGHTINGS:
            curve, colour = distribution.curve(weighting), _COLOURS[weighting]
            curve_axes.plot(
                curve.sizes, curve.plotting_percent(), color=colour, label=f"by {weighting}"
            )
            if bands is not None:
                low, high = bands.band_mm[weighting]
                confidence = round(100 * bands.options.confidence)
                curve_axes.fill_betweenx(
                    BAND_PERCENTS,
                    low,
                    high,
                    color=colour,
                    alpha=0.15,
                    linewidth=0,
                    label=f"{confidence}% interval by {weighting}",
                )
            dense_sizes = np.geomspace(curve.sizes[0], curve.sizes[-1], 200)
            for model, fit in fits[weighting].items():
                if fit.fitted:
                    name, style = _FIT_STYLES[model]
                    curve_axes.plot(
                        dense_sizes,
                        fit.percent_passing(dense_sizes),
                        color=colour,
                        linestyle=style,
                        linewidth=1,
                        label=f"{name} by {weighting} (R²={fit.r2:.3f})",
                    )
            d_values = curve.d_values()
            for percent in (50, 80):
                size = d_values[f"D{percent}"]
                curve_axes.plot(size, percent, "o", color=colour)
                curve_axes.annotate(
                    f"D{percent}={size:.3g}",
                    (size, percent),
                    xytext=(4, -12),
                    textcoords="offset points",
                    color=colour,
                    fontsize=8,
                )
            histogram_axes.stairs(
                distribution.retained_at_sieves(weighting)[:-1],
                distribution.sieves_mm,
                color=colour,
                label=f"by {weighting}",
            )
        sieve_labels = [f"{size:.3g}" for size in distribution.sieves_mm]
        for axes in (curve_axes, histogram_axes):
            axes.set_xscale("log")
            # Label the sieves only: log-axis minor labels overlap on narrow size ranges.
            axes.set_xticks(distribution.sieves_mm, sieve_labels, rotation=45, fontsize=8)
            axes.xaxis.set_minor_formatter(NullFormatter())
        curve_axes.legend(fontsize=7, loc="lower right")
        histogram_axes.legend(fontsize=8)
    curve_axes.set(xlabel=size_label, ylabel="cumulative passing (%)", ylim=(0, 100))
    curve_axes.grid(True, which="both", alpha=0.3)
    histogram_axes.set(xlabel=f"sieve class, {size_label}", ylabel="retained (%)")
    counts = (
        f"{distribution.n_used} particles used of {distribution.n_particles}, "
        f"{distribution.n_border} touching the border, edge mode {distribution.edge_mode}"
        + ("\nweighted by the model's size correction" if distribution.size_correction else "")
    )
    histogram_axes.set_title(counts, fontsize=9)
    canvas.draw()
    return cv2.cvtColor(np.asarray(canvas.buffer_rgba()), cv2.COLOR_RGBA2BGR)


def write_psd_report(
    particles: ParticleTable,
    out_dir: str,
    measure: str = "ecd",
    edge_mode: str = "include",
    sieves_mm: list[float] | None = None,
    title: str = "",
    skipped: Mapping[str, int] | None = None,
    bootstrap: BootstrapOptions | None = DEFAULT_BOOTSTRAP,
    size_correction: SizeCorrection | None = None,
) -> dict:
    """
    Write the four report files for `particles` into a new folder `out_dir`, all at once.

    Args:
        measure, edge_mode, sieves_mm: as in :func:`size_distribution`.
        title: shown in the plot and the summary.
        skipped: as in :func:`summarize`.
        bootstrap: how to bootstrap the intervals; None: no intervals.
        size_correction: the model's per-size factors (:mod:`.size_correction`), if any.

    Returns:
        The summary written to summary.json.

    Raises:
        FileExistsError: if `out_dir` is a file or a folder that is not empty (an older report
            is never mixed with a new one).
    """
    check_new_or_empty_folder(out_dir, "report folder")
    distribution = size_distribution(particles, measure, edge_mode, sieves_mm, size_correction)
    fits = {weighting: fit_models(distribution.curve(weighting)) for weighting in WEIGHTINGS}
    bands = bootstrap_bands(particles, distribution, bootstrap) if bootstrap else None
    summary = summarize(distribution, fits, particles.mm_per_px, title, skipped, bands)
    with atomic_directory(out_dir) as tmp_dir:
        atomic_write_text(
            os.path.join(tmp_dir, PARTICLES_CSV),
            _particles_csv(particles, edge_mode, size_correction),
        )
        atomic_write_text(
            os.path.join(tmp_dir, DISTRIBUTION_CSV), _distribution_csv(distribution, bands)
        )
        atomic_write_json(os.path.join(tmp_dir, SUMMARY_JSON), summary, indent=2)
        atomic_write_image(
            os.path.join(tmp_dir, PLOT_PNG), render_psd_plot(distribution, fits, title, bands)
        )
    return summary


def draw_size_overlay(
    image: np.ndarray,
    particles: ParticleTable,
    segmentations: Mapping[int, object],
    measure: str = "ecd",
    edge_mode: str = "include",
) -> np.ndarray:
    """
    Outline each measured particle on the photo, coloured by size (viridis on a log scale, dark
    blue = smallest, yellow = largest), particles left out by the edge mode in grey, with a
    colour bar labelled in mm in the top-left corner.

    Args:
        image: (H, W, 3) BGR or (H, W) grey uint8 photo.
        particles: the image's table.
        segmentations: {annotation_id: COCO segmentation} for the table's particles, each
            decoded over its box only.

    Returns:
        (H, W, 3) BGR uint8 image.
    """
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    height, width = canvas.shape[:2]
    thickness = max(1, round(min(height, width) / 400))
    sizes = particles.size_mm(measure)
    used = edge_weights(particles, edge_mode) > 0
    if not used.any():
        return canvas
    log_low, log_high = np.log(sizes[used].min()), np.log(sizes[used].max())
    levels = np.clip((np.log(sizes) - log_low) / max(log_high - log_low, 1e-12), 0, 1)
    colours = cv2.applyColorMap(np.uint8(levels * 255).reshape(-1, 1), cv2.COLORMAP_VIRIDIS)
    for record, colour, is_used in zip(particles.records, colours[:, 0], used, strict=True):
        mask, origin = decode_in_box(segmentations[int(record["annotation_id"])], height, width)
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=origin
        )
        outline = colour.tolist() if is_used else [160, 160, 160]
        cv2.drawContours(canvas, contours, -1, outline, thickness)

    _draw_colour_bar(canvas, math.exp(log_low), math.exp(log_high), measure)
    return canvas


def _draw_colour_bar(canvas: np.ndarray, low_mm: float, high_mm: float, measure: str) -> None:
    """Draw the viridis scale from `low_mm` to `high_mm` top left, if the image is big enough."""
    height, width = canvas.shape[:2]
    bar_w, bar_h = width // 4, max(4, height // 40)
    if bar_w < 16 or 4 * bar_h > height:
        return
    bar = cv2.applyColorMap(np.linspace(0, 255, bar_w).astype(np.uint8)[None], cv2.COLORMAP_VIRIDIS)
    canvas[bar_h : 2 * bar_h, bar_h : bar_h + bar_w] = np.repeat(bar, bar_h, axis=0)
    font_scale = max(0.3, min(height, width) / 1200)
    labels = ((f"{low_mm:.3g}", bar_h), (f"{high_mm:.3g} mm ({measure})", bar_h + bar_w))
    for text, x in labels:
        cv2.putText(
            canvas, text, (x, 3 * bar_h + 2), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255)
        )


def _d_values_rows(summaries: Mapping[str, dict]) -> tuple[list[str], list[list[str]]]:
    names = [f"D{p}" for p in D_PERCENTS] + ["topsize"]
    counted = ("particles", "border", "used", "skipped")
    bounds = [f"{n}_{end}_mm" for n in names for end in ("low", "high")]
    header = ["report", "weighting", *counted, *(f"{n}_mm" for n in names), *bounds]

    def cell(value) -> str:
        return "nan" if value is None else f"{value:.4g}"

    rows = []
    for report_name, summary in summaries.items():
        counts = summary["counts"]
        intervals = summary.get("confidence_intervals")
        for weighting in WEIGHTINGS:
            d_values = summary["d_values_mm"][weighting]
            limits = intervals["d_values_mm"][weighting] if intervals else {}
            rows.append(
                [report_name, weighting]
                + [str(counts[key]) for key in counted]
                + [cell(d_values[n]) for n in names]
                + [cell(limits[n][end]) if n in limits else "nan" for n in names for end in (0, 1)]
            )
    return header, rows


def d_values_csv(summaries: Mapping[str, dict]) -> str:
    """CSV text of the D-values of several reports, {report name: summary}, by count and mass."""
    return csv_text(*_d_values_rows(summaries))


def d_values_text(summaries: Mapping[str, dict]) -> str:
    """The same table as :func:`d_values_csv`, aligned for a terminal."""
    header, rows = _d_values_rows(summaries)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if i > 1 else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    )
