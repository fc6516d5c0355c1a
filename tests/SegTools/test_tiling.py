import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from segtools.cli import run_tool
from segtools.data.coco_format import decode_segmentation, encode_mask
from segtools.data.coco_input import CocoFormatError
from segtools.data.images import ImageReadError
from segtools.data.tiling import tile_coco_dataset, tile_windows

from helpers import REPO_ROOT

# Source images are 100 x 70 pixels, cut with tile 40 / overlap 10, giving windows
# x: [0, 40), [30, 70), [60, 100) and y: [0, 40), [30, 70).
WIDTH, HEIGHT, TILE, OVERLAP = 100, 70, 40, 10

CLI = REPO_ROOT / "datasets" / "prepare_ore_tiles.py"


def _noise_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def _irregular_polygon(rng, cx: float, cy: float, radius: float, num_points: int) -> list:
    """Flat [x0, y0, x1, y1, ...] star-shaped polygon with random radii."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, num_points))
    radii = radius * rng.uniform(0.5, 1.0, num_points)
    points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return points.ravel().tolist()


def _source_polygons() -> list:
    """Instances of varied size, several spanning window borders."""
    rng = np.random.default_rng(0)
    centres_radii = [
        (20, 20, 12),
        (50, 35, 25),
        (85, 15, 10),
        (35, 55, 15),
        (72, 52, 17),
        (5, 65, 4),
    ]
    return [[_irregular_polygon(rng, cx, cy, r, 9)] for cx, cy, r in centres_radii]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of a (H, W) bool mask: column-major runs, background first."""
    flat = mask.ravel(order="F").astype(np.int8)
    boundaries = np.concatenate(([0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]))
    counts = np.diff(boundaries).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + counts}


def _write_dataset(root: Path, images: dict, annotations: list) -> tuple[str, str]:
    """
    Write `images` ({file_name: (H, W, 3) uint8 array or raw bytes}) under root/images and a COCO
    json whose annotations get ids 1, 2, ... in order, and image 1 and category 1 unless given.
    """
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    entries = []
    for image_id, (file_name, content) in enumerate(images.items(), start=1):
        if isinstance(content, bytes):
            (image_dir / file_name).write_bytes(content)
        elif content is not None:
            cv2.imwrite(str(image_dir / file_name), content)
        entries.append({"id": image_id, "file_name": file_name, "width": WIDTH, "height": HEIGHT})
    full_annotations = [
        {"id": i, "image_id": 1, "category_id": 1, "iscrowd": 0, **a}
        for i, a in enumerate(annotations, start=1)
    ]
    coco = {
        "images": entries,
        "annotations": full_annotations,
        "categories": [{"id": 1, "name": "ore"}],
    }
    json_path = root / "annotations.json"
    json_path.write_text(json.dumps(coco))
    return str(image_dir), str(json_path)


def _tile(root: Path, out_name: str = "out", **kwargs):
    """Tile the dataset under root; return (summary, output coco, source coco, out_dir)."""
    out_dir = root / out_name
    summary = tile_coco_dataset(
        str(root / "images"),
        str(root / "annotations.json"),
        str(out_dir),
        tile=TILE,
        overlap=OVERLAP,
        show_progress=False,
        **kwargs,
    )
    output = json.loads((out_dir / "annotations.json").read_text())
    source = json.loads((root / "annotations.json").read_text())
    return summary, output, source, out_dir


def _assert_tiles_are_source_crops(output: dict, source: dict) -> None:
    """Every tile annotation's mask equals its source mask cropped to the tile, pixel for pixel."""
    placed = {a["source_id"] for a in output["annotations"]}
    masks = {
        a["id"]: decode_segmentation(a["segmentation"], HEIGHT, WIDTH)
        for a in source["annotations"]
        if a["id"] in placed
    }
    tiles = {t["id"]: t for t in output["images"]}
    for annotation in output["annotations"]:
        tile = tiles[annotation["image_id"]]
        x0, y0, x1, y1 = tile["tile_box"]
        expected = masks[annotation["source_id"]][y0:y1, x0:x1]
        got = decode_segmentation(annotation["segmentation"], tile["height"], tile["width"])
        np.testing.assert_array_equal(got, expected)
        assert annotation["area"] == int(expected.sum())


