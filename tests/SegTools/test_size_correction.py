"""Size correction: fitting per-size detection efficiency and weighing reports with it."""

import csv
import json
import math

import numpy as np
import pytest

from segtools.analysis import SizeCorrection, fit_size_correction, size_distribution
from segtools.analysis.bootstrap import BootstrapOptions, bootstrap_bands
from segtools.analysis.report import write_psd_report
from segtools.analysis.size_correction import MIN_PREDICTIONS_PER_BIN
from segtools.analysis.size_measures import PARTICLE_DTYPE, ParticleTable


def table_of(ecd_px, border=None, mm_per_px=0.5) -> ParticleTable:
    """Particles of the given ECDs (px) in a large frame, some flagged as touching its border."""
    ecd_px = np.asarray(ecd_px, dtype=np.float64)
    records = np.zeros(len(ecd_px), dtype=PARTICLE_DTYPE)
    records["annotation_id"] = np.arange(len(ecd_px))
    records["image_width"] = records["image_height"] = 10_000
    records["ecd"] = ecd_px
    records["area"] = math.pi / 4 * ecd_px**2
    records["bbox_w"] = records["bbox_h"] = 1
    records["touches_border"] = False if border is None else border
    return ParticleTable(records, mm_per_px=mm_per_px)


def test_factors_are_annotated_over_predicted_counts_per_bin():
    predicted = np.repeat([5.0, 15.0, 25.0], 30)
    # Twice as many small particles annotated, as many middle ones, half the large ones.
    annotated = np.repeat([4.0, 14.0, 30.0], [60, 30, 15])
    correction = fit_size_correction(predicted, annotated, bins=3)
    assert len(correction.edges_px) == 2
    assert 5 < correction.edges_px[0] < 15 < correction.edges_px[1] < 25
    assert correction.factors == pytest.approx((2.0, 1.0, 0.5))
    assert correction.factors_for(np.array([1.0, 15.0, 100.0])).tolist() == [2.0, 1.0, 0.5]


@pytest.mark.parametrize("seed", range(5))
def test_weighted_predictions_reproduce_the_annotated_histogram(seed):
    rng = np.random.default_rng(seed)
    # Integer sizes: many ties, some of them on the quantile edges.
    predicted = rng.integers(8, 60, size=400).astype(np.float64)
    annotated = rng.integers(3, 70, size=520).astype(np.float64)
    correction = fit_size_correction(predicted, annotated, bins=8)
    bounds = np.concatenate([[-np.inf], correction.edges_px, [np.inf]])
    weights = correction.factors_for(predicted)
    for low, high in zip(bounds[:-1], bounds[1:], strict=True):
        predicted_in_bin = (predicted >= low) & (predicted < high)
        annotated_in_bin = (annotated >= low) & (annotated < high)
        assert predicted_in_bin.sum() > 0
        assert weights[predicted_in_bin].sum() == pytest.approx(annotated_in_bin.sum())
    # So the total count is the annotated one.
    assert weights.sum() == pytest.approx(len(annotated))


def test_bins_shrink_to_the_predictions_there_are():
    predicted = np.linspace(5, 50, 2 * MIN_PREDICTIONS_PER_BIN + 5)
    correction = fit_size_correction(predicted, predicted, bins=8)
    assert len(correction.factors) == 2
    assert fit_size_correction(predicted[: MIN_PREDICTIONS_PER_BIN - 1], predicted, 8) is None
    assert fit_size_correction(predicted, predicted, bins=0) is None


def test_all_predictions_of_one_size_give_one_bin():
    correction = fit_size_correction(np.full(100, 12.0), np.arange(1.0, 151.0), bins=8)
    assert correction.edges_px == () and correction.factors == pytest.approx((1.5,))


