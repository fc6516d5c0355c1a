"""Bootstrap intervals of the size distribution: coverage, reproducibility, images as clusters."""

import csv
import json
import math
import os

import cv2
import numpy as np
import pytest

from segtools.analysis import size_distribution, write_psd_report
from segtools.analysis.bootstrap import BootstrapOptions, bootstrap_bands
from segtools.analysis.size_measures import PARTICLE_DTYPE, ParticleTable
from segtools.cli import run_tool
from segtools.data.synthetic_ore import generate_synthetic_ore

from helpers import load_script


def lognormal_table(count, seed, image_ids=None, median_mm=10.0, sigma=0.5) -> ParticleTable:
    """`count` particles of lognormal ECD (median `median_mm`), away from the frame border."""
    sizes = median_mm * np.exp(sigma * np.random.default_rng(seed).standard_normal(count))
    records = np.zeros(count, dtype=PARTICLE_DTYPE)
    records["image_id"] = 0 if image_ids is None else image_ids
    records["annotation_id"] = np.arange(count)
    records["image_width"] = records["image_height"] = 10_000
    records["ecd"] = sizes
    records["area"] = math.pi / 4 * sizes**2
    records["bbox_w"] = records["bbox_h"] = 1
    return ParticleTable(records, mm_per_px=1.0)


def d50_interval(table, options=None):
    options = options or BootstrapOptions(resamples=200)
    bands = bootstrap_bands(table, size_distribution(table), options)
    return bands.d_values_mm["count"]["D50"]


def test_d50_interval_covers_the_true_median_at_its_confidence():
    # 100 independent samples of 150 particles: a 90 % interval misses the median 10 times on
    # average; 4-17 misses keep a false alarm below 1 %.
    options = BootstrapOptions(resamples=200, confidence=0.9)
    misses = sum(
        not (low <= 10.0 <= high)
        for low, high in (d50_interval(lognormal_table(150, seed), options) for seed in range(100))
    )
    assert 4 <= misses <= 17


def test_interval_narrows_as_one_over_the_root_of_the_count():
    width = {n: np.subtract(*d50_interval(lognormal_table(n, seed=1))[::-1]) for n in (200, 3200)}
    assert 0.15 < width[3200] / width[200] < 0.4  # 1 / sqrt(16) = 0.25


def test_seeded_reports_are_reproducible():
    table = lognormal_table(300, seed=2)
    distribution = size_distribution(table)
    same = [bootstrap_bands(table, distribution, BootstrapOptions(seed=5)) for _ in range(2)]
    other = bootstrap_bands(table, distribution, BootstrapOptions(seed=6))
    assert same[0].d_values_mm == same[1].d_values_mm != other.d_values_mm


def test_images_are_resampled_as_clusters():
    # Four belt photos of different material: particles within a photo are alike, so the
    # uncertainty of the run's D50 comes from which photos were taken, not from the particle
    # count. Resampling particles alone would hide it.
    image_ids = np.repeat(np.arange(4), 250)
    table = lognormal_table(1000, seed=3, image_ids=image_ids, sigma=0.1)
    table.records["ecd"] *= np.array([0.6, 0.9, 1.2, 1.6])[image_ids]
    table.records["area"] = math.pi / 4 * table.records["ecd"] ** 2
    pooled = ParticleTable(table.records.copy(), 1.0)
    pooled.records["image_id"] = 0
    clustered_low, clustered_high = d50_interval(table)
    pooled_low, pooled_high = d50_interval(pooled)
    assert (clustered_high - clustered_low) > 4 * (pooled_high - pooled_low)
    bands = bootstrap_bands(table, size_distribution(table), BootstrapOptions(resamples=20))
    assert bands.resampled == "images and particles"


def test_too_few_particles_give_no_interval():
    assert bootstrap_bands(lognormal_table(1, 0), size_distribution(lognormal_table(1, 0)),
                           BootstrapOptions()) is None  # fmt: skip
    with pytest.raises(ValueError, match="resamples"):
        BootstrapOptions(resamples=1)
    with pytest.raises(ValueError, match="confidence"):
        BootstrapOptions(confidence=1.0)


def test_report_carries_the_intervals(tmp_path):
    table = lognormal_table(400, seed=4)
    summary = write_psd_report(table, str(tmp_path / "report"))
    intervals = summary["confidence_intervals"]
    assert (intervals["confidence"], intervals["resamples"], intervals["seed"]) == (0.95, 1000, 0)
    for weighting in ("count", "mass"):
        for name, (low, high) in intervals["d_values_mm"][weighting].items():
            assert low <= summary["d_values_mm"][weighting][name] <= high, (weighting, name)
    with open(tmp_path / "report" / "summary.json") as f:
        assert json.load(f)["confidence_intervals"] == intervals
    with open(tmp_path / "report" / "distribution.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for weighting in ("count", "mass"):
            low, high = (float(row[f"passing_{weighting}_pct_{end}"]) for end in ("low", "high"))
            assert low <= float(row[f"passing_{weighting}_pct"]) <= high
    # The band is drawn: the plot has the count band's light blue.
    plot = cv2.imread(os.path.join(tmp_path, "report", "psd.png"))
    light_blue = np.all(np.abs(plot.astype(int) - [244, 235, 221]) < 12, axis=-1)
    assert light_blue.sum() > 500


def test_report_without_bootstrap_has_no_intervals(tmp_path):
    summary = write_psd_report(lognormal_table(50, 5), str(tmp_path / "r"), bootstrap=None)
    assert summary["confidence_intervals"] is None


def test_psd_cli_bootstrap_options(tmp_path, capsys):
    psd = load_script("psd")
    json_file = generate_synthetic_ore(str(tmp_path / "set"), 3, seed=4, size=(96, 96),
                                       show_progress=False)  # fmt: skip

    def run(out, *flags):
        argv = ["--coco-json", json_file, "--mm-per-px", "0.5", "--out", str(tmp_path / out),
                "--no-progress", *flags]  # fmt: skip
        return run_tool(psd.main, argv)

    def intervals(out, report="all"):
        with open(tmp_path / out / report / "summary.json") as f:
            return json.load(f)["confidence_intervals"]

    assert run("a", "--bootstrap-seed", "3") == 0 and run("b", "--bootstrap-seed", "3") == 0
    assert intervals("a") == intervals("b") and intervals("a")["seed"] == 3
    assert intervals("a")["method"].endswith("resampling images and particles (see "
                                             "segtools.analysis.bootstrap)")  # fmt: skip
    assert run("c", "--bootstrap", "0") == 0 and intervals("c") is None
    with open(tmp_path / "a" / "d_values.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["D50_low_mm"]) <= float(row["D50_mm"]) <= float(row["D50_high_mm"])
    assert run("d", "--bootstrap", "1") == 2
    assert "--bootstrap 1: give 0 (no intervals) or at least 2" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "d")
