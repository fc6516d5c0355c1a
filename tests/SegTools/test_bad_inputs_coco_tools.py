"""
Bad inputs and faults given to the COCO tools (psd.py, prepare_ore_tiles.py,
make_synthetic_ore.py, visualize_dataset.py): each is refused in one line that names the file,
flag or key and the value, with exit code 2 and no traceback, and leaves no output behind.
"""

import errno
import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from segtools.cli import run_tool
from segtools.data.coco_format import encode_mask

from helpers import REPO_ROOT, load_script

HEIGHT, WIDTH = 70, 100
# argparse names the tool by the file it runs from.
PROG = os.path.basename(sys.argv[0])


def _dataset_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "datasets" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tools() -> dict:
    return {
        "psd": load_script("psd").main,
        "tiles": _dataset_script("prepare_ore_tiles").main,
        "synthetic": _dataset_script("make_synthetic_ore").main,
        "visualize": load_script("visualize_dataset").main,
    }


def _run(main, argv) -> int:
    """The tool's exit code, run as its command line runs it."""
    try:
        return run_tool(main, argv)
    except SystemExit as e:  # argparse refusing an argument
        return e.code


def _write_truncated_jpeg(path) -> None:
    """A JPEG cut in half: OpenCV reads it with grey below the cut, Pillow refuses it."""
    noise = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", noise)[1].tobytes()
    path.write_bytes(jpeg[: len(jpeg) // 2])


def _truncated(photo) -> re.Pattern:
    """The line refusing a truncated photo; Pillow counts the bytes it left undecoded."""
    message = r"image file is truncated \(\d+ bytes not processed\)"
    return re.compile(rf"error: cannot read the image {re.escape(str(photo))}: {message}")


def _polygon(*xy) -> list:
    return [list(xy)]


class Workspace(SimpleNamespace):
    """Inputs under root/in, outputs expected (and refused) at root/out."""

    def ground_truth(self, segmentation=None, file_name="rock.png", **edits) -> str:
        """A COCO training set of the 100 x 70 photo `file_name`, one annotation, edited."""
        annotation = {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "segmentation": segmentation or _polygon(10, 10, 50, 10, 20, 30),
        }
        data = {
            "images": [{"id": 1, "file_name": file_name, "height": HEIGHT, "width": WIDTH}],
            "annotations": [annotation],
            "categories": [{"id": 1, "name": "ore"}],
        }
        for key, value in edits.items():
            data[key] = value(data) if callable(value) else value
        path = self.inputs / "gt.json"
        path.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes them
        return str(path)

    def results(self, **entry) -> str:
        """A COCO results list of one prediction, edited."""
        mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
        mask[10:20, 10:30] = True
        prediction = {"image_id": 1, "score": 0.9, "segmentation": encode_mask(mask), **entry}
        path = self.inputs / "results.json"
        path.write_text(json.dumps([prediction]))
        return str(path)

    def psd(self, coco_json: str, *extra: str) -> list:
        return [
            "--coco-json", coco_json, "--mm-per-px", "0.5", "--out", str(self.out),
            "--no-progress", *extra,
        ]  # fmt: skip

    def tiles(self, annotations: str, *extra: str) -> list:
        return [
            "--images", str(self.images), "--annotations", annotations, "--out", str(self.out),
            "--tile", "40", "--overlap", "10", "--no-progress", *extra,
        ]  # fmt: skip

    def synthetic(self, *extra: str, out=None) -> list:
        return [
            "--out", str(out or self.out), "--num-images", "1", "--seed", "0",
            "--size", "64", "64", "--no-progress", *extra,
        ]  # fmt: skip

    def leftovers(self) -> list:
        """Whatever the tool left outside the inputs, and staging folders anywhere."""
        found = [name for name in os.listdir(self.root) if name != "in"]
        for folder, names, files in os.walk(self.root):
            found += [os.path.join(folder, n) for n in names + files if n.startswith(".tmp-")]
        return found


@pytest.fixture
def ws(tmp_path) -> Workspace:
    images = tmp_path / "in" / "images"
    images.mkdir(parents=True)
    noise = np.random.default_rng(1).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    cv2.imwrite(str(images / "rock.png"), noise)
    _write_truncated_jpeg(images / "cut.jpg")
    return Workspace(root=tmp_path, inputs=tmp_path / "in", images=images, out=tmp_path / "out")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Two registered datasets of two images each: whole photos, and one truncated photo."""
    folder = tmp_path_factory.mktemp("registered")
    cv2.imwrite(str(folder / "a.png"), np.full((HEIGHT, WIDTH, 3), 90, dtype=np.uint8))
    _write_truncated_jpeg(folder / "cut.jpg")
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[10:30, 20:50] = True
    annotation = {"bbox": [20, 10, 30, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
    annotation["segmentation"] = encode_mask(mask)

    def records(*names):
        image = {"height": HEIGHT, "width": WIDTH, "annotations": [annotation]}
        return [
            {"file_name": str(folder / name), "image_id": index, **image}
            for index, name in enumerate(names)
        ]

    registered = {"bad_inputs_whole": ("a.png", "a.png"), "bad_inputs_cut": ("a.png", "cut.jpg")}
    for name, files in registered.items():
        DatasetCatalog.register(name, lambda files=files: records(*files))
        MetadataCatalog.get(name).set(thing_classes=["ore"])
    yield SimpleNamespace(folder=folder)
    for name in registered:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# Each case: (tool, its arguments, the last line it prints: a string or a pattern).
CASES = {}


def case(function):
    CASES[function.__name__] = function
    return function


@case
def psd_nan_coordinate(ws, datasets):
    gt = ws.ground_truth(_polygon(10, 10, math.nan, 10, 20, 30))
    message = "annotations[0]['segmentation'][0][2] = nan: expected a finite coordinate"
    return "psd", ws.psd(gt), f"error: {gt}: {message}"


@case
def psd_infinite_coordinate(ws, datasets):
    gt = ws.ground_truth(_polygon(10, 10, 50, -math.inf, 20, 30))
    message = "annotations[0]['segmentation'][0][3] = -inf: expected a finite coordinate"
    return "psd", ws.psd(gt), f"error: {gt}: {message}"


@case
def psd_rle_counts_not_covering_the_image(ws, datasets):
    gt = ws.ground_truth({"size": [HEIGHT, WIDTH], "counts": [10, 20, 30]})
    message = (
        "annotations[0]['segmentation']['counts'] = [10, 20, 30]: RLE runs must be >= 0 and sum "
        "to 70 x 100 = 7000 pixels, got 3 runs summing to 60"
    )
    return "psd", ws.psd(gt), f"error: {gt}: {message}"


@case
def psd_image_of_0_x_0_pixels(ws, datasets):
    gt = ws.ground_truth(images=lambda data: [{**data["images"][0], "height": 0, "width": 0}])
    return "psd", ws.psd(gt), f"error: {gt}: images[0]['height'] = 0: expected an integer > 0"


@case
def psd_prediction_of_a_0_x_0_image(ws, datasets):
    results = ws.results(segmentation={"size": [0, 0], "counts": []})
    message = "[0]['segmentation']['size'] = [0, 0]: expected [height, width], integers > 0"
    return "psd", ws.psd(results), f"error: {results}: {message}"


@case
def psd_nan_score(ws, datasets):
    results = ws.results(score=math.nan)
    return "psd", ws.psd(results), f"error: {results}: [0]['score'] = nan: expected a finite number"


@case
def psd_string_image_id(ws, datasets):
    results = ws.results(image_id="belt-7")
    message = "[0]['image_id'] = 'belt-7': expected an integer id"
    return "psd", ws.psd(results), f"error: {results}: {message}"


@case
def psd_truncated_photo(ws, datasets):
    gt = ws.ground_truth(file_name="cut.jpg")
    return "psd", ws.psd(gt, "--images", str(ws.images)), _truncated(ws.images / "cut.jpg")


@case
def psd_binary_file_as_coco_json(ws, datasets):
    photo = str(ws.images / "rock.png")
    message = "'utf-8' codec can't decode byte 0x89 in position 0: invalid start byte"
    return "psd", ws.psd(photo), f"error: {photo} is not valid JSON: {message}"


@case
def psd_infinite_scale(ws, datasets):
    argv = ws.psd(ws.ground_truth())
    argv[argv.index("--mm-per-px") + 1] = "inf"
    message = "argument --mm-per-px: must be a finite number in (0.0, inf), got 'inf'"
    return "psd", argv, f"{PROG}: error: {message}"


@case
def psd_nan_score_threshold(ws, datasets):
    argv = ws.psd(ws.results(), "--score-thresh", "nan")
    message = "argument --score-thresh: must be a finite number in [0.0, 1.0], got 'nan'"
    return "psd", argv, f"{PROG}: error: {message}"


@case
def psd_output_is_a_file(ws, datasets):
    ws.out = ws.inputs / "taken"
    ws.out.write_text("not a folder")
    message = f"output folder {ws.out} is a file: give a new or empty folder"
    return "psd", ws.psd(ws.ground_truth()), f"error: {message}"


@case
def tiles_tile_0(ws, datasets):
    argv = ws.tiles(ws.ground_truth(), "--tile", "0")
    return "tiles", argv, f"{PROG}: error: argument --tile: must be an integer >= 32, got 0"


@case
def tiles_tile_1(ws, datasets):
    argv = ws.tiles(ws.ground_truth(), "--tile", "1")
    return "tiles", argv, f"{PROG}: error: argument --tile: must be an integer >= 32, got 1"


@case
def tiles_overlap_as_large_as_the_tile(ws, datasets):
    argv = ws.tiles(ws.ground_truth(), "--tile", "64", "--overlap", "64")
    return "tiles", argv, f"{PROG}: error: --overlap 64 must be smaller than --tile 64"


@case
def tiles_visible_fraction_above_1(ws, datasets):
    argv = ws.tiles(ws.ground_truth(), "--min-visible-fraction", "1.5")
    message = "argument --min-visible-fraction: must be a finite number in [0.0, 1.0], got '1.5'"
    return "tiles", argv, f"{PROG}: error: {message}"


@case
def tiles_nan_coordinate(ws, datasets):
    gt = ws.ground_truth(_polygon(10, 10, 50, 10, 20, math.nan))
    message = "annotations[0]['segmentation'][0][5] = nan: expected a finite coordinate"
    return "tiles", ws.tiles(gt), f"error: {gt}: {message}"


@case
def tiles_truncated_photo(ws, datasets):
    gt = ws.ground_truth(file_name="cut.jpg")
    return "tiles", ws.tiles(gt), _truncated(ws.images / "cut.jpg")


@case
def tiles_duplicate_annotation_id(ws, datasets):
    gt = ws.ground_truth(annotations=lambda data: data["annotations"] * 2)
    message = "annotations[1]['id'] = 1: expected an id that no earlier annotation has"
    return "tiles", ws.tiles(gt), f"error: {gt}: {message}"


@case
def tiles_missing_photo(ws, datasets):
    gt = ws.ground_truth(file_name="gone.png")
    return (
        "tiles",
        ws.tiles(gt),
        f"error: image {ws.images / 'gone.png'} (listed in {gt}) not found",
    )


@case
def synthetic_no_images(ws, datasets):
    argv = ws.synthetic("--num-images", "0")
    return (
        "synthetic",
        argv,
        f"{PROG}: error: argument --num-images: must be an integer >= 1, got 0",
    )


@case
def synthetic_huge_image(ws, datasets):
    argv = ws.synthetic("--size", "100000", "64")
    message = "argument --size: must be an integer in [64, 8192], got 100000"
    return "synthetic", argv, f"{PROG}: error: {message}"


@case
def synthetic_negative_seed(ws, datasets):
    argv = ws.synthetic("--seed", "-1")
    return "synthetic", argv, f"{PROG}: error: argument --seed: must be an integer >= 0, got -1"


@case
def synthetic_output_not_empty(ws, datasets):
    full = ws.inputs / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    message = f"Synthetic ore output folder {full} is not empty: give a new or empty folder"
    return "synthetic", ws.synthetic(out=full), f"error: {message}"


@case
def visualize_first_beyond_the_dataset(ws, datasets):
    argv = ["--dataset", "bad_inputs_whole", "--first", "1000", "--out", f"{ws.out}.png"]
    message = "--first 1000: dataset bad_inputs_whole has 2 images, indices 0 to 1"
    return "visualize", argv, f"error: {message}"


@case
def visualize_unknown_picture_format(ws, datasets):
    out = ws.root / "x.xyz"
    argv = ["--dataset", "bad_inputs_whole", "--out", str(out)]
    message = f"--out {out}: OpenCV writes no .xyz pictures; give .png or .jpg"
    return "visualize", argv, f"{PROG}: error: {message}"


@case
def visualize_scale_0(ws, datasets):
    argv = ["--dataset", "bad_inputs_whole", "--scale", "0", "--out", f"{ws.out}.png"]
    message = "argument --scale: must be a finite number in (0.0, 10.0], got '0'"
    return "visualize", argv, f"{PROG}: error: {message}"


@case
def visualize_truncated_photo(ws, datasets):
    argv = ["--dataset", "bad_inputs_cut", "--out", f"{ws.out}.png"]
    return "visualize", argv, _truncated(datasets.folder / "cut.jpg")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_in_one_line_and_leaves_nothing(name, ws, datasets, tools, capsys):
    tool, argv, expected = CASES[name](ws, datasets)

    exit_code = _run(tools[tool], argv)

    err = capsys.readouterr().err
    assert exit_code == 2
    assert "Traceback" not in err
    if isinstance(expected, re.Pattern):
        assert expected.fullmatch(err.rstrip("\n")), err
    elif expected.startswith(f"{PROG}: error:"):  # argparse prints its usage first
        assert err.splitlines()[-1] == expected
        assert err.startswith("usage: ")
    else:
        assert err == expected + "\n"
    assert ws.leftovers() == []


@pytest.mark.parametrize("tool", ["psd", "tiles"])
def test_a_vertex_far_outside_is_clipped_not_a_crash(tool, ws, tools):
    # pycocotools would walk an edge to x = 1e9 in 1/5 px steps, and crash.
    gt = ws.ground_truth(_polygon(60, 30, 1e9, 30, 1e9, 50, 60, 50))
    argv = ws.psd(gt, "--images", str(ws.images)) if tool == "psd" else ws.tiles(gt)

    assert _run(tools[tool], argv) == 0

    if tool == "psd":
        particle = (ws.out / "all" / "particles.csv").read_text().splitlines()[1].split(",")
        header = (ws.out / "all" / "particles.csv").read_text().splitlines()[0].split(",")
        box = [particle[header.index(f"bbox_{key}_px")] for key in "xywh"]
        assert box == ["60", "30", "40", "20"]  # the photo's right border cuts it
        assert (ws.out / "images" / "rock" / "overlay.png").is_file()
    else:
        tiles = json.loads((ws.out / "annotations.json").read_text())
        last_tile = tiles["images"][-1]  # [60, 100) x [30, 70) holds it whole
        placed = [a for a in tiles["annotations"] if a["image_id"] == last_tile["id"]]
        assert [(a["area"], a["bbox"], a["visible_fraction"]) for a in placed] == [
            (800, [0, 0, 40, 20], 1.0)
        ]


@pytest.fixture
def read_only_folder(tmp_path, monkeypatch):
    """
    (a folder where nothing can be created, the error text the system gives): chmod makes it
    read-only, except for root, for whom creating files in it fails here as on a read-only disk.
    """
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        yield folder, os.strerror(errno.EACCES)
        folder.chmod(0o755)
        return

    real_mkdir, real_open = os.mkdir, os.open

    def refused(path) -> OSError | None:
        if os.path.abspath(path).startswith(f"{folder}{os.sep}"):
            return OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return None

    def mkdir(path, *args, **kwargs):
        if error := refused(path):
            raise error
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and (error := refused(path)):
            raise error
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)
    yield folder, os.strerror(errno.EROFS)


def _fault_argv(tool: str, ws: Workspace, out) -> list:
    ws.out = out
    return {
        "psd": lambda: ws.psd(ws.ground_truth()),
        "tiles": lambda: ws.tiles(ws.ground_truth()),
        "synthetic": lambda: ws.synthetic(),
        "visualize": lambda: ["--dataset", "bad_inputs_whole", "--out", str(out)],
    }[tool]()


@pytest.mark.parametrize("tool", ["psd", "tiles", "synthetic", "visualize"])
def test_read_only_output_folder(tool, ws, datasets, tools, read_only_folder, capsys):
    folder, system_error = read_only_folder
    out = folder / ("grid.png" if tool == "visualize" else "out")

    assert _run(tools[tool], _fault_argv(tool, ws, out)) == 2

    # The output the user asked for is named, not the staging file or folder next to it.
    assert capsys.readouterr().err == f"error: {out}: {system_error}\n"
    assert os.listdir(folder) == []


@pytest.mark.parametrize("tool", ["psd", "tiles", "synthetic", "visualize"])
def test_full_disk(tool, ws, datasets, tools, monkeypatch, capsys):
    def no_space(source, target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), source, None, target)

    monkeypatch.setattr(os, "replace", no_space)
    out = ws.root / ("grid.png" if tool == "visualize" else "out")

    assert _run(tools[tool], _fault_argv(tool, ws, out)) == 2

    err = capsys.readouterr().err
    # The first file written, named where it would have been in the output.
    assert re.fullmatch(rf"error: {re.escape(str(out))}\S*: {os.strerror(errno.ENOSPC)}\n", err), (
        err
    )
    assert ".tmp-" not in err and ws.leftovers() == []


def test_sigterm_mid_generation_leaves_no_staging_folder(tmp_path):
    out = tmp_path / "ore"
    script = REPO_ROOT / "datasets" / "make_synthetic_ore.py"
    argv = ["--out", str(out), "--num-images", "100000", "--seed", "0", "--no-progress"]
    process = subprocess.Popen(
        [sys.executable, str(script), *argv], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        # Mid-generation: the staging folder holds its first image.
        while not list(tmp_path.glob(".tmp-ore-*/images/*.png")):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()

    assert process.returncode == 128 + signal.SIGTERM
    assert err.splitlines()[-1] == "stopped by SIGTERM"
    assert "Traceback" not in err
    assert os.listdir(tmp_path) == []
