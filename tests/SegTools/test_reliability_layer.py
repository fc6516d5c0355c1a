"""
The shared reliability layer: checkpoints checked against the model, images read whole or
refused, config values checked, and the tool runner's one-line errors and signal handling.
"""

import argparse
import errno
import os
import signal

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segtools.atomic_io import atomic_directory
from segtools.checkpoint import CheckpointError, load_weights
from segtools.cli import (
    UsageError,
    bounded_float,
    bounded_int,
    refuse_config_keys_as_paths,
    run_tool,
    split_overrides,
)
from segtools.config import ConfigValueError, check_device, get_project_cfg
from segtools.data.images import ImageReadError, read_image

from helpers import REPO_ROOT

# ---------------------------------------------------------------- checkpoints


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.norm = torch.nn.BatchNorm2d(4)


def _save(path, obj):
    torch.save(obj, path)
    return str(path)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return _Tiny()


def test_a_checkpoint_of_the_model_loads_with_its_extras(model, tmp_path):
    trained = _Tiny()
    path = _save(tmp_path / "ok.pth", {"model": trained.state_dict(), "iteration": 7})
    assert load_weights(model, path) == {"iteration": 7}
    for name, tensor in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    # A bare state dict (torch.save(model.state_dict())) is a checkpoint too.
    assert load_weights(model, _save(tmp_path / "bare.pth", trained.state_dict())) == {}


def _bad_checkpoints(tmp_path) -> dict:
    state = _Tiny().state_dict()
    partial = {k: v for k, v in state.items() if not k.startswith("norm.")}
    extra = {**state, "head.weight": torch.zeros(2)}
    reshaped = {**state, "conv.weight": torch.zeros(4, 3, 5, 5)}
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    return {
        "random bytes": (str(tmp_path / "random.pth"), "neither a zip archive nor a pickle"),
        "empty file": (str(tmp_path / "empty.pth"), "neither a zip archive nor a pickle"),
        "text file": (str(tmp_path / "text.pth"), "neither a zip archive nor a pickle"),
        "numpy objects": (
            _save(tmp_path / "numpy.pth", {"model": state, "best": np.float64(0.5)}),
            "holds Python objects besides tensors and numbers (numpy.",
        ),
        "a list": (_save(tmp_path / "list.pth", [1, 2]), "holds no state dict of model weights"),
        "missing keys": (
            _save(tmp_path / "partial.pth", {"model": partial}),
            "the model's norm.bias, norm.running_mean, norm.running_var, norm.weight are "
            "missing or of another shape",
        ),
        "unknown keys": (
            _save(tmp_path / "extra.pth", {"model": extra}),
            "it holds head.weight, unknown to the model",
        ),
        "another shape": (
            _save(tmp_path / "shape.pth", {"model": reshaped}),
            "the model's conv.weight are missing or of another shape",
        ),
        "no file": (str(tmp_path / "none.pth"), "weights file not found"),
        "a folder": (str(tmp_path), "weights file not found"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "random bytes",
        "empty file",
        "text file",
        "numpy objects",
        "a list",
        "missing keys",
        "unknown keys",
        "another shape",
        "no file",
        "a folder",
    ],
)
def test_checkpoints_that_do_not_fit_are_refused_by_name(model, tmp_path, case):
    path, reason = _bad_checkpoints(tmp_path)[case]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        load_weights(model, path)
    message = str(error.value)
    assert path in message and reason in message, message
    assert "\n" not in message
    for name, tensor in before.items():  # the model is left as it was
        assert torch.equal(model.state_dict()[name], tensor), name


def test_partial_weights_load_what_matches_when_allowed(model, tmp_path):
    path, _ = _bad_checkpoints(tmp_path)["missing keys"]
    saved = torch.load(path)["model"]
    load_weights(model, path, allow_partial=True)
    assert torch.equal(model.conv.weight, saved["conv.weight"])


# ---------------------------------------------------------------- images


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "good.png"), pixels)
    cv2.imwrite(str(folder / "good.jpg"), pixels)
    for name in ("good.png", "good.jpg"):
        data = (folder / name).read_bytes()
        (folder / f"truncated{os.path.splitext(name)[1]}").write_bytes(data[: len(data) // 2])
    values = np.linspace(0, 255, 48 * 64, dtype=np.float32).reshape(48, 64)
    Image.fromarray(values, mode="F").save(folder / "float.tif")
    values[5, 7] = np.nan
    values[6, 7] = np.inf
    Image.fromarray(values, mode="F").save(folder / "nan.tif")
    (folder / "text.png").write_text("not an image")
    # EXIF orientation 6: the stored 48 x 64 image is shown turned, 64 x 48.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels[:, :, ::-1]).save(folder / "turned.jpg", exif=exif)
    return folder, pixels


def test_a_whole_image_reads_as_bgr(image_files):
    folder, pixels = image_files
    np.testing.assert_array_equal(read_image(str(folder / "good.png")), pixels)
    assert read_image(str(folder / "float.tif")).shape == (48, 64, 3)
    assert read_image(str(folder / "turned.jpg")).shape == (64, 48, 3)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("truncated.jpg", "image file is truncated"),
        ("truncated.png", "truncated"),
        ("nan.tif", "has 2 pixels that are not finite numbers"),
        ("text.png", "not an image file"),
        ("missing.png", "image not found"),
    ],
)
def test_images_that_cannot_be_read_whole_are_refused_by_name(image_files, name, reason):
    folder, _ = image_files
    path = str(folder / name)
    with pytest.raises(ImageReadError) as error:
        read_image(path)
    assert path in str(error.value) and reason in str(error.value)