def test_no_annotations_give_zero_factors():
    correction = fit_size_correction(np.arange(10.0, 70.0), np.zeros(0), bins=2)
    assert correction.factors == (0.0, 0.0)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"edges_px": [10, 5], "factors": [1, 1, 1]}, "must ascend"),
        ({"edges_px": [0, 5], "factors": [1, 1, 1]}, "sizes > 0"),
        ({"edges_px": [5], "factors": [1, 1, 1]}, "must be 2 numbers >= 0"),
        ({"edges_px": [5], "factors": [1, -1]}, "must be 2 numbers >= 0"),
        ({"edges_px": [5], "factors": [1, float("nan")]}, "must be 2 numbers >= 0"),
        ({"edges_px": ["a"], "factors": [1, 1]}, "must be numbers"),
        ({"edges_px": [5]}, "has edges_px and factors"),
        ([1, 2], "has edges_px and factors"),
    ],
)
def test_bad_corrections_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        SizeCorrection.from_dict(fields)


def test_round_trip():
    correction = SizeCorrection((10.0, 20.0), (2.0, 1.0, 0.5))
    assert SizeCorrection.from_dict(json.loads(json.dumps(correction.to_dict()))) == correction


def test_distribution_weighs_each_particle_by_its_bin_factor():
    # 50 small particles seen for every 100 there are; large ones all seen.
    table = table_of(np.r_[np.full(50, 10.0), np.full(100, 40.0)])
    plain = size_distribution(table)
    assert plain.count.d_values()["D50"] == pytest.approx(20.0)  # 40 px at 0.5 mm/px
    corrected = size_distribution(table, size_correction=SizeCorrection((20.0,), (2.0, 1.0)))
    # Now 100 small and 100 large: half passes 5 mm, and D50 lies between them.
    assert corrected.count.percent_passing([5.0])[0] == pytest.approx(50.0)
    assert 5.0 < corrected.count.d_values()["D50"] < 20.0
    # Mass weights carry the factor too: the small ones' mass share doubles.
    small_mass = lambda d: d.mass.percent_passing([5.0])[0]  # noqa: E731
    share = 50 * 10.0**3 / (50 * 10.0**3 + 100 * 40.0**3)
    assert small_mass(plain) == pytest.approx(100 * share)
    doubled = 2 * share / (2 * share + (1 - share))
    assert small_mass(corrected) == pytest.approx(100 * doubled)


def test_zero_factor_leaves_particles_out_of_the_curves_and_their_bands():
    rng = np.random.default_rng(0)
    table = table_of(np.r_[rng.uniform(2, 8, 200), rng.uniform(20, 60, 200)])
    correction = SizeCorrection((10.0,), (0.0, 1.0))
    distribution = size_distribution(table, size_correction=correction)
    assert distribution.n_used == 200 and distribution.count.sizes.min() >= 10.0
    bands = bootstrap_bands(table, distribution, BootstrapOptions(resamples=50))
    for low, _ in bands.d_values_mm["count"].values():
        assert low >= 10.0  # mm, i.e. 20 px: no small particle enters any resample


def test_report_records_the_correction_and_the_weights(tmp_path):
    table = table_of([4.0, 8.0, 30.0, 60.0], border=[False, True, False, False])
    correction = SizeCorrection((10.0,), (3.0, 1.0))
    summary = write_psd_report(
        table, str(tmp_path / "r"), edge_mode="exclude", size_correction=correction
    )
    assert summary["size_correction"] == {"edges_px": [10.0], "factors": [3.0, 1.0]}
    assert "size bin's factor" in summary["weighting"]["count"]
    with open(tmp_path / "r" / "particles.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["edge_weight"]) for r in rows] == [1.0, 0.0, 1.0, 1.0]
    assert [float(r["weight"]) for r in rows] == [3.0, 0.0, 1.0, 1.0]
    plain = write_psd_report(table, str(tmp_path / "plain"), edge_mode="exclude")
    assert plain["size_correction"] is None
    assert summary["d_values_mm"]["count"]["D50"] < plain["d_values_mm"]["count"]["D50"]
