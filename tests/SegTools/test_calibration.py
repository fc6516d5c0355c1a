"""Count calibration: the threshold search, calibrate_count.py, and predict.py reading it."""

import csv
import json
import logging
import math
import os
import shutil

import numpy as np
import pytest
from pycocotools import mask as mask_util

from segtools.analysis import SizeCorrection, fit_size_correction
from segtools.calibration import calibration_path, count_threshold
from segtools.cli import run_tool
from segtools.data.coco_format import decode_segmentation
from segtools.data.synthetic_ore import generate_synthetic_ore

from helpers import REPO_ROOT, load_script, save_random_losnet

CONFIG = str(REPO_ROOT / "configs/LosNet/losnet_MV3S_ore_synthetic.yaml")
# A small test size and room for every particle of a dense image.
OPTS = [
    "TEST.DETECTIONS_PER_IMAGE", "100",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128",
]  # fmt: skip

calibrate_script = load_script("calibrate_count")
predict_script = load_script("predict")
psd_script = load_script("psd")

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_threshold_keeps_exactly_the_true_count():
    scores = np.random.default_rng(0).random(500)
    for true_count in (1, 7, 250, 499):
        threshold, kept = count_threshold(scores, true_count, minimum=0.0)
        assert kept == true_count == (scores >= threshold).sum()
    # None wanted: above the best score; more than collected: the collection threshold.
    assert count_threshold(scores, 0, 0.0)[1] == 0
    assert count_threshold(scores, 600, 0.02) == (0.02, 500)
    assert count_threshold(np.zeros(0), 3, 0.02) == (0.02, 0)


def test_tied_scores_keep_the_tie_whole():
    scores = np.array([0.9, 0.6, 0.6, 0.6, 0.1])
    threshold, kept = count_threshold(scores, 2, minimum=0.0)
    assert threshold == pytest.approx(0.6) and kept == 4


@pytest.fixture(scope="module")
def calibration_set(tmp_path_factory):
    """Four 128 x 128 synthetic ore images and their annotations."""
    folder = tmp_path_factory.mktemp("calibration") / "set"
    json_file = generate_synthetic_ore(str(folder), 4, seed=7, size=(128, 128), show_progress=False)
    return json_file, str(folder / "images")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, calibration_set, single_torch_thread):
    """Random LosNet weights, calibrated on the calibration set by calibrate_count.py."""
    weights = save_random_losnet(tmp_path_factory.mktemp("weights") / "model_final.pth")
    json_file, image_root = calibration_set
    argv = ["--config-file", CONFIG, "--weights", weights, "--annotations", json_file,
            "--image-root", image_root, "--", *OPTS]  # fmt: skip
    assert run_tool(calibrate_script.main, argv) == 0
    with open(calibration_path(weights)) as f:
        return weights, json.load(f)


def test_calibration_file_counts_the_annotated_particles(calibrated, calibration_set):
    weights, calibration = calibrated
    with open(calibration_set[0]) as f:
        annotations = json.load(f)["annotations"]
    assert calibration_path(weights).endswith("model_final.calibration.json")
    assert calibration["true_count"] == len(annotations) > 0
    assert calibration["images"] == 4
    assert calibration["count_at_threshold"] == calibration["true_count"]
    assert 0.02 < calibration["score_threshold"] < 1
    assert calibration["weights"] == "model_final.pth"


def predict(weights, images, out, *flags):
    argv = ["--config-file", CONFIG, "--weights", weights, "--input", images,
            "--output", out, *flags, "--", *OPTS]  # fmt: skip
    return run_tool(predict_script.main, [str(a) for a in argv])


def test_predict_uses_the_calibration_and_counts_right(calibrated, calibration_set, tmp_path):
    weights, calibration = calibrated
    assert predict(weights, calibration_set[1], tmp_path / "out") == 0
    with open(tmp_path / "out" / "summary.json") as f:
        summary = json.load(f)
    assert summary["score_threshold"] == calibration["score_threshold"]
    assert summary["score_threshold_from"] == calibration_path(weights)
    # The same images at the same test size: exactly the calibrated count.
    assert summary["instances"] == calibration["true_count"]
    # --score-thresh still wins.
    assert predict(weights, calibration_set[1], tmp_path / "manual", "--score-thresh", "1") == 0
    with open(tmp_path / "manual" / "summary.json") as f:
        manual = json.load(f)
    assert manual["instances"] == 0 and manual["score_threshold_from"] == "--score-thresh"


