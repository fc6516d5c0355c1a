"""
scripts/predict.py given bad arguments, weights, configs, inputs and output folders, and faults:
a user's mistake is one line naming what is wrong (exit code 2) before anything is written; a run
stopped by a fault keeps what it wrote whole and a summary.json naming the failure.
"""

import errno
import json
import os
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from segtools.cli import run_tool
from segtools.config import get_project_cfg
from segtools.data.synthetic_ore import render_synthetic_ore_image
from segtools.inference import run as prediction_run
from segtools.projects import registered_projects

from helpers import REPO_ROOT, load_script, save_random_losnet

CONFIG = str(REPO_ROOT / "configs/LosNet/losnet_MV3S_ore_synthetic.yaml")
MASK_RCNN_CONFIG = str(REPO_ROOT / "configs/Baselines/mask_rcnn_R_18_FPN_ore_synthetic_cpu.yaml")
# As in test_predict.py: an untrained model with every candidate reported, at a small size.
OPTS = [
    "MODEL.LOSNET.SCORE_THRESH_TEST", "0.0",
    "TEST.DETECTIONS_PER_IMAGE", "8",
    "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128",
]  # fmt: skip

predict = load_script("predict")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """
    Weights of LosNet, of a 3-class LosNet, of Mask R-CNN and random bytes; two photos, a NaN
    TIFF, folders.
    """
    root = tmp_path_factory.mktemp("bad_inputs")
    cfg = get_project_cfg(MASK_RCNN_CONFIG, ["MODEL.DEVICE", "cpu"])
    torch.save({"model": build_model(cfg).state_dict()}, root / "mask_rcnn.pth")
    (root / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    for index, name in enumerate(["a.png", "b.png"]):
        image = render_synthetic_ore_image(seed=5, index=index, size=(128, 96)).image
        cv2.imwrite(str(root / name), image)
    pixels = np.full((96, 128), 0.5, dtype=np.float32)
    pixels[10, 10:13] = np.nan
    Image.fromarray(pixels, mode="F").save(root / "nan.tif")
    os.makedirs(root / "empty")
    os.makedirs(root / "used")
    (root / "used" / "old.json").write_text("{}")
    (root / "semantic.yaml").write_text(
        f'_BASE_: "{CONFIG}"\nMODEL:\n  META_ARCHITECTURE: "SemanticSegmentor"\n'
    )
    return SimpleNamespace(
        root=root,
        losnet=save_random_losnet(root / "losnet.pth"),
        losnet_3_classes=save_random_losnet(root / "losnet3.pth", "MODEL.LOSNET.NUM_CLASSES", "3"),
        mask_rcnn=str(root / "mask_rcnn.pth"),
        random=str(root / "random.pth"),
        a=str(root / "a.png"),
        b=str(root / "b.png"),
        nan=str(root / "nan.tif"),
    )


def argv(f, out, *flags, weights=None, inputs=None, config=CONFIG, opts=OPTS):
    """predict.py's arguments: LosNet's config and weights on a.png into `out`, then `flags`."""
    return [
        str(a)
        for a in (
            "--config-file", config, "--weights", weights or f.losnet,
            "--input", *(inputs or [f.a]), "--output", out, *flags, "--", *opts,
        )
    ]  # fmt: skip


def exit_code(args) -> int:
    """predict.py's exit code, as `python scripts/predict.py` would exit with."""
    try:
        return run_tool(predict.main, args)
    except SystemExit as e:  # argparse's own errors
        return e.code


def error_message(stderr: str) -> str:
    """The one error line of `stderr`, after "error: "."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if "error: " in line]
    assert len(lines) == 1, stderr
    return lines[0].split("error: ", 1)[1]


def partial_files(out) -> list:
    """The files of `out` left half written."""
    return [name for _, _, names in os.walk(out) for name in names if name.startswith(".tmp-")]


# Per case: its arguments (of the files and the output folder) and its error message, where
# {f.NAME} stands for the path of a file of the `files` fixture and {registered} for the
# meta-architectures whose test keys are registered.
REFUSED = {
    "weights of another model": (
        lambda f, out: argv(f, out, weights=f.mask_rcnn),
        "{f.mask_rcnn}: none of the model's 212 parameters is in it with its shape (it holds "
        "backbone.bottom_up.res2.0.conv1.norm.bias, "
        "backbone.bottom_up.res2.0.conv1.norm.num_batches_tracked, "
        "backbone.bottom_up.res2.0.conv1.norm.running_mean, "
        "backbone.bottom_up.res2.0.conv1.norm.running_var, "
        "backbone.bottom_up.res2.0.conv1.norm.weight and 157 more): a checkpoint of another "
        "model. Check the weights and the config",
    ),
    "random bytes as weights": (
        lambda f, out: argv(f, out, weights=f.random),
        "{f.random} is not a PyTorch or Detectron2 checkpoint: neither a zip archive nor a "
        "pickle: corrupt, truncated or another kind of file",
    ),
    "missing weights": (
        lambda f, out: argv(f, out, weights=f.root / "absent.pth"),
        "--weights {f.root}/absent.pth: no such file",
    ),
    "missing config": (
        lambda f, out: argv(f, out, config=f.root / "absent.yaml"),
        "--config-file {f.root}/absent.yaml: no such file",
    ),
    "overrides read as inputs": (
        lambda f, out: argv(f, out, inputs=[f.a, "MODEL.DEVICE", "cpu"]),
        "--input MODEL.DEVICE: that is a config key, not a file; give KEY VALUE overrides after "
        "--, e.g. ... -- MODEL.DEVICE cpu",
    ),
    "overrides after the last flag without --": (
        lambda f, out: argv(f, out, "--every-nth-frame", "1", "MODEL.DEVICE", "cpu"),
        "unrecognized arguments: MODEL.DEVICE cpu (config KEY VALUE overrides go after --, e.g. "
        "... -- MODEL.DEVICE cpu)",
    ),
    "an override without its value": (
        lambda f, out: argv(f, out, opts=["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST"]),
        "the overrides after -- must be KEY VALUE pairs, got MODEL.DEVICE cpu INPUT.MIN_SIZE_TEST",
    ),
    "tile 0": (
        lambda f, out: argv(f, out, "--tile", "0"),
        "argument --tile: must be an integer >= 32, got 0: smaller windows see too little of a "
        "particle, and a photo would take thousands of them",
    ),
    "tile 1": (
        lambda f, out: argv(f, out, "--tile", "1", "--overlap", "0"),
        "argument --tile: must be an integer >= 32, got 1: smaller windows see too little of a "
        "particle, and a photo would take thousands of them",
    ),
    "overlap as large as the tile": (
        lambda f, out: argv(f, out, "--tile", "64", "--overlap", "64"),
        "--overlap 64 must be smaller than --tile 64",
    ),
    "infinite scale": (
        lambda f, out: argv(f, out, "--psd", "--mm-per-px", "inf"),
        "argument --mm-per-px: must be a finite number in (0, inf), got 'inf'",
    ),
    "zero scale": (
        lambda f, out: argv(f, out, "--psd", "--mm-per-px", "0"),
        "argument --mm-per-px: must be a finite number in (0, inf), got '0'",
    ),
    "psd without a scale": (
        lambda f, out: argv(f, out, "--psd"),
        "--psd needs --mm-per-px, the scale of the images",
    ),
    "score threshold above 1": (
        lambda f, out: argv(f, out, "--score-thresh", "1.5"),
        "argument --score-thresh: must be a finite number in [0, 1], got '1.5'",
    ),
    "score threshold NaN": (
        lambda f, out: argv(f, out, "--score-thresh", "nan"),
        "argument --score-thresh: must be a finite number in [0, 1], got 'nan'",
    ),
    "score threshold of an unregistered model": (
        lambda f, out: argv(f, out, "--score-thresh", "0.3", config=f.root / "semantic.yaml"),
        "--score-thresh: MODEL.META_ARCHITECTURE 'SemanticSegmentor' has no registered test keys "
        "(score threshold, detections per image); registered: {registered}. Its project declares "
        "them in its "
        "segtools.projects.Project(inference_keys=...)",
    ),
    "every 0th frame": (
        lambda f, out: argv(f, out, "--every-nth-frame", "0"),
        "argument --every-nth-frame: must be an integer >= 1, got 0",
    ),
    "merge IoU 0": (
        lambda f, out: argv(f, out, "--tile", "64", "--overlap", "16", "--merge-iou", "0"),
        "argument --merge-iou: must be a finite number in (0, 1], got '0'",
    ),
    "negative test size": (
        lambda f, out: argv(f, out, opts=[*OPTS, "INPUT.MIN_SIZE_TEST", "-5"]),
        "INPUT.MIN_SIZE_TEST = -5: expected a size >= 0 (0: no resizing)",
    ),
    "output folder in use": (
        lambda f, out: argv(f, f.root / "used"),
        "--output {f.root}/used is not empty: give a new or empty folder",
    ),
    "output is a file": (
        lambda f, out: argv(f, f.a),
        "--output {f.a} is a file: give a new or empty folder",
    ),
    "only an empty folder": (
        lambda f, out: argv(f, out, inputs=[f.root / "empty"]),
        "--input: no image or video to predict ({f.root}/empty: no images or videos (.png, .jpg, "
        ".jpeg, .bmp, .tif, .tiff, .webp, .mp4, .avi, .mov, .mkv, .m4v, .webm, .mpg, .mpeg) in it)",
    ),
    "only a missing input": (
        lambda f, out: argv(f, out, inputs=[f.root / "absent.png"]),
        "--input: no image or video to predict ({f.root}/absent.png: no such file or folder)",
    ),
    "cuda without a GPU": (
        lambda f, out: argv(f, out, "--device", "cuda"),
        "MODEL.DEVICE = 'cuda', but this machine has no CUDA GPU that PyTorch can use: use cpu "
        "(--device cpu, or MODEL.DEVICE cpu)",
    ),
    # Once, --device's default (cpu) silently replaced this override.
    "cuda override without a GPU": (
        lambda f, out: argv(f, out, opts=[*OPTS, "MODEL.DEVICE", "cuda"]),
        "MODEL.DEVICE = 'cuda', but this machine has no CUDA GPU that PyTorch can use: use cpu "
        "(--device cpu, or MODEL.DEVICE cpu)",
    ),
    "--device and MODEL.DEVICE disagree": (
        lambda f, out: argv(f, out, "--device", "cpu", opts=[*OPTS, "MODEL.DEVICE", "cuda"]),
        "--device cpu and MODEL.DEVICE cuda disagree: give one",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_in_one_line_before_writing(case, files, tmp_path, capsys):
    if case.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    make_args, message = REFUSED[case]
    used_before = sorted(os.listdir(files.root / "used"))
    assert exit_code(make_args(files, tmp_path / "out")) == 2
    registered = sorted(a for p in registered_projects() for a in p.inference_keys)
    assert error_message(capsys.readouterr().err) == message.format(f=files, registered=registered)
    assert not os.path.exists(tmp_path / "out")
    assert sorted(os.listdir(files.root / "used")) == used_before


def test_read_only_output_folder(files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    os.makedirs(out)
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(out)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    # As root, a read-only mode does not stop writes: the file system's answer is simulated.
    monkeypatch.setattr(os, "mkdir", mkdir)
    assert exit_code(argv(files, out)) == 2
    expected = f"{out / 'images'}: {os.strerror(errno.EROFS)}"
    assert error_message(capsys.readouterr().err) == expected
    assert os.listdir(out) == []


def fail_writes(monkeypatch, number: int, where: str) -> None:
    """Make os.replace onto paths containing `where` fail as a full disk's write does."""
    real_replace = os.replace

    def replace(source, destination, *args, **kwargs):
        if where in str(destination):
            raise OSError(number, os.strerror(number))
        return real_replace(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def read_summary(out) -> dict:
    with open(out / "summary.json") as f:
        return json.load(f)


@pytest.mark.parametrize(
    "where, failed, flags",
    [
        ("images/b.json", "images/b.json", []),
        ("psd/images/.tmp-b-", "psd/images/b/particles.csv", ["--psd", "--mm-per-px", "0.5"]),
    ],
    ids=["image results", "image psd report"],
)
def test_full_disk_mid_run_keeps_a_summary(
    where, failed, flags, files, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    fail_writes(monkeypatch, errno.ENOSPC, where)
    assert exit_code(argv(files, out, *flags, inputs=[files.a, files.b, files.nan])) == 2
    disk_full = os.strerror(errno.ENOSPC)
    assert error_message(capsys.readouterr().err) == f"{out / failed}: {disk_full}"
    summary = read_summary(out)
    assert summary["complete"] is False
    error = f"OSError: [Errno {errno.ENOSPC}] {disk_full}: '{out / failed}'"
    assert summary["failure"] == {"at": f"predicting {files.b}", "error": error}
    assert [image["name"] for image in summary["images"]] == ["a"]
    assert summary["not_predicted"] == [files.b, files.nan]
    with open(out / "results.json") as f:
        assert len(json.load(f)) == summary["instances"] == 8
    with open(out / "images" / "a.json") as f:
        assert len(json.load(f)) == 8
    assert not partial_files(out)


def test_full_disk_from_the_start_writes_nothing(files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    fail_writes(monkeypatch, errno.ENOSPC, str(out))
    assert exit_code(argv(files, out)) == 2
    expected = f"{out}/images/a.json: {os.strerror(errno.ENOSPC)}"
    assert error_message(capsys.readouterr().err) == expected
    assert [names for _, _, names in os.walk(out)] == [[], []]  # out/ and out/images/, empty


@pytest.mark.parametrize(
    "error, recorded",
    [(RuntimeError("a bug"), "RuntimeError: a bug"), (KeyboardInterrupt(), "KeyboardInterrupt")],
    ids=["bug", "Ctrl-C"],
)
def test_stopped_run_names_what_failed(error, recorded, files, tmp_path, monkeypatch):
    """A bug raises with its traceback, Ctrl-C exits with 130; both leave a summary."""
    measure = prediction_run.measure_instances

    def measure_but_b(detections, image_size, mm_per_px, image_id, **kwargs):
        if image_id == 2:
            raise error
        return measure(detections, image_size, mm_per_px, image_id, **kwargs)

    monkeypatch.setattr(prediction_run, "measure_instances", measure_but_b)
    out = tmp_path / "out"
    args = argv(files, out, "--psd", "--mm-per-px", "0.5", inputs=[files.a, files.b])
    if isinstance(error, RuntimeError):
        with pytest.raises(RuntimeError, match="a bug"):
            exit_code(args)
    else:
        assert exit_code(args) == 130
    summary = read_summary(out)
    assert summary["failure"] == {"at": f"predicting {files.b}", "error": recorded}
    assert summary["not_predicted"] == [files.b]
    assert os.listdir(out / "psd" / "images") == ["a"]
    assert not os.path.exists(out / "psd" / "all")
    assert not partial_files(out)


def test_nan_tiff_is_a_skipped_input(files, tmp_path, capsys):
    out = tmp_path / "out"
    assert exit_code(argv(files, out, inputs=[files.nan, files.a])) == 1
    reason = f"the image {files.nan} has 3 pixels that are not finite numbers (NaN or infinite)"
    assert f"skipped {files.nan}: {reason}\n" in capsys.readouterr().err
    summary = read_summary(out)
    assert summary["skipped"] == [{"source": files.nan, "reason": reason}]
    assert [image["name"] for image in summary["images"]] == ["a"]
    assert sorted(os.listdir(out / "images")) == ["a.json", "a.png"]


def test_no_input_name_collides_with_another_output(files, tmp_path):
    """
    Inputs named as the run's files and folders, alike but for case, extension or folder, and
    named as a video's frame.
    """
    photos = tmp_path / "photos"
    sources = [
        "results.png", "summary.png", "all.png", "images.png", "psd.png",
        "Summary.PNG", "results.jpg", "sub/results.png", "results_2.png", "belt_frame000000.png",
    ]  # fmt: skip
    image = cv2.imread(files.a)
    for source in sources:
        os.makedirs((photos / source).parent, exist_ok=True)
        cv2.imwrite(str(photos / source), image)
    video = cv2.VideoWriter(str(photos / "belt.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (128, 96))
    video.write(image)
    video.release()
    out = tmp_path / "out"
    inputs = [photos / source for source in [*sources, "belt.avi"]]
    assert exit_code(argv(files, out, "--psd", "--mm-per-px", "0.5", inputs=inputs)) == 0
    summary = read_summary(out)
    names = [image["name"] for image in summary["images"]]
    assert names == [
        "results", "summary", "all", "images", "psd",
        "Summary_2", "results_2", "results_3", "results_2_2", "belt_frame000000",
        "belt_frame000000_2",
    ]  # fmt: skip
    assert [image["source"] for image in summary["images"]] == [str(i) for i in inputs]
    assert sorted(os.listdir(out)) == ["images", "psd", "results.json", "summary.json"]
    assert sorted(os.listdir(out / "psd")) == ["all", "images"]
    assert sorted(os.listdir(out / "psd" / "images")) == sorted(names)
    for image_id, name in enumerate(names, start=1):
        with open(out / "images" / f"{name}.json") as f:
            assert {result["image_id"] for result in json.load(f)} == {image_id}
    with open(out / "psd" / "all" / "summary.json") as f:
        assert json.load(f)["title"] == f"all {len(names)} image(s)"


def test_weights_that_match_in_part_load_when_allowed(files, tmp_path, capsys):
    # A 3-class LosNet: every parameter but the class logits' fits the 1-class model.
    assert exit_code(argv(files, tmp_path / "strict", weights=files.losnet_3_classes)) == 2
    assert "head.cls_score.bias, head.cls_score.weight are missing" in capsys.readouterr().err
    out = tmp_path / "out"
    flag = "--allow-partial-weights"
    assert exit_code(argv(files, out, flag, weights=files.losnet_3_classes)) == 0
    summary = read_summary(out)
    assert summary["allow_partial_weights"] is True and summary["images_predicted"] == 1