# ---------------------------------------------------------------- config values

LOSNET = str(REPO_ROOT / "configs/LosNet/losnet_MV3S_ore_synthetic.yaml")


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("INPUT.MIN_SIZE_TEST", "-5", "INPUT.MIN_SIZE_TEST = -5: expected a size >= 0"),
        ("INPUT.MAX_SIZE_TEST", "0", "INPUT.MAX_SIZE_TEST = 0: expected sizes of at least 1"),
        ("INPUT.MIN_SIZE_TRAIN", "(288, -1)", "INPUT.MIN_SIZE_TRAIN = (288, -1): expected"),
        ("SOLVER.IMS_PER_BATCH", "0", "SOLVER.IMS_PER_BATCH = 0: expected an integer >= 1"),
        ("SOLVER.BASE_LR", "-0.1", "SOLVER.BASE_LR = -0.1: expected a finite number >= 0"),
        ("MODEL.LOSNET.SCORE_THRESH_TEST", "1.5", "SCORE_THRESH_TEST = 1.5: expected a score"),
        ("TEST.DETECTIONS_PER_IMAGE", "0", "TEST.DETECTIONS_PER_IMAGE = 0: expected an integer"),
        (
            "SEGTOOLS.SOLVER.OPTIMIZER",
            "Adam",
            "OPTIMIZER = 'Adam': expected one of",
        ),
        ("SEGTOOLS.SOLVER.ADAMW_BETAS", "(0.9,)", "ADAMW_BETAS = (0.9,): expected two numbers"),
        ("SEGTOOLS.SOLVER.ADAMW_BETAS", "(0.9, 1.0)", "(0.9, 1.0): expected two numbers in"),
        ("SEGTOOLS.COUNT_CALIBRATION.SIZE_BINS", "-1", "SIZE_BINS = -1: expected an integer >= 0"),
        ("SEGTOOLS.COUNT_CALIBRATION.SIZE_BINS", "2.5", "(8 vs. 2.5) for config key: SEGTOOLS"),
    ],
)
def test_config_values_out_of_range_name_the_key(key, value, expected):
    with pytest.raises(ConfigValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        get_project_cfg(LOSNET, [key, value])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_refused():
    cfg = get_project_cfg(LOSNET, ["MODEL.DEVICE", "cuda"])
    with pytest.raises(ConfigValueError, match="MODEL.DEVICE = 'cuda', but this machine has no"):
        check_device(cfg)


# ---------------------------------------------------------------- the tool runner


def test_a_user_mistake_is_one_line_and_exit_code_2(capsys):
    def main(argv):
        raise UsageError("--flag x: bad\nsecond line")

    assert run_tool(main, []) == 2
    assert capsys.readouterr().err == "error: --flag x: bad second line\n"


def test_a_full_disk_is_a_user_error_and_other_os_errors_are_bugs(capsys):
    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/out/big.json")

    def bug(argv):
        raise OSError(errno.EBADF, "Bad file descriptor")

    assert run_tool(full, []) == 2
    assert capsys.readouterr().err == "error: /out/big.json: No space left on device\n"
    with pytest.raises(OSError, match="Bad file descriptor"):
        run_tool(bug, [])


def test_sigterm_unwinds_like_sigint_and_removes_staging_folders(tmp_path, capsys):
    def main(argv):
        with atomic_directory(str(tmp_path / "out")) as staging:
            open(os.path.join(staging, "half.json"), "w").close()
            os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("not reached")

    assert run_tool(main, []) == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == []
    assert capsys.readouterr().err == "stopped by SIGTERM\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


@pytest.mark.parametrize(
    "parse, text, expected",
    [
        (bounded_int(1), "0", "must be an integer >= 1, got 0"),
        (bounded_int(32, 4096), "5000", "must be an integer in [32, 4096], got 5000"),
        (bounded_int(1), "2.5", "expected an integer, got '2.5'"),
        (bounded_float(0, include_minimum=False), "inf", "must be a finite number in (0, inf)"),
        (bounded_float(0, include_minimum=False), "0", "must be a finite number in (0, inf)"),
        (bounded_float(0, 1), "nan", "must be a finite number in [0, 1]"),
        (bounded_float(0, 1), "x", "expected a number, got 'x'"),
    ],
)
def test_argument_types_check_their_range(parse, text, expected):
    with pytest.raises(argparse.ArgumentTypeError) as error:
        parse(text)
    assert expected in str(error.value)


def test_overrides_follow_a_double_dash():
    assert split_overrides(["--input", "a.png", "--", "MODEL.DEVICE", "cpu"]) == (
        ["--input", "a.png"],
        ["MODEL.DEVICE", "cpu"],
    )
    assert split_overrides(["--input", "a.png"]) == (["--input", "a.png"], [])


def test_a_config_key_given_as_a_path_is_refused(tmp_path):
    refuse_config_keys_as_paths([str(tmp_path), "photos/a.png"], "--input")  # paths pass
    with pytest.raises(UsageError, match="--input MODEL.DEVICE: that is a config key"):
        refuse_config_keys_as_paths(["a.png", "MODEL.DEVICE", "cpu"], "--input")
