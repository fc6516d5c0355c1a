"""Export of a tiny LosNet to TorchScript and ONNX: outputs equal PyTorch's on sample images."""

import json
import os

import cv2
import pytest
import torch

from segtools.batch_norm import calibrate_batch_norms
from segtools.cli import run_tool
from segtools.data.synthetic_ore import render_synthetic_ore_image
from segtools.export import load_exported

from helpers import REPO_ROOT, build_losnet, load_script, save_random_losnet

CONFIG = str(REPO_ROOT / "configs/LosNet/losnet_MV3S_ore_synthetic.yaml")
THRESHOLD = ["MODEL.LOSNET.SCORE_THRESH_TEST", "0.5", "TEST.DETECTIONS_PER_IMAGE", "300"]

export = load_script("export")


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("samples")
    paths = []
    for index in range(3):  # sparse, medium and dense belts
        path = str(folder / f"{index}.png")
        cv2.imwrite(path, render_synthetic_ore_image(seed=2, index=index, size=(96, 96)).image)
        paths.append(path)
    return paths


def model_input(path):
    image = cv2.resize(cv2.imread(path), (96, 96))[:, :, ::-1]  # the config's RGB
    return torch.as_tensor(image.transpose(2, 0, 1).astype("float32"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory, samples):
    """
    An untrained LosNet that behaves like a trained one where it matters here: BN statistics
    taken from an image (folding then changes the weights) and class logits spread widely
    enough that images differ in their number of detections above the threshold.
    """
    model = build_losnet(seed=1).eval()
    calibrate_batch_norms(model, [{"image": model_input(samples[1])}])
    with torch.no_grad():
        model.head.cls_score.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
        model.head.cls_score.bias.fill_(0.0)
    path = tmp_path_factory.mktemp("weights") / "losnet.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.mark.parametrize(
    "export_format, file_name", [("torchscript", "model.ts"), ("onnx", "model.onnx")]
)
def test_exported_outputs_equal_pytorch(weights, samples, tmp_path, export_format, file_name):
    out = tmp_path / export_format
    sample_args = [arg for path in samples for arg in ("--sample-image", path)]
    code = export.main(
        ["--config-file", CONFIG, "--weights", weights, "--format", export_format,
         "--output", str(out), "--input-size", "96", "96", *sample_args, *THRESHOLD]
    )  # fmt: skip
    with open(out / "parity.json") as f:
        parity = json.load(f)
    assert code == 0 and parity["passed"], parity
    for report in parity["images"]:
        assert report["pred_boxes"]["max_abs_diff"] <= 0.05
        assert report["scores"]["max_abs_diff"] <= 1e-3
        assert report["pred_classes"]["mismatch_fraction"] == 0.0
        assert report["pred_masks"]["mismatch_fraction"] <= 1e-3
    with open(out / "export.json") as f:
        meta = json.load(f)
    assert meta["input_size"] == [96, 96] and meta["input_format"] == "RGB"
    assert meta["outputs"] == ["pred_boxes", "pred_classes", "pred_masks", "scores", "image_size"]

    # The graph follows each image's own number of detections, not the traced one's.
    run = load_exported(str(out / file_name))
    counts = set()
    for path in samples:
        outputs = run(model_input(path))
        counts.add(outputs[meta["outputs"].index("scores")].shape[0])
        assert outputs[meta["outputs"].index("pred_masks")].shape[1:] == (96, 96)
    assert len(counts) > 1, counts
    assert "latency" in parity and parity["latency"][f"{export_format}_ms"] > 0


def test_another_class_count_exports_with_allow_partial_weights(tmp_path):
    weights = save_random_losnet(tmp_path / "three.pth", "MODEL.LOSNET.NUM_CLASSES", "3")
    argv = ["--config-file", CONFIG, "--weights", weights, "--format", "torchscript",
            "--output", str(tmp_path / "out"), "--input-size", "64", "64"]  # fmt: skip
    assert run_tool(export.main, argv) == 2  # strict by default
    assert run_tool(export.main, [*argv[:-3], "--allow-partial-weights", *argv[-3:]]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["export.json", "model.ts", "parity.json"]