@pytest.mark.parametrize(
    "width,height,tile,overlap",
    [(100, 70, 40, 10), (97, 41, 40, 10), (80, 80, 40, 0), (50, 45, 40, 39)],
)
def test_windows_cover_image_with_exact_overlaps(width, height, tile, overlap):
    windows = tile_windows(width, height, tile, overlap)
    coverage = np.zeros((height, width), dtype=int)
    for x0, y0, x1, y1 in windows:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert (x1 - x0, y1 - y0) == (tile, tile)
        coverage[y0:y1, x0:x1] += 1
    assert coverage.min() >= 1

    columns = sorted({(x0, x1) for x0, _, x1, _ in windows})
    rows = sorted({(y0, y1) for _, y0, _, y1 in windows})
    assert windows == [(x0, y0, x1, y1) for y0, y1 in rows for x0, x1 in columns]
    for spans, length in ((columns, width), (rows, height)):
        assert spans[0][0] == 0 and spans[-1][1] == length
        for (_, end), (start, _) in zip(spans[:-2], spans[1:-1], strict=True):
            assert end - start == overlap
        assert spans[-2][1] - spans[-1][0] >= overlap


def test_windows_of_small_image_span_it():
    assert tile_windows(30, 20, 40, 10) == [(0, 0, 30, 20)]
    assert tile_windows(100, 30, 40, 10) == [(0, 0, 40, 30), (30, 0, 70, 30), (60, 0, 100, 30)]


@pytest.mark.parametrize(
    "tile,overlap,named",
    [(0, 0, "tile=0"), (31, 0, "tile=31"), (40, 40, "overlap=40"), (40, -1, "overlap=-1")],
)
def test_windows_reject_invalid_tile_or_overlap(tile, overlap, named):
    with pytest.raises(ValueError, match=named):
        tile_windows(WIDTH, HEIGHT, tile, overlap)


@pytest.mark.parametrize("kind", ["polygon", "rle", "uncompressed_rle"])
def test_tile_masks_are_source_crops(tmp_path, kind):
    polygons = _source_polygons()
    masks = [decode_segmentation(p, HEIGHT, WIDTH) for p in polygons]
    encode = {"polygon": None, "rle": encode_mask, "uncompressed_rle": _uncompressed_rle}[kind]
    segmentations = polygons if encode is None else [encode(m) for m in masks]
    image = _noise_image(1)
    _write_dataset(tmp_path, {"rock.png": image}, [{"segmentation": s} for s in segmentations])

    # With no minimum fraction every tile showing part of an instance must hold its crop.
    _, output, source, out_dir = _tile(tmp_path, min_visible_fraction=0.0)

    _assert_tiles_are_source_crops(output, source)
    placed = {(a["image_id"], a["source_id"]) for a in output["annotations"]}
    assert len(placed) == len(output["annotations"])
    expected = set()
    for tile in output["images"]:
        x0, y0, x1, y1 = tile["tile_box"]
        tile_pixels = cv2.imread(str(out_dir / "images" / tile["file_name"]))
        np.testing.assert_array_equal(tile_pixels, image[y0:y1, x0:x1])
        for source_id, mask in enumerate(masks, start=1):
            if mask[y0:y1, x0:x1].any():
                expected.add((tile["id"], source_id))
    assert placed == expected


def test_every_source_instance_is_in_some_tile(tmp_path):
    polygons = _source_polygons()
    _write_dataset(tmp_path, {"rock.png": _noise_image(2)}, [{"segmentation": p} for p in polygons])

    summary, output, _, _ = _tile(tmp_path, min_visible_fraction=0.9)

    assert {a["source_id"] for a in output["annotations"]} == set(range(1, len(polygons) + 1))
    assert summary.source_instances == len(polygons)


def _rectangle(x0: int, y0: int, x1: int, y1: int) -> dict:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return encode_mask(mask)


def test_drop_rule_and_counts(tmp_path):
    # Tiles in row-major order: 1 = (0, 0), 2 = (30, 0), 3 = (60, 0), 4 = (0, 30), 5 = (30, 30),
    # 6 = (60, 30). Visible fractions with threshold 0.7:
    annotations = [
        # 1: all in tile 1.
        {"segmentation": _rectangle(0, 0, 20, 20)},
        # 2: columns 20-50 give 20/30 in tiles 1 and 2: below 0.7 in both; tile 1 wins the tie.
        {"segmentation": _rectangle(20, 5, 50, 15), "true_diameter_px": 12.5},
        # 3: columns 22-42 of rows 50-60 give 18/20 in tile 4 and 12/20 in tile 5 (dropped).
        {"segmentation": _rectangle(22, 50, 42, 60)},
        # 4: columns 63-73 give exactly 7/10 in tile 2 (kept) and 10/10 in tile 3.
        {"segmentation": _rectangle(63, 0, 73, 10)},
    ]
    _write_dataset(tmp_path, {"rock.png": _noise_image(3)}, annotations)

    summary, output, source, _ = _tile(tmp_path, min_visible_fraction=0.7)

    placements = {(a["image_id"], a["source_id"]): a for a in output["annotations"]}
    expected_fractions = {
        (1, 1): 1.0,
        (1, 2): 20 / 30,
        (4, 3): 18 / 20,
        (2, 4): 7 / 10,
        (3, 4): 1.0,
    }
    assert {key: a["visible_fraction"] for key, a in placements.items()} == expected_fractions
    assert len(output["images"]) == 6
    assert placements[(1, 2)]["true_diameter_px"] == 12.5
    assert (
        summary.placements_kept,
        summary.placements_dropped_below_fraction,
        summary.placements_kept_only_as_best,
    ) == (5, 2, 1)
    _assert_tiles_are_source_crops(output, source)