def interior_ecd(masks) -> list:
    """ECD in px of the (H, W) boolean masks that do not touch the frame's border."""
    return [
        math.sqrt(4 * mask.sum() / math.pi)
        for mask in masks
        if mask.any()
        and not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    ]


def test_calibration_holds_the_size_correction_of_the_kept_detections(
    calibrated, calibration_set, tmp_path
):
    weights, calibration = calibrated
    assert calibration["format"] == 2
    assert predict(weights, calibration_set[1], tmp_path / "out") == 0
    with open(tmp_path / "out" / "results.json") as f:
        predicted = interior_ecd(
            mask_util.decode(r["segmentation"]).astype(bool) for r in json.load(f)
        )
    with open(calibration_set[0]) as f:
        data = json.load(f)
    sizes = {image["id"]: (image["height"], image["width"]) for image in data["images"]}
    annotated = interior_ecd(
        decode_segmentation(a["segmentation"], *sizes[a["image_id"]]) for a in data["annotations"]
    )
    # Fitted independently from what predict.py keeps at the calibrated threshold.
    expected = fit_size_correction(np.array(predicted), np.array(annotated), bins=8)
    stored = SizeCorrection.from_dict(calibration["size_correction"])
    assert len(stored.factors) >= 2
    assert stored.edges_px == pytest.approx(expected.edges_px)
    assert stored.factors == pytest.approx(expected.factors)


def particle_weights_of(report_folder) -> tuple:
    with open(report_folder / "summary.json") as f:
        summary = json.load(f)
    with open(report_folder / "particles.csv") as f:
        rows = list(csv.DictReader(f))
    ecd = np.array([float(r["ecd_px"]) for r in rows])
    return summary, ecd, np.array([float(r["weight"]) for r in rows])


def test_predict_weighs_particle_sizes_by_the_size_correction(
    calibrated, calibration_set, tmp_path
):
    weights, calibration = calibrated
    correction = SizeCorrection.from_dict(calibration["size_correction"])
    psd = ["--psd", "--mm-per-px", "0.5"]
    assert predict(weights, calibration_set[1], tmp_path / "out", *psd) == 0
    summary, ecd, particle_weights = particle_weights_of(tmp_path / "out" / "psd" / "all")
    assert summary["size_correction"] == calibration["size_correction"]
    assert len(ecd) == calibration["true_count"]
    assert particle_weights.tolist() == correction.factors_for(ecd).tolist()
    with open(tmp_path / "out" / "summary.json") as f:
        assert json.load(f)["size_correction"] == calibration["size_correction"]
    # Turned off, or another threshold than the one it was fitted at: every particle weighs 1.
    for name, flags in (("off", ["--no-size-correction"]), ("manual", ["--score-thresh", "0.05"])):
        assert predict(weights, calibration_set[1], tmp_path / name, *psd, *flags) == 0
        summary, _, particle_weights = particle_weights_of(tmp_path / name / "psd" / "all")
        assert summary["size_correction"] is None and (particle_weights == 1).all()


def test_psd_of_saved_predictions_takes_the_calibration(
    calibrated, calibration_set, tmp_path, capsys
):
    weights, calibration = calibrated
    # Predictions of every detection above 0.05; psd.py keeps those above the calibrated threshold.
    assert predict(weights, calibration_set[1], tmp_path / "run", "--score-thresh", "0.05") == 0
    results = str(tmp_path / "run" / "results.json")
    argv = ["--coco-json", results, "--mm-per-px", "1", "--no-progress", "--bootstrap", "0",
            "--calibration", calibration_path(weights)]  # fmt: skip
    assert run_tool(psd_script.main, [*argv, "--out", str(tmp_path / "psd")]) == 0
    summary, ecd, particle_weights = particle_weights_of(tmp_path / "psd" / "all")
    assert summary["size_correction"] == calibration["size_correction"]
    assert len(ecd) == calibration["true_count"]
    correction = SizeCorrection.from_dict(calibration["size_correction"])
    assert particle_weights.tolist() == correction.factors_for(ecd).tolist()
    capsys.readouterr()
    out = str(tmp_path / "both")
    assert run_tool(psd_script.main, [*argv, "--score-thresh", "0.3", "--out", out]) == 2
    assert "--score-thresh contradicts --calibration" in capsys.readouterr().err


