"""
train_net.py, scripts/export.py and scripts/benchmark.py given bad input or faults: each stops
with its exit code and one line naming the file, flag or key and the value, without a traceback,
and leaves no partial output.
"""

import contextlib
import errno
import functools
import io
import json
import os
import re
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model

from segtools import atomic_io, engine
from segtools import export as export_package
from segtools.cli import run_tool
from segtools.config import get_project_cfg
from segtools.data.synthetic_ore import generate_synthetic_ore, render_synthetic_ore_image

from helpers import REPO_ROOT, load_script, save_random_losnet

export = load_script("export")
benchmark = load_script("benchmark")

LOSNET = str(REPO_ROOT / "configs/LosNet/losnet_MV3S_ore_synthetic.yaml")
MASK_RCNN = str(REPO_ROOT / "configs/Baselines/mask_rcnn_R_18_FPN_ore_synthetic_cpu.yaml")
TINY = "test_bad_inputs_synthetic_ore"
# A short run on the tiny set; evaluation on no dataset.
SMALL = [
    "MODEL.DEVICE", "cpu",
    "DATASETS.TRAIN", f"('{TINY}',)",
    "DATASETS.TEST", "()",
    "SOLVER.IMS_PER_BATCH", "2",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "64",
    "DATALOADER.NUM_WORKERS", "0",
    "SEGTOOLS.COUNT_CALIBRATION.DATASET", "",
]  # fmt: skip
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
CUDA_REFUSED = (
    "MODEL.DEVICE = 'cuda', but this machine has no CUDA GPU that PyTorch can use: use cpu "
    "(--device cpu, or MODEL.DEVICE cpu)"
)
NOT_A_CHECKPOINT = (
    "{} is not a PyTorch or Detectron2 checkpoint: neither a zip archive nor a pickle: corrupt, "
    "truncated or another kind of file"
)
# Another model's checkpoint: nothing of the model is in it (strict or partial loading alike).
NONE_MATCHES = (
    "{}: none of the model's 212 parameters is in it with its shape (it holds "
    "backbone.bottom_up.res2.0.conv1.norm.bias, "
    "backbone.bottom_up.res2.0.conv1.norm.num_batches_tracked, "
    "backbone.bottom_up.res2.0.conv1.norm.running_mean, "
    "backbone.bottom_up.res2.0.conv1.norm.running_var, "
    "backbone.bottom_up.res2.0.conv1.norm.weight and 157 more): a checkpoint of another model. "
    "Check the weights and the config"
)
CLASSES_DIFFER = (
    "{}: the weights are not a checkpoint of this model: the model's head.cls_score.bias, "
    "head.cls_score.weight are missing or of another shape. Check the config, or pass "
    "--allow-partial-weights to load what matches"
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """
    {name: path} of the inputs: weights files (random bytes, a random LosNet, one with 3 classes,
    a Mask R-CNN R18), a truncated sample image, an export of 64 x 64 inputs; and the tiny
    dataset registered.
    """
    folder = tmp_path_factory.mktemp("bad_inputs")
    (folder / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.manual_seed(0)
    mask_rcnn = build_model(get_project_cfg(MASK_RCNN))
    torch.save({"model": mask_rcnn.state_dict()}, folder / "mask_rcnn.pth")
    image = folder / "sample.png"
    cv2.imwrite(str(image), render_synthetic_ore_image(seed=1, index=0, size=(64, 64)).image)
    (folder / "truncated.png").write_bytes(image.read_bytes()[:500])
    ore = str(folder / "ore")
    json_file = generate_synthetic_ore(ore, 2, seed=0, size=(64, 64), show_progress=False)
    register_coco_instances(TINY, {}, json_file, os.path.join(ore, "images"))
    paths = {name: str(folder / f"{name}.pth") for name in ("random", "mask_rcnn")}
    paths["losnet"] = save_random_losnet(folder / "losnet.pth")
    paths["losnet_3_classes"] = save_random_losnet(
        folder / "losnet3.pth", "MODEL.LOSNET.NUM_CLASSES", "3"
    )
    paths["truncated_image"] = str(folder / "truncated.png")
    # What benchmark.py reads of an export of 64 x 64 inputs.
    (folder / "export_64").mkdir()
    metadata = {"format": "torchscript", "config_file": LOSNET, "input_size": [64, 64]}
    (folder / "export_64" / "export.json").write_text(json.dumps(metadata))
    paths["export_64"] = str(folder / "export_64")
    return paths


def _export_args(weights, output, size=("--input-size", "64", "64")):
    return ["--config-file", LOSNET, "--weights", weights, "--format", "torchscript",
            "--output", output, *size]  # fmt: skip


def run(entry, argv) -> tuple[int, str]:
    """
    The exit code of `entry(argv)` (argparse's, if it stops there) and its stderr. Not capsys:
    the loggers Detectron2 set up in earlier runs write to the stdout capsys captured then, and
    has closed since ("--- Logging error ---" on stderr).
    """
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            code = entry(argv)
        except SystemExit as e:
            code = e.code
    return code, stderr.getvalue()


def assert_one_line(stderr: str, expected) -> None:
    """
    The last line of `stderr` is `expected` (a string, or a pattern it matches), behind the
    program's name after argparse's usage; no traceback came before it, libraries' warnings may
    have.
    """
    assert "Traceback" not in stderr, stderr
    last = stderr.splitlines()[-1]
    last = last.split(": ", 1)[1] if stderr.startswith("usage:") else last
    if isinstance(expected, re.Pattern):
        assert expected.fullmatch(last), stderr
    else:
        assert last == expected, stderr


# ---------------------------------------------------------------- train_net.py

TRAIN_NET_CASES = [
    # (flags, config overrides after SMALL, the error line), {name} standing for files[name].
    pytest.param(
        ["--eval-only"],
        ["MODEL.WEIGHTS", "{random}"],
        "error: " + NOT_A_CHECKPOINT.format("{random}"),
        id="eval: random bytes",
    ),
    pytest.param(
        ["--eval-only"],
        ["MODEL.WEIGHTS", "{mask_rcnn}"],
        "error: " + NONE_MATCHES.format("{mask_rcnn}"),
        id="eval: Mask R-CNN weights",
    ),
    pytest.param(
        ["--eval-only", "--allow-partial-weights"],
        ["MODEL.WEIGHTS", "{mask_rcnn}"],
        "error: " + NONE_MATCHES.format("{mask_rcnn}"),
        id="eval, partial allowed: Mask R-CNN weights",
    ),
    pytest.param(
        ["--eval-only"],
        ["MODEL.WEIGHTS", "{losnet_3_classes}"],
        "error: " + CLASSES_DIFFER.format("{losnet_3_classes}"),
        id="eval: another class count",
    ),
    pytest.param(
        ["--eval-only"],
        [],
        "error: --eval-only needs trained weights: MODEL.WEIGHTS is empty (give MODEL.WEIGHTS "
        "path/to/model_final.pth)",
        id="eval: no weights",
    ),
    pytest.param(
        ["--eval-only"],
        ["MODEL.WEIGHTS", "{random}.missing"],
        "error: weights file not found: {random}.missing",
        id="eval: missing weights file",
    ),
    pytest.param(
        [],
        ["MODEL.WEIGHTS", "{random}"],
        "error: " + NOT_A_CHECKPOINT.format("{random}"),
        id="train: random bytes",
    ),
    pytest.param(
        [],
        ["MODEL.WEIGHTS", "{mask_rcnn}"],
        "error: " + NONE_MATCHES.format("{mask_rcnn}"),
        id="train: Mask R-CNN weights",
    ),
    pytest.param(
        ["--num-gpus", "2"],
        ["MODEL.WEIGHTS", "{mask_rcnn}"],
        "error: " + NONE_MATCHES.format("{mask_rcnn}"),
        id="train on 2 processes: Mask R-CNN weights",
    ),
    pytest.param(
        [],
        ["INPUT.MIN_SIZE_TEST", "-5"],
        "error: INPUT.MIN_SIZE_TEST = -5: expected a size >= 0 (0: no resizing)",
        id="negative test size",
    ),
    pytest.param(
        [],
        ["DATASETS.TRAIN", "('ore_trian',)"],
        "error: DATASETS.TRAIN: 'ore_trian' is not a registered dataset (see datasets/README.md)",
        id="unregistered dataset",
    ),
    pytest.param(
        [],
        ["MODEL.WEIGHTS", "{losnet}", "--eval-only"],
        "error: --eval-only follows the KEY VALUE config overrides: give flags first",
        id="flag after the overrides",
    ),
    pytest.param(
        [],
        ["MODEL.DEVICE", "cuda"],
        "error: " + CUDA_REFUSED,
        id="cuda without a GPU",
        marks=NO_GPU,
    ),
]


@pytest.mark.parametrize("flags, overrides, expected", TRAIN_NET_CASES)
def test_train_net_refuses_in_one_line(files, tmp_path, flags, overrides, expected):
    output_dir = tmp_path / "output"
    overrides = [value.format(**files) for value in overrides]
    argv = ["--config-file", LOSNET, *flags, *SMALL, "OUTPUT_DIR", str(output_dir), *overrides]
    code, stderr = run(engine.launch_from_command_line, argv)
    assert code == 2
    assert_one_line(stderr, expected.format(**files))
    # No checkpoint; at most the files Detectron2 writes when a run starts.
    written = set(os.listdir(output_dir)) if output_dir.exists() else set()
    assert written <= {"config.yaml", "log.txt", "metrics.json"}


def test_train_net_on_two_processes_checks_the_config_before_starting_them(tmp_path):
    command = [
        sys.executable, str(REPO_ROOT / "train_net.py"), "--config-file", LOSNET, "--num-gpus", "2",
        "INPUT.MIN_SIZE_TEST", "-5", "OUTPUT_DIR", str(tmp_path / "o"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert_one_line(
        result.stderr, "error: INPUT.MIN_SIZE_TEST = -5: expected a size >= 0 (0: no resizing)"
    )
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- scripts/export.py

EXPORT_CASES = [
    # (arguments, the error line), {name} standing for files[name] and {output} for --output.
    pytest.param(
        _export_args("{random}", "{output}"),
        "error: " + NOT_A_CHECKPOINT.format("{random}"),
        id="random bytes",
    ),
    pytest.param(
        _export_args("{mask_rcnn}", "{output}"),
        "error: " + NONE_MATCHES.format("{mask_rcnn}"),
        id="Mask R-CNN weights",
    ),
    pytest.param(
        _export_args("{losnet_3_classes}", "{output}"),
        "error: " + CLASSES_DIFFER.format("{losnet_3_classes}"),
        id="another class count",
    ),
    pytest.param(
        _export_args("{random}.missing", "{output}"),
        "error: weights file not found: {random}.missing",
        id="missing weights file",
    ),
    pytest.param(
        [*_export_args("{losnet}", "{output}"), "--input-size", "16", "64"],
        "error: argument --input-size: must be an integer >= 32, got 16",
        id="input size 16",
    ),
    pytest.param(
        [*_export_args("{losnet}", "{output}"), "INPUT.MIN_SIZE_TEST", "-5"],
        "error: INPUT.MIN_SIZE_TEST = -5: expected a size >= 0 (0: no resizing)",
        id="negative test size",
    ),
    pytest.param(
        [*_export_args("{losnet}", "{output}", size=()), "INPUT.MIN_SIZE_TEST", "0"],
        "error: INPUT.MIN_SIZE_TEST x INPUT.MAX_SIZE_TEST = 0 x 640: an export needs sides of at "
        "least 32; give --input-size H W",
        id="config size 0, no --input-size",
    ),
    pytest.param(
        [*_export_args("{losnet}", "{output}"), "--sample-image", "{truncated_image}"],
        "error: cannot read the image {truncated_image}: image file is truncated",
        id="truncated sample image",
    ),
    pytest.param(
        _export_args("{losnet}", "{export_64}"),
        "error: --output {export_64} is not empty: give a new or empty folder",
        id="output folder not empty",
    ),
]


def run_export(files, argv):
    return run(functools.partial(run_tool, export.main), [a.format(**files) for a in argv])


@pytest.mark.parametrize("argv, expected", EXPORT_CASES)
def test_export_refuses_in_one_line(files, tmp_path, argv, expected):
    files = {**files, "output": str(tmp_path / "exported")}
    code, stderr = run_export(files, argv)
    assert code == 2
    assert_one_line(stderr, expected.format(**files))
    assert os.listdir(tmp_path) == []


# A system error names the file in the staging folder or, where atomic_io maps it, in the output.
def _in_output(tmp_path, name: str, reason: str) -> re.Pattern:
    return re.compile(rf"error: {re.escape(str(tmp_path))}/(\.tmp-)?exported\S*{name}: {reason}")


def test_export_on_a_full_disk_leaves_nothing(files, tmp_path, monkeypatch):
    def full_disk(path, obj, indent=None):  # at export.json, model.ts written before it
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(export_package, "atomic_write_json", full_disk)
    code, stderr = run_export(files, _export_args(files["losnet"], str(tmp_path / "exported")))
    assert code == 2
    assert_one_line(stderr, _in_output(tmp_path, "/export.json", "No space left on device"))
    assert os.listdir(tmp_path) == []


def test_export_to_a_read_only_file_system_is_one_line(files, tmp_path, monkeypatch):
    def read_only(*args, dir, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(dir, ".tmp-exported"))

    monkeypatch.setattr(atomic_io.tempfile, "mkdtemp", read_only)
    code, stderr = run_export(files, _export_args(files["losnet"], str(tmp_path / "exported")))
    assert code == 2
    assert_one_line(stderr, _in_output(tmp_path, "", "Read-only file system"))
    assert os.listdir(tmp_path) == []


def test_sigterm_during_export_leaves_nothing(files, tmp_path, monkeypatch):
    def terminated_after_writing(*args):
        export_model(*args)
        os.kill(os.getpid(), signal.SIGTERM)

    export_model = export_package.export_model
    monkeypatch.setattr(export_package, "export_model", terminated_after_writing)
    code, stderr = run_export(files, _export_args(files["losnet"], str(tmp_path / "exported")))
    assert code == 128 + signal.SIGTERM
    assert_one_line(stderr, "stopped by SIGTERM")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- scripts/benchmark.py

BENCHMARK_CASES = [
    # (arguments, the error line), {name} standing for files[name].
    pytest.param(
        ["--input-size", "0", "0"],
        "error: argument --input-size: must be an integer >= 32, got 0",
        id="input size 0",
    ),
    pytest.param(
        ["--device", "gpu"],
        "error: argument --device: MODEL.DEVICE = 'gpu': expected cpu, cuda or cuda:N",
        id="device gpu",
    ),
    pytest.param(
        ["--device", "cuda"],
        "error: argument --device: " + CUDA_REFUSED,
        id="cuda without a GPU",
        marks=NO_GPU,
    ),
    pytest.param(
        ["--runs", "0"],
        "error: argument --runs: must be an integer >= 1, got 0",
        id="runs 0",
    ),
    pytest.param(
        ["--warmup", "-1"],
        "error: argument --warmup: must be an integer >= 0, got -1",
        id="warmup -1",
    ),
    pytest.param(
        ["--top-k", "0"],
        "error: argument --top-k: must be an integer >= 1, got 0",
        id="top-k 0",
    ),
    pytest.param(
        ["--threads", "two"],
        "error: argument --threads: expected an integer, got 'two'",
        id="threads two",
    ),
    pytest.param(
        ["--exported", "{export_64}", "--input-size", "96", "96"],
        "error: {export_64} takes [64, 64] inputs: benchmark it with --input-size 64 64",
        id="export of another size",
    ),
    pytest.param(
        ["--exported", "{random}"],
        "error: {random}: no readable export.json ([Errno 20] Not a directory: "
        "'{random}/export.json')",
        id="exported folder is a file",
    ),
    pytest.param(
        ["--config-file", "{bad_config}"],
        "error: INPUT.MIN_SIZE_TEST = -5: expected a size >= 0 (0: no resizing)",
        id="negative test size",
    ),
    pytest.param(
        ["--paper", "{paper_without_a_column}"],
        "error: {paper_without_a_column}: missing column(s) ['paper_row', 'paper_size_MB']",
        id="paper CSV without columns",
    ),
]


@pytest.mark.parametrize("argv, expected", BENCHMARK_CASES)
def test_benchmark_refuses_in_one_line(files, tmp_path, argv, expected):
    files = {
        **files,
        "bad_config": str(tmp_path / "bad.yaml"),
        "paper_without_a_column": str(tmp_path / "paper.csv"),
    }
    (tmp_path / "bad.yaml").write_text(f'_BASE_: "{LOSNET}"\nINPUT:\n  MIN_SIZE_TEST: -5\n')
    (tmp_path / "paper.csv").write_text("model,paper_infer_ms\nBase-LosNet,15.0\n")
    json_file = tmp_path / "benchmark.json"
    argv = ["--config-file", LOSNET, "--input-size", "64", "64", "--runs", "1", "--warmup", "0",
            "--no-flops", "--json", str(json_file), *[a.format(**files) for a in argv]]  # fmt: skip
    code, stderr = run(functools.partial(run_tool, benchmark.main), argv)
    assert code == 2
    assert_one_line(stderr, expected.format(**files))
    assert not json_file.exists()