def test_degenerate_clipped_and_outside_annotations(tmp_path):
    rng = np.random.default_rng(4)
    valid = _irregular_polygon(rng, 50, 35, 12, 8)
    annotations = [
        {"segmentation": [valid]},
        {"segmentation": [[10, 10, 30, 30]]},  # two points
        {"segmentation": [[10, 10, 20, 20, 30, 30]]},  # collinear: zero area
        {"segmentation": [[5, 5, 6, 6, 7, 7], valid]},  # only its zero-area part is dropped
        {"segmentation": [[-10, 40, 20, 42, 18, 60, -8, 65]]},  # crosses the left border
        {"segmentation": [[120, 10, 140, 10, 130, 30]]},  # right of the image
        {"segmentation": []},
        {"segmentation": [[60, 5, 1e9, 5, 60, 25]]},  # a vertex far out: clipped, not a crash
    ]
    _write_dataset(tmp_path, {"rock.png": _noise_image(5)}, annotations)

    summary, output, source, _ = _tile(tmp_path)

    dropped = (summary.empty_dropped, summary.degenerate_dropped, summary.outside_dropped)
    assert dropped == (1, 2, 1)
    assert summary.clipped_at_border == 2
    assert summary.source_instances == 4
    assert {a["source_id"] for a in output["annotations"]} == {1, 4, 5, 8}
    _assert_tiles_are_source_crops(output, source)


def test_image_without_annotations_gives_empty_tiles(tmp_path):
    polygons = _source_polygons()[:2]
    _write_dataset(
        tmp_path,
        {"busy.png": _noise_image(6), "empty.png": _noise_image(7)},
        [{"image_id": 1, "segmentation": p} for p in polygons],
    )

    summary, output, _, _ = _tile(tmp_path)

    empty_tiles = {t["id"] for t in output["images"] if t["source_file"] == "empty.png"}
    assert len(empty_tiles) == len(tile_windows(WIDTH, HEIGHT, TILE, OVERLAP))
    assert not empty_tiles & {a["image_id"] for a in output["annotations"]}
    assert summary.tiles_written == 2 * len(empty_tiles) == len(output["images"])


def _annotated_on_both(num_images: int) -> list:
    return [
        {"image_id": i, "segmentation": p}
        for i in range(1, num_images + 1)
        for p in _source_polygons()[:2]
    ]


@pytest.mark.parametrize(
    "second_image,error,message",
    [
        (None, FileNotFoundError, "image {bad} (listed in {json}) not found"),
        (b"not an image", ImageReadError, "cannot read the image {bad}: not an image file"),
        (
            np.zeros((HEIGHT, WIDTH + 1, 3), np.uint8),
            CocoFormatError,
            "{json}: images[1] gives [height, width] = [70, 100] but the image {bad} is [70, 101]",
        ),
    ],
)
def test_bad_image_is_named_and_nothing_is_written(tmp_path, second_image, error, message):
    images = {"good.png": _noise_image(8), "bad.png": second_image}
    image_dir, json_path = _write_dataset(tmp_path, images, _annotated_on_both(2))

    with pytest.raises(error) as raised:
        _tile(tmp_path)

    assert str(raised.value) == message.format(
        bad=os.path.join(image_dir, "bad.png"), json=json_path
    )
    assert sorted(os.listdir(tmp_path)) == ["annotations.json", "images"]