def test_calibration_files_without_size_correction_are_read(calibrated, calibration_set, tmp_path):
    weights, calibration = calibrated
    local = tmp_path / "model_final.pth"
    shutil.copy(weights, local)
    old = {k: v for k, v in calibration.items() if k != "size_correction"}
    with open(calibration_path(str(local)), "w") as f:
        json.dump({**old, "format": 1}, f)
    assert predict(local, calibration_set[1], tmp_path / "out", "--psd", "--mm-per-px", "1") == 0
    summary, _, particle_weights = particle_weights_of(tmp_path / "out" / "psd" / "all")
    assert summary["size_correction"] is None and (particle_weights == 1).all()
    assert len(particle_weights) == calibration["true_count"]


def test_bad_size_correction_is_refused(calibrated, calibration_set, tmp_path, capsys):
    weights, calibration = calibrated
    local = tmp_path / "model_final.pth"
    shutil.copy(weights, local)
    broken = {**calibration, "size_correction": {"edges_px": [9.0, 3.0], "factors": [1, 1, 1]}}
    with open(calibration_path(str(local)), "w") as f:
        json.dump(broken, f)
    assert predict(local, calibration_set[1], tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert calibration_path(str(local)) in error and "edges_px must ascend" in error
    assert not os.path.exists(tmp_path / "out")


def test_uncalibrated_weights_fall_back_with_a_warning(calibration_set, tmp_path, caplog):
    weights = save_random_losnet(tmp_path / "other.pth", seed=1)
    with caplog.at_level(logging.WARNING, logger="segtools.calibration"):
        assert predict(weights, calibration_set[1], tmp_path / "out") == 0
    assert "has no count calibration" in caplog.text and "calibrate_count.py" in caplog.text
    with open(tmp_path / "out" / "summary.json") as f:
        settings = json.load(f)
    assert settings["score_threshold_from"] == "config" and settings["score_threshold"] == 0.2


def test_calibration_of_other_weights_is_refused(calibrated, calibration_set, tmp_path, capsys):
    weights, _ = calibrated
    other = save_random_losnet(tmp_path / "other.pth", seed=1)
    shutil.copy(calibration_path(weights), calibration_path(other))
    assert predict(other, calibration_set[1], tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert calibration_path(other) in error and "model_final.pth" in error and other in error
    assert not os.path.exists(tmp_path / "out")


def test_unreadable_calibration_is_refused(calibrated, calibration_set, tmp_path, capsys):
    weights = save_random_losnet(tmp_path / "w.pth", seed=2)
    with open(calibration_path(weights), "w") as f:
        f.write('{"score_threshold": 0.3}')
    assert predict(weights, calibration_set[1], tmp_path / "out") == 2
    assert f"{calibration_path(weights)}: not a count calibration file" in capsys.readouterr().err


def test_calibrate_count_refuses_bad_input(calibrated, tmp_path, capsys):
    weights, _ = calibrated
    cases = [
        (["--dataset", "no_such_dataset"], "--dataset 'no_such_dataset' is not a registered"),
        (
            ["--annotations", str(tmp_path / "none.json"), "--image-root", str(tmp_path)],
            "none.json",
        ),
        (["--annotations", str(tmp_path / "a.json")], "--annotations and --image-root go together"),
    ]
    for flags, message in cases:
        argv = ["--config-file", CONFIG, "--weights", weights, *flags]
        assert run_tool(calibrate_script.main, argv) == 2
        assert message in capsys.readouterr().err
