"""scripts/predict.py end to end on a folder with good, corrupt and truncated images and videos."""

import json
import os

import cv2
import pytest

from segtools.data.synthetic_ore import render_synthetic_ore_image

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


def run(*args):
    return predict.main([str(a) for a in args])


def test_folder_with_bad_files(weights, inputs, tmp_path):
    out = tmp_path / "out"
    code = run(
        "--config-file", CONFIG, "--weights", weights, "--input", inputs, "--output", out,
        "--psd", "--mm-per-px", "0.5", *OPTS,
    )  # fmt: skip
    assert code == 1  # some inputs were skipped
    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert summary["images_predicted"] == 2
    skipped = {os.path.basename(s["source"]): s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"corrupt.png", "truncated.jpg"}
    assert all("cannot read the image" in reason for reason in skipped.values())
    for name in ("a", "b"):
        assert cv2.imread(str(out / f"{name}.png")).shape == (96, 128, 3)
        with open(out / f"{name}.json") as f:
            results = json.load(f)
        assert len(results) == 8
        assert {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(results[0])
        assert results[0]["segmentation"]["size"] == [96, 128]
        assert os.path.isfile(out / "psd" / name / "summary.json")
    with open(out / "results.json") as f:
        assert len(json.load(f)) == 16
    for report in ("particles.csv", "distribution.csv", "summary.json", "psd.png"):
        assert os.path.isfile(out / "psd" / "all" / report)
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]  # nothing half-written


def test_tiled_equals_untiled_when_the_image_fits_one_tile(weights, inputs, tmp_path):
    image = inputs / "a.png"
    run(
        "--config-file",
        CONFIG,
        "--weights",
        weights,
        "--input",
        image,
        "--output",
        tmp_path / "u",
        *OPTS,
    )
    run(
        "--config-file", CONFIG, "--weights", weights, "--input", image, "--output", tmp_path / "t",
        "--tile", "256", "--overlap", "64", *OPTS,
    )  # fmt: skip
    with open(tmp_path / "u" / "a.json") as f, open(tmp_path / "t" / "a.json") as g:
        assert json.load(f) == json.load(g)


def test_tiled_prediction_of_a_larger_photo(weights, tmp_path):
    photo = tmp_path / "large.png"
    cv2.imwrite(str(photo), render_synthetic_ore_image(seed=9, index=1, size=(300, 200)).image)
    code = run(
        "--config-file", CONFIG, "--weights", weights, "--input", photo, "--output", tmp_path / "o",
        "--tile", "128", "--overlap", "32", *OPTS,
    )  # fmt: skip
    assert code == 0
    with open(tmp_path / "o" / "large.json") as f:
        results = json.load(f)
    assert results and all(r["segmentation"]["size"] == [200, 300] for r in results)


def test_video_frames_and_an_undecodable_video(weights, tmp_path):
    video = str(tmp_path / "belt.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 5, (128, 96))
    for index in range(4):
        writer.write(render_synthetic_ore_image(seed=3, index=index, size=(128, 96)).image)
    writer.release()
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    code = run(
        "--config-file", CONFIG, "--weights", weights, "--input", video, tmp_path / "broken.mp4",
        "--output", tmp_path / "o", "--every-nth-frame", "2", *OPTS,
    )  # fmt: skip
    assert code == 1
    with open(tmp_path / "o" / "summary.json") as f:
        summary = json.load(f)
    assert [i["frame_index"] for i in summary["images"]] == [0, 2]
    assert os.path.isfile(tmp_path / "o" / "belt_frame000002.png")
    assert [os.path.basename(s["source"]) for s in summary["skipped"]] == ["broken.mp4"]


def test_no_detection_gives_empty_valid_outputs(weights, inputs, tmp_path):
    out = tmp_path / "o"
    code = run(
        "--config-file", CONFIG, "--weights", weights, "--input", inputs / "a.png",
        "--output", out, "--psd", "--mm-per-px", "0.5",
        *OPTS, "MODEL.LOSNET.SCORE_THRESH_TEST", "1.0",
    )  # fmt: skip
    assert code == 0
    with open(out / "a.json") as f:
        assert json.load(f) == []
    with open(out / "psd" / "a" / "summary.json") as f:
        summary = json.load(f)
    assert summary["counts"]["particles"] == 0 and summary["d_values_mm"]["count"]["D50"] is None
    assert cv2.imread(str(out / "a.png")).shape == (96, 128, 3)


def test_empty_folder_and_bad_arguments(weights, tmp_path, capsys):
    os.makedirs(tmp_path / "empty")
    assert run("--config-file", CONFIG, "--weights", weights, "--input", tmp_path / "empty",
               "--output", tmp_path / "o") == 2  # fmt: skip
    assert "no images or videos" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("--config-file", CONFIG, "--weights", weights, "--input", tmp_path, "--output",
            tmp_path / "o2", "--psd", "--mm-per-px", "0")  # fmt: skip
    assert "--mm-per-px > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("--config-file", CONFIG, "--weights", tmp_path / "absent.pth", "--input", tmp_path,
            "--output", tmp_path / "o3")  # fmt: skip
    assert "absent.pth" in capsys.readouterr().err