@pytest.mark.parametrize(
    "content,error,message",
    [
        (None, FileNotFoundError, "COCO file not found: {json}"),
        ("{not json", CocoFormatError, "{json} is not valid JSON: Expecting property name"),
        (
            '{"images": [], "annotations": []}',
            CocoFormatError,
            "{json}: 'categories' is missing: expected a list",
        ),
    ],
)
def test_bad_annotation_file_is_named(tmp_path, content, error, message):
    _write_dataset(tmp_path, {"rock.png": _noise_image(9)}, [])
    json_path = tmp_path / "annotations.json"
    if content is None:
        json_path.unlink()
    else:
        json_path.write_text(content)

    with pytest.raises(error, match=re.escape(message.format(json=json_path))):
        _tile(tmp_path)


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda coco: coco["annotations"][1].update(category_id=2),
            "annotations[1]['category_id'] = 2: expected the id of an entry of 'categories'",
        ),
        (
            lambda coco: coco["annotations"][0].pop("id"),
            "annotations[0]['id'] is missing: expected an id that no earlier annotation has",
        ),
        (
            lambda coco: coco["images"][0].pop("height"),
            "images[0]['height'] is missing: expected an integer > 0",
        ),
        (
            lambda coco: coco["annotations"][1].update(segmentation=[[1, 2, 3]]),
            "annotations[1]['segmentation'][0] = [1, 2, 3]: expected a polygon of x, y pairs, an "
            "even count of numbers",
        ),
        (
            lambda coco: coco["annotations"][0].update(
                segmentation={"size": [HEIGHT, WIDTH], "counts": [HEIGHT * WIDTH - 1]}
            ),
            "annotations[0]['segmentation']['counts'] = [6999]: RLE runs must be >= 0 and sum to "
            "70 x 100 = 7000 pixels, got 1 runs summing to 6999",
        ),
        (
            lambda coco: coco["images"].append(
                {**coco["images"][0], "id": 2, "file_name": "rock.jpg"}
            ),
            "images[1] = {'file_name': 'rock.jpg', 'height': 70, 'id': 2, 'width': 100}: its tile "
            "name prefix 'rock' would be that of images[0]",
        ),
    ],
)
def test_bad_entry_is_named_and_nothing_is_written(tmp_path, edit, message):
    _, json_path = _write_dataset(tmp_path, {"rock.png": _noise_image(9)}, _annotated_on_both(1))
    (tmp_path / "images" / "rock.jpg").write_bytes(b"")
    coco = json.loads(Path(json_path).read_text())
    edit(coco)
    Path(json_path).write_text(json.dumps(coco))

    with pytest.raises(CocoFormatError) as raised:
        _tile(tmp_path)

    assert str(raised.value) == f"{json_path}: {message}"
    assert not (tmp_path / "out").exists()


def test_refuses_non_empty_output_folder(tmp_path):
    _write_dataset(tmp_path, {"rock.png": _noise_image(10)}, [])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")

    with pytest.raises(FileExistsError, match=re.escape(str(tmp_path / "out"))):
        _tile(tmp_path)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CLI), *args, "--tile", str(TILE), "--overlap", str(OVERLAP)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_end_to_end(tmp_path):
    image_dir, json_path = _write_dataset(
        tmp_path, {"rock.png": _noise_image(11)}, _annotated_on_both(1)
    )
    out_dir = tmp_path / "tiles"

    result = _run_cli("--images", image_dir, "--annotations", json_path, "--out", str(out_dir))

    assert result.returncode == 0, result.stderr
    output = json.loads((out_dir / "annotations.json").read_text())
    written = sorted(os.listdir(out_dir / "images"))
    assert written == sorted(t["file_name"] for t in output["images"])
    assert re.search(rf"^tiles written\s+{len(written)}$", result.stdout, re.MULTILINE)


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    # In process, to spare a second interpreter start.
    spec = importlib.util.spec_from_file_location("prepare_ore_tiles", CLI)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    image_dir, _ = _write_dataset(tmp_path, {"rock.png": _noise_image(12)}, [])
    missing = str(tmp_path / "missing.json")

    argv = ["--images", image_dir, "--annotations", missing, "--out", str(tmp_path / "o")]
    exit_code = run_tool(cli.main, argv)

    assert exit_code == 2
    assert capsys.readouterr().err == f"error: COCO file not found: {missing}\n"
    assert not (tmp_path / "o").exists()


def test_output_loads_with_detectron2(tmp_path):
    from detectron2.data.datasets import load_coco_json

    _write_dataset(tmp_path, {"rock.png": _noise_image(13)}, _annotated_on_both(1))
    _, output, _, out_dir = _tile(tmp_path)

    records = load_coco_json(
        str(out_dir / "annotations.json"),
        str(out_dir / "images"),
        extra_annotation_keys=["source_id", "visible_fraction"],
    )

    assert len(records) == len(output["images"])
    assert sum(len(r["annotations"]) for r in records) == len(output["annotations"])
    for record in records:
        assert cv2.imread(record["file_name"]).shape == (record["height"], record["width"], 3)
        for annotation in record["annotations"]:
            assert isinstance(annotation["segmentation"]["counts"], str)
            assert 0 < annotation["visible_fraction"] <= 1
