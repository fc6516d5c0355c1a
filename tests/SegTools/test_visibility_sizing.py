"""Sizing from the particles estimated nearly whole: results' visibility through the PSD tools."""

import json

import cv2
import pytest

from segtools.analysis import load_coco_instances, psd_accuracy
from segtools.cli import run_tool
from segtools.data import CocoFormatError
from segtools.data.synthetic_ore import generate_synthetic_ore, render_synthetic_ore_image

from helpers import REPO_ROOT, load_script, save_random_losnet

CONFIG = str(REPO_ROOT / "configs/LosNet/losnet_MV3S_ore_synthetic.yaml")


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """
    Synthetic ore ground truth and its perfect predictions: each annotation as a result of
    score 1 whose visibility is the true visible fraction.
    """
    folder = tmp_path_factory.mktemp("visibility")
    truth = generate_synthetic_ore(str(folder / "set"), 24, seed=11, size=(192, 192),
                                   show_progress=False)  # fmt: skip
    with open(truth) as f:
        annotations = json.load(f)["annotations"]
    results = [
        {"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 1.0,
         "segmentation": a["segmentation"], "visibility": a["visible_fraction"]}
        for a in annotations
    ]  # fmt: skip
    predictions = str(folder / "results.json")
    with open(predictions, "w") as f:
        json.dump(results, f)
    return truth, predictions, annotations


def test_minimum_visibility_keeps_the_particles_estimated_whole(oracle):
    _, predictions, annotations = oracle
    kept = sum(len(image.annotation_ids) for image in load_coco_instances(predictions, 0.0, 0.9))
    assert kept == sum(a["visible_fraction"] >= 0.9 for a in annotations)
    assert 0 < kept < len(annotations)


def test_results_without_visibility_are_refused(oracle, tmp_path):
    _, predictions, _ = oracle
    with open(predictions) as f:
        results = json.load(f)
    del results[3]["visibility"]
    path = str(tmp_path / "results.json")
    with open(path, "w") as f:
        json.dump(results, f)
    with pytest.raises(CocoFormatError, match=r"results.json: \[3\]\['visibility'\] = None"):
        load_coco_instances(path, 0.0, 0.9)
    assert len(load_coco_instances(path)) > 0  # without a minimum, nothing is asked of it


def test_whole_particles_remove_the_occlusion_bias_of_perfect_masks(oracle):
    truth, predictions, _ = oracle
    rows = psd_accuracy(truth, predictions, min_visibility=0.95)
    by_subset = {(r.subset, r.weighting): r.relative_error["D50"] for r in rows}
    every = by_subset[("predictions, interior", "count")]
    whole = by_subset[("predictions, interior, estimated >= 95% visible", "count")]
    # Visible masks of every particle are too fine; the whole ones are sized as they are.
    assert every < -0.05 and abs(whole) < abs(every) / 2


def test_psd_cli_sizes_the_estimated_whole(oracle, tmp_path):
    _, predictions, annotations = oracle
    psd = load_script("psd")

    def particles(out, *flags):
        argv = ["--coco-json", predictions, "--mm-per-px", "1", "--out", str(tmp_path / out),
                "--no-progress", "--bootstrap", "0", *flags]  # fmt: skip
        assert run_tool(psd.main, argv) == 0
        with open(tmp_path / out / "all" / "summary.json") as f:
            return json.load(f)["counts"]["particles"]

    assert particles("every") == len(annotations)
    assert particles("whole", "--min-visibility", "0.9") == sum(
        a["visible_fraction"] >= 0.9 for a in annotations
    )


def test_predict_refuses_a_minimum_visibility_the_model_cannot_give(tmp_path, capsys):
    predict = load_script("predict")
    weights = save_random_losnet(tmp_path / "losnet.pth")
    image = tmp_path / "belt.png"
    cv2.imwrite(str(image), render_synthetic_ore_image(seed=5, index=0, size=(96, 96)).image)
    argv = [
        "--config-file",
        CONFIG,
        "--weights",
        weights,
        "--input",
        image,
        "--output",
        tmp_path / "out",
        "--psd",
        "--mm-per-px",
        "1",
        "--min-visibility",
        "0.9",
        "--score-thresh",
        "0",
        "--",
        "INPUT.MIN_SIZE_TEST",
        "96",
        "INPUT.MAX_SIZE_TEST",
        "96",
    ]
    assert run_tool(predict.main, [str(a) for a in argv]) == 2  # fmt: skip
    assert "--min-visibility: the model estimates no visibility" in capsys.readouterr().err
