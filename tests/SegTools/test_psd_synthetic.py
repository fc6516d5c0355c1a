"""Particle-size distributions from synthetic ore ground truth against the true particle sizes."""

import json
import math
import re
from dataclasses import asdict

import numpy as np
import pytest

from segtools.analysis import fit_size_correction, psd_accuracy
from segtools.calibration import CountCalibration
from segtools.data.coco_input import CocoFormatError
from segtools.data.synthetic_ore import generate_synthetic_ore

from helpers import load_script


@pytest.fixture(scope="module")
def ground_truth(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("synthetic") / "ore")
    return generate_synthetic_ore(folder, 12, seed=4, size=(320, 320), show_progress=False)


def rows_of(rows, subset_start):
    return {r.weighting: r for r in rows if r.subset.startswith(subset_start)}


def test_whole_particles_measure_their_true_d50_d80_within_3_percent(ground_truth):
    whole = rows_of(psd_accuracy(ground_truth), "ground truth, interior, <= 5% hidden")
    assert set(whole) == {"count", "mass"}
    for row in whole.values():
        assert row.particles == row.truth_particles >= 100
        for d_value in ("D50", "D80"):
            assert abs(row.relative_error[d_value]) <= 0.03, row


def test_occlusion_biases_sizes_down(ground_truth):
    rows = psd_accuracy(ground_truth)
    whole = rows_of(rows, "ground truth, interior, <=")
    occluded = rows_of(rows, "ground truth, interior (occlusion bias)")
    for weighting in ("count", "mass"):
        assert occluded[weighting].particles > whole[weighting].particles
    # Hidden parts shrink the visible masks. By count, most particles are small and many are
    # partly hidden: a clear underestimate.
    for d_value in ("D50", "D80"):
        assert occluded["count"].relative_error[d_value] < -0.05
    # By mass the big particles dominate, and they lose proportionally less: never an
    # overestimate, and D50 lower than for whole particles.
    assert all(error <= 0.0 for error in occluded["mass"].relative_error.values())
    assert occluded["mass"].relative_error["D50"] < whole["mass"].relative_error["D50"]


def test_predictions_equal_to_ground_truth_give_the_occlusion_row(ground_truth, tmp_path):
    with open(ground_truth) as f:
        annotations = json.load(f)["annotations"]
    results = [
        {
            "image_id": a["image_id"],
            "category_id": 1,
            "segmentation": a["segmentation"],
            "score": 1.0,
        }
        for a in annotations
    ]
    predictions = tmp_path / "results.json"
    predictions.write_text(json.dumps(results))
    rows = psd_accuracy(ground_truth, str(predictions))
    occluded = rows_of(rows, "ground truth, interior (occlusion bias)")
    predicted = rows_of(rows, "predictions, interior")
    against_visible = rows_of(rows, "predictions, interior, vs visible ground truth")
    for weighting in ("count", "mass"):
        assert predicted[weighting].particles == occluded[weighting].particles
        assert predicted[weighting].measured == occluded[weighting].measured
        assert set(against_visible[weighting].relative_error.values()) == {0.0}


def test_size_correction_restores_the_small_particles_a_model_misses(ground_truth, tmp_path):
    """
    A "model" that finds every particle of its ground truth but only one in three below 20 px:
    its count D50 is too coarse; weighed by the size correction fitted on what it found, its
    D50 comes back to the visible ground truth's.
    """
    with open(ground_truth) as f:
        data = json.load(f)
    interior = [a for a in data["annotations"] if not a["touches_border"]]
    ecd = {a["id"]: math.sqrt(4 * a["area"] / math.pi) for a in data["annotations"]}
    small = [a for a in data["annotations"] if ecd[a["id"]] < 20]
    found = [a for a in data["annotations"] if ecd[a["id"]] >= 20] + small[::3]
    results = [
        {"image_id": a["image_id"], "category_id": 1, "segmentation": a["segmentation"], "score": 1}
        for a in found
    ]
    predictions = tmp_path / "results.json"
    predictions.write_text(json.dumps(results))
    correction = fit_size_correction(
        np.array([ecd[a["id"]] for a in found if not a["touches_border"]]),
        np.array([ecd[a["id"]] for a in interior]),
        bins=8,
    )
    assert len(correction.factors) == 8 and correction.factors[0] > 2
    calibration = CountCalibration(0.5, "val", 12, len(interior), len(found), "w.pth", "0" * 64,
                                   "LosNet", size_correction=correction)  # fmt: skip
    calibration_file = tmp_path / "model_final.calibration.json"
    calibration_file.write_text(json.dumps(asdict(calibration)))
    out = tmp_path / "accuracy.json"
    argv = ["--ground-truth", ground_truth, "--predictions", str(predictions),
            "--calibration", str(calibration_file), "--json", str(out)]  # fmt: skip
    assert load_script("psd_accuracy").main(argv) == 0
    rows = {(r["subset"], r["weighting"]): r for r in json.loads(out.read_text())}
    plain = rows[("predictions, interior, vs visible ground truth", "count")]
    corrected = rows[("predictions, interior, size-corrected, vs visible ground truth", "count")]
    assert plain["relative_error"]["D50"] > 0.10
    assert abs(corrected["relative_error"]["D50"]) < 0.03
    assert corrected["particles"] == plain["particles"] < plain["truth_particles"]


def test_script_prints_the_table(ground_truth, tmp_path, capsys):
    out = tmp_path / "accuracy.json"
    assert (
        load_script("psd_accuracy").main(["--ground-truth", ground_truth, "--json", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "occlusion bias" in printed and "D50" in printed
    assert len(json.loads(out.read_text())) == 4


def test_a_file_without_true_sizes_is_named(tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "height": 10, "width": 10, "file_name": "a.png"}],
                "annotations": [
                    {"id": 7, "image_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]], "category_id": 1}
                ],
                "categories": [{"id": 1, "name": "ore"}],
            }
        )
    )
    expected = "plain.json: annotations[0]['true_diameter_px'] is missing: expected the true sizes"
    with pytest.raises(CocoFormatError, match=re.escape(expected)):
        psd_accuracy(str(plain))
