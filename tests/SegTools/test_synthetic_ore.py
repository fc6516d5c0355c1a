"""Tests of the synthetic ore generator: layout, determinism, exact masks and sizes, arguments."""

import importlib.util
import json
import os
import re

import cv2
import numpy as np
import pytest
from detectron2.data.datasets import load_coco_json

from segtools.cli import run_tool
from segtools.data.coco_format import decode_segmentation
from segtools.data.synthetic_ore import (
    DENSITY_LEVELS,
    LIGHTING_LEVELS,
    MIN_VISIBLE_AREA,
    StaleSyntheticOreError,
    ensure_synthetic_ore,
    generate_synthetic_ore,
    render_synthetic_ore_image,
)

from helpers import REPO_ROOT

EXTRA_KEYS = ["true_diameter_px", "visible_fraction", "touches_border"]
# Not square, so that a swapped width and height shows.
SIZE = (128, 96)
SEED = 3
NUM_IMAGES = 6
CLI_PATH = str(REPO_ROOT / "datasets" / "make_synthetic_ore.py")


def _read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _equivalent_diameter(area) -> float:
    return float(np.sqrt(4 * area / np.pi))


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


@pytest.fixture(scope="module")
def ore_set(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("synthetic") / "ore"
    json_path = generate_synthetic_ore(str(out_dir), NUM_IMAGES, SEED, SIZE, show_progress=False)
    with open(json_path, encoding="utf-8") as f:
        coco = json.load(f)
    return str(out_dir), json_path, coco


def _masks_by_image(coco: dict) -> dict:
    """image id -> list of (annotation, (H, W) bool mask)."""
    by_image = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        mask = decode_segmentation(annotation["segmentation"], SIZE[1], SIZE[0])
        by_image[annotation["image_id"]].append((annotation, mask))
    return by_image


def test_layout_and_images(ore_set):
    out_dir, json_path, coco = ore_set
    assert json_path == os.path.join(out_dir, "annotations.json")
    assert sorted(os.listdir(out_dir)) == ["annotations.json", "images"]
    expected_files = [f"{k:06d}.png" for k in range(NUM_IMAGES)]
    assert sorted(os.listdir(os.path.join(out_dir, "images"))) == expected_files
    assert coco["categories"] == [{"id": 1, "name": "ore"}]
    assert coco["info"]["seed"] == SEED
    assert coco["info"]["size"] == list(SIZE)
    assert coco["info"]["num_images"] == NUM_IMAGES
    assert [image["file_name"] for image in coco["images"]] == expected_files
    assert len({image["id"] for image in coco["images"]}) == NUM_IMAGES
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    for image in coco["images"]:
        assert (image["width"], image["height"]) == SIZE
        pixels = cv2.imread(os.path.join(out_dir, "images", image["file_name"]))
        assert pixels is not None and pixels.shape == (SIZE[1], SIZE[0], 3)


def test_annotations_are_exact(ore_set):
    _, _, coco = ore_set
    for masks in _masks_by_image(coco).values():
        assert masks, "every image of the set holds particles"
        cover = np.zeros((SIZE[1], SIZE[0]), dtype=np.int64)
        for annotation, mask in masks:
            assert annotation["category_id"] == 1 and annotation["iscrowd"] == 0
            assert annotation["area"] == mask.sum() >= MIN_VISIBLE_AREA
            ys, xs = np.nonzero(mask)
            x0, y0 = xs.min(), ys.min()
            assert annotation["bbox"] == [x0, y0, xs.max() + 1 - x0, ys.max() + 1 - y0]
            assert 0 < annotation["visible_fraction"] <= 1
            assert annotation["true_diameter_px"] >= _equivalent_diameter(annotation["area"])
            full_area = np.pi * annotation["true_diameter_px"] ** 2 / 4
            assert annotation["visible_fraction"] == pytest.approx(
                annotation["area"] / full_area, rel=1e-9
            )
            assert annotation["touches_border"] == _touches_border(mask)
            cover += mask
        assert cover.max() == 1, "visible masks of one image must be disjoint"


def test_unoccluded_particles_inside_are_whole(ore_set):
    """Particles inside the frame that no later one overlaps are annotated whole, and only they."""
    out_dir, _, coco = ore_set
    masks_by_image = _masks_by_image(coco)
    num_whole = 0
    for k, image in enumerate(coco["images"]):
        rendered = render_synthetic_ore_image(SEED, k, SIZE)
        written = cv2.imread(os.path.join(out_dir, "images", image["file_name"]))
        np.testing.assert_array_equal(written, rendered.image)
        assert image["scene"]["num_particles_drawn"] == len(rendered.shape_masks)

        # Each full shape on its own copy of the frame, padded to hold any shape whole.
        pad = max(max(m.shape) for m in rendered.shape_masks)
        placed = []
        for i, shape_mask in enumerate(rendered.shape_masks):
            canvas = np.zeros((SIZE[1] + 2 * pad, SIZE[0] + 2 * pad), dtype=bool)
            (x, y), (h, w) = rendered.shape_origins[i] + pad, shape_mask.shape
            canvas[y : y + h, x : x + w] = shape_mask
            placed.append(canvas)
        frame = (slice(pad, pad + SIZE[1]), slice(pad, pad + SIZE[0]))

        whole = []
        for i, canvas in enumerate(placed):
            inside = canvas[frame].sum() == canvas.sum()
            occluded = any((canvas & later).any() for later in placed[i + 1 :])
            if inside and not occluded and canvas.sum() >= MIN_VISIBLE_AREA:
                whole.append(canvas[frame])
        annotated_whole = [
            (a, m) for a, m in masks_by_image[image["id"]] if a["visible_fraction"] == 1
        ]
        assert len(annotated_whole) == len(whole)
        for annotation, mask in annotated_whole:
            assert any(np.array_equal(mask, shape) for shape in whole)
            assert annotation["true_diameter_px"] == _equivalent_diameter(annotation["area"])
        num_whole += len(whole)
    assert num_whole > 0


def test_loads_with_detectron2(ore_set):
    out_dir, json_path, coco = ore_set
    records = load_coco_json(
        json_path, os.path.join(out_dir, "images"), extra_annotation_keys=EXTRA_KEYS
    )
    assert len(records) == NUM_IMAGES
    assert sum(len(r["annotations"]) for r in records) == len(coco["annotations"])
    for record in records:
        assert os.path.isfile(record["file_name"])
        assert (record["width"], record["height"]) == SIZE
        for annotation in record["annotations"]:
            assert set(EXTRA_KEYS) <= set(annotation)


def test_scenes_vary(ore_set):
    out_dir, _, coco = ore_set
    counts = {level: [] for level in DENSITY_LEVELS}
    brightness = {level: [] for level in LIGHTING_LEVELS}
    annotated = {image["id"]: 0 for image in coco["images"]}
    for annotation in coco["annotations"]:
        annotated[annotation["image_id"]] += 1
    for k, image in enumerate(coco["images"]):
        scene = image["scene"]
        assert scene["density"] == DENSITY_LEVELS[k % 3]
        assert scene["lighting"] == LIGHTING_LEVELS[(k + k // 3) % 3]
        assert scene["num_particles_annotated"] == annotated[image["id"]]
        assert scene["num_particles_drawn"] >= annotated[image["id"]]
        counts[scene["density"]].append(annotated[image["id"]])
        pixels = cv2.imread(os.path.join(out_dir, "images", image["file_name"]))
        brightness[scene["lighting"]].append(pixels.mean())
    assert min(counts["dense"]) > max(counts["sparse"])
    assert max(brightness["low"]) < min(brightness["bright"])


def test_deterministic_and_independent_of_num_images(tmp_path):
    runs = {
        name: generate_synthetic_ore(str(tmp_path / name), n, 7, SIZE, show_progress=False)
        for name, n in [("a", 3), ("b", 3), ("c", 2)]
    }
    assert _read_bytes(runs["a"]) == _read_bytes(runs["b"])
    for k in range(3):
        name = f"images/{k:06d}.png"
        assert _read_bytes(tmp_path / "a" / name) == _read_bytes(tmp_path / "b" / name)
    for k in range(2):
        name = f"images/{k:06d}.png"
        assert _read_bytes(tmp_path / "a" / name) == _read_bytes(tmp_path / "c" / name)

    with open(runs["a"], encoding="utf-8") as f:
        three = json.load(f)
    with open(runs["c"], encoding="utf-8") as f:
        two = json.load(f)
    assert three["images"][:2] == two["images"]
    assert [a for a in three["annotations"] if a["image_id"] <= 2] == two["annotations"]


@pytest.mark.parametrize(
    "arguments, value",
    [
        ({"num_images": 0}, "0"),
        ({"num_images": 2.0}, "2.0"),
        ({"seed": -1}, "-1"),
        ({"seed": "1"}, "'1'"),
        ({"size": (32, 128)}, "(32, 128)"),
        ({"size": (128,)}, "(128,)"),
        ({"size": (128.0, 96)}, "(128.0, 96)"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, arguments, value):
    out_dir = tmp_path / "ore"
    kwargs = {"num_images": 1, "seed": 0, "size": SIZE, **arguments}
    with pytest.raises(ValueError, match=re.escape(value)):
        generate_synthetic_ore(str(out_dir), show_progress=False, **kwargs)
    assert os.listdir(tmp_path) == []


def test_existing_non_empty_folder_is_refused_and_left_untouched(tmp_path):
    out_dir = tmp_path / "ore"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=re.escape(str(out_dir))):
        generate_synthetic_ore(str(out_dir), 1, 0, SIZE, show_progress=False)
    assert os.listdir(out_dir) == ["keep.txt"]
    assert (out_dir / "keep.txt").read_text() == "mine"
    assert os.listdir(tmp_path) == ["ore"]


def test_existing_empty_folder_is_filled(tmp_path):
    out_dir = tmp_path / "ore"
    out_dir.mkdir()
    json_path = generate_synthetic_ore(str(out_dir), 1, 0, SIZE, show_progress=False)
    assert os.path.isfile(json_path)
    assert os.listdir(out_dir / "images") == ["000000.png"]


def _cli():
    spec = importlib.util.spec_from_file_location("make_synthetic_ore", CLI_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli(tmp_path, capsys):
    cli = _cli()
    out_dir = tmp_path / "ore"
    argv = ["--out", str(out_dir), "--num-images", "2", "--seed", "0", "--size", "96", "64"]
    assert cli.main([*argv, "--no-progress"]) == 0
    with open(out_dir / "annotations.json", encoding="utf-8") as f:
        coco = json.load(f)
    output = capsys.readouterr().out
    assert str(out_dir / "annotations.json") in output
    assert "2 images of 96x64 px" in output
    assert f"{len(coco['annotations'])} annotated" in output

    # A second run into the same folder: refused with exit code 2, folder untouched.
    before = _read_bytes(out_dir / "annotations.json")
    assert run_tool(cli.main, [*argv, "--no-progress"]) == 2
    assert capsys.readouterr().err == (
        f"error: Synthetic ore output folder {out_dir} is not empty: give a new or empty folder\n"
    )
    assert _read_bytes(out_dir / "annotations.json") == before

    with pytest.raises(SystemExit) as exit_info:
        cli.main(
            ["--out", str(tmp_path / "x"), "--num-images", "1", "--seed", "0", "--size", "32", "64"]
        )
    assert exit_info.value.code == 2
    assert "32" in capsys.readouterr().err


def _rewrite_info(json_path, **changes):
    with open(json_path) as f:
        coco = json.load(f)
    coco["info"].update(changes)
    with open(json_path, "w") as f:
        json.dump(coco, f)


def test_cached_set_is_reused_only_if_its_version_and_arguments_match(tmp_path, caplog):
    folder = str(tmp_path / "cache")
    json_path = ensure_synthetic_ore(folder, 2, seed=4, size=(64, 64))
    with open(json_path) as f:
        fresh = json.load(f)
    mtime = os.path.getmtime(json_path)
    assert ensure_synthetic_ore(folder, 2, seed=4, size=(64, 64)) == json_path
    assert os.path.getmtime(json_path) == mtime  # reused as it is

    # A set written by another generator version is regenerated, with a message.
    _rewrite_info(json_path, format_version=0)
    with caplog.at_level("WARNING"):
        ensure_synthetic_ore(folder, 2, seed=4, size=(64, 64))
    assert "Regenerating the synthetic ore set in " + folder in caplog.text
    assert "'format_version': 0" in caplog.text
    with open(json_path) as f:
        assert json.load(f) == fresh
    # So is a set of other arguments (here: one image more).
    ensure_synthetic_ore(folder, 3, seed=4, size=(64, 64))
    with open(json_path) as f:
        assert len(json.load(f)["images"]) == 3
    assert sorted(os.listdir(tmp_path)) == ["cache"]  # no stale copy left behind


def test_folder_not_written_by_the_generator_is_refused_untouched(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "annotations.json").write_text('{"images": [], "annotations": []}')
    with pytest.raises(StaleSyntheticOreError, match=f"{folder} should hold the synthetic ore"):
        ensure_synthetic_ore(str(folder), 2, seed=4, size=(64, 64))
    assert os.listdir(folder) == ["annotations.json"]
