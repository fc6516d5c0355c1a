"""
scripts/predict.py end to end on a folder with good, corrupt and truncated images and videos;
bad arguments and faults are in test_bad_inputs_predict.py.
"""

import json
import os

import cv2
import pytest
import torch
from detectron2.modeling import build_model

from segtools.batch_norm import calibrate_batch_norms
from segtools.cli import run_tool
from segtools.config import get_project_cfg
from segtools.data.synthetic_ore import render_synthetic_ore_image
from segtools.projects import inference_keys, registered_projects

from helpers import REPO_ROOT, load_script, save_random_losnet

CONFIG = str(REPO_ROOT / "configs/LosNet/losnet_MV3S_ore_synthetic.yaml")
# An untrained model with every candidate reported, at a small test size.
OPTS = [
    "MODEL.LOSNET.SCORE_THRESH_TEST", "0.0",
    "TEST.DETECTIONS_PER_IMAGE", "8",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128",
]  # fmt: skip

predict = load_script("predict")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_random_losnet(tmp_path_factory.mktemp("weights") / "losnet.pth")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """photos/ with two good images (one in a subfolder), a corrupt and a truncated file."""
    root = tmp_path_factory.mktemp("photos")
    os.makedirs(root / "belt2")
    for index, path in enumerate([root / "a.png", root / "belt2" / "b.jpg"]):
        cv2.imwrite(
            str(path), render_synthetic_ore_image(seed=5, index=index, size=(128, 96)).image
        )
    (root / "corrupt.png").write_bytes(b"not an image at all")
    encoded = cv2.imencode(
        ".jpg", render_synthetic_ore_image(seed=5, index=2, size=(128, 96)).image
    )[1]
    (root / "truncated.jpg").write_bytes(encoded.tobytes()[: len(encoded) // 2])
    return root


def run(*args, opts=OPTS):
    """predict.py's exit code with `args`, and the config overrides `opts` after --."""
    return run_tool(predict.main, [str(a) for a in (*args, "--", *opts)])


def test_folder_with_bad_files(weights, inputs, tmp_path):
    out = tmp_path / "out"
    code = run(
        "--config-file", CONFIG, "--weights", weights, "--input", inputs, "--output", out,
        "--psd", "--mm-per-px", "0.5",
    )  # fmt: skip
    assert code == 1  # some inputs were skipped
    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert summary["images_predicted"] == 2
    skipped = {os.path.basename(s["source"]): s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"corrupt.png", "truncated.jpg"}
    assert all("cannot read the image" in reason for reason in skipped.values())
    for name in ("a", "b"):
        assert cv2.imread(str(out / "images" / f"{name}.png")).shape == (96, 128, 3)
        with open(out / "images" / f"{name}.json") as f:
            results = json.load(f)
        assert len(results) == 8
        assert {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(results[0])
        assert results[0]["segmentation"]["size"] == [96, 128]
        assert os.path.isfile(out / "psd" / "images" / name / "summary.json")
    with open(out / "results.json") as f:
        assert len(json.load(f)) == 16
    for report in ("particles.csv", "distribution.csv", "summary.json", "psd.png"):
        assert os.path.isfile(out / "psd" / "all" / report)
    assert summary["complete"] and summary["failure"] is None and summary["not_predicted"] == []
    written = [name for _, _, names in os.walk(out) for name in names]
    assert not [name for name in written if name.startswith(".tmp")]  # nothing half-written


def test_tiled_equals_untiled_when_the_image_fits_one_tile(weights, inputs, tmp_path):
    image = inputs / "a.png"
    run("--config-file", CONFIG, "--weights", weights, "--input", image, "--output", tmp_path / "u")
    run(
        "--config-file", CONFIG, "--weights", weights, "--input", image, "--output", tmp_path / "t",
        "--tile", "256", "--overlap", "64",
    )  # fmt: skip
    with open(tmp_path / "u/images/a.json") as f, open(tmp_path / "t/images/a.json") as g:
        assert json.load(f) == json.load(g)


def test_tiled_prediction_of_a_larger_photo(weights, tmp_path):
    photo = tmp_path / "large.png"
    cv2.imwrite(str(photo), render_synthetic_ore_image(seed=9, index=1, size=(300, 200)).image)
    code = run(
        "--config-file", CONFIG, "--weights", weights, "--input", photo, "--output", tmp_path / "o",
        "--tile", "128", "--overlap", "32",
    )  # fmt: skip
    assert code == 0
    with open(tmp_path / "o" / "images" / "large.json") as f:
        results = json.load(f)
    assert results and all(r["segmentation"]["size"] == [200, 300] for r in results)
    with open(tmp_path / "o" / "summary.json") as f:
        summary = json.load(f)
    assert summary["tiling"] == {"tile": 128, "overlap": 32, "merge_iou": 0.5,
                                 "max_per_window": 300, "max_per_photo": 200_000}  # fmt: skip
    assert summary["images"][0]["dropped_by_caps"] == {"by_window_cap": 0, "by_photo_cap": 0}


def test_tiled_prediction_caps_are_recorded(weights, tmp_path):
    # 6 windows of at most 8 detections each (TEST.DETECTIONS_PER_IMAGE); caps 3 and 10.
    photo = tmp_path / "large.png"
    cv2.imwrite(str(photo), render_synthetic_ore_image(seed=9, index=1, size=(300, 200)).image)
    caps = ["--max-per-window", "3", "--max-per-photo", "10"]
    run("--config-file", CONFIG, "--weights", weights, "--input", photo, "--output", tmp_path / "o",
        "--tile", "128", "--overlap", "32", *caps)  # fmt: skip
    with open(tmp_path / "o" / "summary.json") as f:
        image = json.load(f)["images"][0]
    assert image["dropped_by_caps"] == {"by_window_cap": 6 * (8 - 3), "by_photo_cap": 6 * 3 - 10}
    assert image["instances"] <= 10


def test_video_frames_and_an_undecodable_video(weights, tmp_path):
    video = str(tmp_path / "belt.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 5, (128, 96))
    for index in range(4):
        writer.write(render_synthetic_ore_image(seed=3, index=index, size=(128, 96)).image)
    writer.release()
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    code = run(
        "--config-file", CONFIG, "--weights", weights, "--input", video, tmp_path / "broken.mp4",
        "--output", tmp_path / "o", "--every-nth-frame", "2",
    )  # fmt: skip
    assert code == 1
    with open(tmp_path / "o" / "summary.json") as f:
        summary = json.load(f)
    assert [i["frame_index"] for i in summary["images"]] == [0, 2]
    assert os.path.isfile(tmp_path / "o" / "images" / "belt_frame000002.png")
    assert [os.path.basename(s["source"]) for s in summary["skipped"]] == ["broken.mp4"]


def test_no_detection_gives_empty_valid_outputs(weights, inputs, tmp_path):
    out = tmp_path / "o"
    code = run(
        "--config-file", CONFIG, "--weights", weights, "--input", inputs / "a.png",
        "--output", out, "--psd", "--mm-per-px", "0.5",
        opts=[*OPTS, "MODEL.LOSNET.SCORE_THRESH_TEST", "1.0"],
    )  # fmt: skip
    assert code == 0
    with open(out / "images" / "a.json") as f:
        assert json.load(f) == []
    with open(out / "psd" / "images" / "a" / "summary.json") as f:
        summary = json.load(f)
    assert summary["counts"]["particles"] == 0 and summary["d_values_mm"]["count"]["D50"] is None
    assert cv2.imread(str(out / "images" / "a.png")).shape == (96, 128, 3)


@pytest.mark.parametrize("project", registered_projects(), ids=lambda p: p.name)
def test_score_threshold_applies_to_every_registered_model(project, inputs, tmp_path):
    config = str(REPO_ROOT / project.smoke_config)
    cfg = get_project_cfg(config, [*project.smoke_opts, "MODEL.DEVICE", "cpu"])
    detections_key = inference_keys(cfg.MODEL.META_ARCHITECTURE).detections_per_image
    opts = [*project.smoke_opts, detections_key, "20", *OPTS[2:]]
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    # Random weights with BatchNorm statistics of a real image, so that boxes stay on it.
    image = torch.as_tensor(cv2.imread(str(inputs / "a.png")).transpose(2, 0, 1)).float()
    calibrate_batch_norms(model, [{"image": image}])
    weights = str(tmp_path / "weights.pth")
    torch.save({"model": model.state_dict()}, weights)

    def scores(threshold):
        out = tmp_path / f"out_{threshold}"
        run("--config-file", config, "--weights", weights, "--input", inputs / "a.png",
            "--output", out, "--score-thresh", threshold, opts=opts)  # fmt: skip
        with open(out / "results.json") as f:
            return sorted(r["score"] for r in json.load(f))

    every = scores(0.0)
    assert len(every) >= 2
    threshold = (every[0] + every[-1]) / 2
    assert scores(threshold) == [s for s in every if s >= threshold] != every
