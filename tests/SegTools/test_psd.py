"""Tests of the ore particle-size analysis (segtools.analysis) and scripts/psd.py."""

import csv
import json
import math
import os
import subprocess
import sys
import tracemalloc

import cv2
import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances

from segtools.analysis import (
    LENGTH_MEASURES,
    PARTICLE_DTYPE,
    CumulativeCurve,
    ParticleTable,
    draw_size_overlay,
    edge_weights,
    fit_models,
    measure_instances,
    measure_particle,
    size_distribution,
    write_psd_report,
)
from segtools.analysis.fits import rosin_rammler_size, swebrec_size
from segtools.cli import run_tool
from segtools.data.coco_format import annotation_from_mask, decode_segmentation, encode_mask
from segtools.inference import detections_from_instances

from helpers import REPO_ROOT, load_script

PSD_SCRIPT = str(REPO_ROOT / "scripts" / "psd.py")
REPORT_FILES = ("particles.csv", "distribution.csv", "summary.json", "psd.png")


def _pixel_centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) x and y of pixel centres: pixel (r, c) covers [c, c + 1] x [r, r + 1]."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    return xs, ys


def _disc(height, width, cx, cy, diameter) -> np.ndarray:
    """Pixels whose centre lies in the disc."""
    xs, ys = _pixel_centres(height, width)
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= (diameter / 2) ** 2


def _rectangle(height, width, cx, cy, rect_width, rect_length, angle_deg) -> np.ndarray:
    """Pixels whose centre lies in the rectangle, its length along `angle_deg` from the x axis."""
    xs, ys = _pixel_centres(height, width)
    t = math.radians(angle_deg)
    along = (xs - cx) * math.cos(t) + (ys - cy) * math.sin(t)
    across = -(xs - cx) * math.sin(t) + (ys - cy) * math.cos(t)
    return (np.abs(along) <= rect_length / 2) & (np.abs(across) <= rect_width / 2)


def _table(ecd_mm, mm_per_px=0.5, frame=(100, 50), **columns) -> ParticleTable:
    """A hand-made table of particles with the given ECDs (areas to match) and other columns."""
    records = np.zeros(len(ecd_mm), dtype=PARTICLE_DTYPE)
    records["annotation_id"] = np.arange(len(ecd_mm))
    records["image_width"], records["image_height"] = frame
    records["ecd"] = np.asarray(ecd_mm) / mm_per_px
    records["area"] = math.pi / 4 * records["ecd"] ** 2
    records["bbox_w"] = records["bbox_h"] = 1
    for name, values in columns.items():
        records[name] = values
    return ParticleTable(records, mm_per_px)


@pytest.mark.parametrize("diameter", [8, 15, 32, 61])
def test_circle_measures_within_one_pixel(diameter):
    measures = measure_particle(_disc(80, 90, 44.3, 40.7, diameter))
    for name in LENGTH_MEASURES:  # every length of a disc is its diameter
        assert abs(getattr(measures, name) - diameter) <= 1.0, name
    assert abs(measures.centroid_x - 44.3) < 0.2 and abs(measures.centroid_y - 40.7) < 0.2
    assert not measures.touches_border


@pytest.mark.parametrize("side", [1, 9, 20])
def test_square_measures_exact(side):
    mask = np.zeros((40, 50), dtype=bool)
    mask[5 : 5 + side, 7 : 7 + side] = True
    measures = measure_particle(mask)
    assert measures.area == side**2
    assert measures.ecd == pytest.approx(math.sqrt(4 * side**2 / math.pi))
    assert measures.feret_min == pytest.approx(side)
    assert measures.rect_width == pytest.approx(side)
    assert measures.rect_length == pytest.approx(side)
    assert abs(measures.feret_max - side * math.sqrt(2)) <= 1.0
    # A square's second-moment ellipse is a circle of diameter 2 side / sqrt(3).
    assert measures.ellipse_major == pytest.approx(2 * side / math.sqrt(3))
    assert measures.ellipse_minor == pytest.approx(2 * side / math.sqrt(3))
    assert (measures.bbox_x, measures.bbox_y, measures.bbox_w, measures.bbox_h) == (
        7,
        5,
        side,
        side,
    )
    assert (measures.centroid_x, measures.centroid_y) == pytest.approx((7 + side / 2, 5 + side / 2))


def test_rotated_rectangle_measures_and_rotation_invariance():
    rect_width, rect_length = 10.0, 28.0
    by_angle = {
        angle: measure_particle(_rectangle(64, 64, 32.2, 31.6, rect_width, rect_length, angle))
        for angle in (0, 30, 45)
    }
    truth = {
        "feret_min": rect_width,
        "rect_width": rect_width,
        "rect_length": rect_length,
        "feret_max": math.hypot(rect_width, rect_length),
        "ellipse_minor": 2 * rect_width / math.sqrt(3),
        "ellipse_major": 2 * rect_length / math.sqrt(3),
        "ecd": math.sqrt(4 * rect_width * rect_length / math.pi),
    }
    for name, expected in truth.items():
        values = [getattr(measures, name) for measures in by_angle.values()]
        assert max(abs(v - expected) for v in values) <= 1.0, (name, values)
    # Calipers: the same within a pixel whatever the orientation.
    for name in ("feret_min", "feret_max", "rect_width"):
        values = [getattr(measures, name) for measures in by_angle.values()]
        assert max(values) - min(values) <= 1.0, (name, values)


def test_segmentation_inputs_border_flag_and_table():
    height, width = 40, 60
    interior = _disc(height, width, 30.0, 20.0, 12)
    at_border = _disc(height, width, 2.0, 20.0, 10)
    polygon = [[10.0, 5.0, 20.0, 5.0, 20.0, 12.0, 10.0, 12.0]]
    assert measure_particle(encode_mask(interior)) == measure_particle(interior)
    assert measure_particle(polygon, (height, width)).touches_border is False
    assert measure_particle(at_border).touches_border is True
    with pytest.raises(ValueError, match="empty"):
        measure_particle(np.zeros((height, width), dtype=bool))

    table = measure_instances(
        [interior, encode_mask(at_border), np.zeros((height, width), bool), polygon],
        (height, width),
        mm_per_px=0.25,
        image_id=3,
        annotation_ids=[10, 11, 12, 13],
    )
    assert len(table) == 3  # the empty mask is skipped
    assert table.records["annotation_id"].tolist() == [10, 11, 13]
    assert table.records["touches_border"].tolist() == [False, True, False]
    assert table.records["image_id"].tolist() == [3, 3, 3]
    np.testing.assert_allclose(table.size_mm("feret_min"), table.records["feret_min"] * 0.25)
    np.testing.assert_allclose(table.area_mm2(), table.records["area"] / 16)
    for bad_scale in (0, -1.5, float("nan")):
        with pytest.raises(ValueError, match=str(bad_scale)):
            measure_instances([interior], (height, width), mm_per_px=bad_scale)


def _detections_of(frames: list) -> list:
    """Detections (masks over their box) of full-frame masks, scores 0.9, 0.8, ..."""
    num = len(frames)
    return detections_from_instances(
        Instances(
            frames[0].shape,
            pred_masks=torch.from_numpy(np.stack(frames)),
            pred_boxes=Boxes(torch.zeros(num, 4)),
            scores=torch.tensor([0.9 - 0.1 * k for k in range(num)]),
            pred_classes=torch.zeros(num, dtype=torch.int64),
        )
    )


def test_masks_over_their_box_measure_as_frame_masks():
    height, width = 40, 60
    frames = [_disc(height, width, 30.0, 20.0, 12), _disc(height, width, 2.0, 20.0, 10)]
    detections = _detections_of(frames)
    assert [d.mask.shape != (height, width) for d in detections] == [True, True]
    for detection, frame in zip(detections, frames, strict=True):
        assert measure_particle(detection, (height, width)) == measure_particle(frame)
    assert measure_particle(detections[1], (height, width)).touches_border is True
    from_boxes = measure_instances(detections, (height, width), 1.0, scores=[0.9, 0.8])
    from_frames = measure_instances(frames, (height, width), 1.0, scores=[0.9, 0.8])
    assert from_boxes.records.tolist() == from_frames.records.tolist()
    with pytest.raises(ValueError, match="needs image_size"):
        measure_particle(detections[0])


def _adversarial_segmentations(height: int, width: int) -> list:
    """
    A disc on the bottom border (compressed RLE), the three first columns (uncompressed RLE: one
    run over three columns) and two polygons, one partly right of the image.
    """
    disc = encode_mask(_disc(41, 41, 20.5, 20.5, 41), (20, height - 41), (height, width))
    columns = {"size": [height, width], "counts": [0, 3 * height, (width - 3) * height]}
    polygons = [[width - 10.5, 10.0, width + 10.0, 10.0, width - 1.0, 40.2], [5, 5, 9, 5, 9, 8]]
    return [disc, columns, polygons]


def test_segmentations_measure_as_their_full_frames():
    height, width = 60, 90
    segmentations = _adversarial_segmentations(height, width)
    frames = [decode_segmentation(s, height, width) for s in segmentations]
    scores = [0.9, 0.8, 0.7]  # not NaN, which would never compare equal
    from_segmentations = measure_instances(segmentations, (height, width), 0.5, scores=scores)
    from_frames = measure_instances(frames, (height, width), 0.5, scores=scores)
    assert from_segmentations.records.tolist() == from_frames.records.tolist()
    assert from_frames.records["touches_border"].tolist() == [True, True, True]


def _traced_peak(function, *args, **kwargs) -> tuple:
    """(result, peak bytes that Python and NumPy allocated during the call)."""
    tracemalloc.start()
    try:
        result = function(*args, **kwargs)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_particles_of_a_large_photo_are_measured_and_drawn_without_a_full_frame():
    height, width = 3000, 4000
    frame_bytes = height * width  # one boolean frame, 12 MB
    segmentations = _adversarial_segmentations(height, width)
    detections = _detections_of([_disc(60, 80, 30.0, 20.0, 12)])

    table, peak = _traced_peak(measure_instances, segmentations, (height, width), 1.0)
    assert len(table) == 3 and peak < frame_bytes / 20
    _, peak = _traced_peak(measure_instances, detections, (height, width), 1.0)
    assert peak < frame_bytes / 20
    photo = np.zeros((height, width), dtype=np.uint8)
    overlay, peak = _traced_peak(draw_size_overlay, photo, table, dict(enumerate(segmentations)))
    assert overlay.shape == (height, width, 3) and peak < overlay.nbytes + frame_bytes / 20


def test_overlay_outlines_each_particle_where_it_is():
    height, width = 60, 80
    inside = [[50, 30, 65, 30, 65, 40, 50, 40]]  # pixels [50, 65) x [30, 40)
    at_corner = np.zeros((height, width), dtype=bool)
    at_corner[50:, 70:] = True
    at_corner = encode_mask(at_corner)
    table = measure_instances([inside, at_corner], (height, width), 1.0)
    overlay = draw_size_overlay(
        np.zeros((height, width), np.uint8), table, {0: inside, 1: at_corner}
    )

    drawn = overlay[20:].any(axis=2)  # below the colour bar
    outlines = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in ((50, 30, 65, 40), (70, 50, 80, 60)):
        outlines[y0:y1, x0:x1] = True
        outlines[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = False
    np.testing.assert_array_equal(drawn, outlines[20:])


def test_edge_modes_and_miles_lantuejoul_weights():
    # Frame 100 x 50: two interior particles, one touching the border, one spanning the width.
    table = _table(
        [2.0, 5.0, 3.0, 9.0],
        frame=(100, 50),
        bbox_w=[20, 50, 10, 100],
        bbox_h=[10, 25, 10, 30],
        touches_border=[False, False, True, True],
    )
    np.testing.assert_array_equal(edge_weights(table, "exclude"), [1, 1, 0, 0])
    np.testing.assert_array_equal(edge_weights(table, "include"), [1, 1, 1, 1])
    # W H / ((W - w)(H - h)) = 5000 / (80 * 40) and 5000 / (50 * 25).
    np.testing.assert_allclose(edge_weights(table, "miles-lantuejoul"), [1.5625, 4.0, 0, 0])
    for mode, used in (("exclude", 2), ("include", 4), ("miles-lantuejoul", 2)):
        distribution = size_distribution(table, edge_mode=mode)
        assert (distribution.n_particles, distribution.n_border) == (4, 2)
        assert (distribution.n_used, distribution.n_spanning_frame) == (used, 1)
    corrected = size_distribution(table, edge_mode="miles-lantuejoul")
    assert corrected.count.percent_passing([2.0])[0] == pytest.approx(100 * 1.5625 / 5.5625)
    with pytest.raises(ValueError, match="sideways"):
        edge_weights(table, "sideways")


def test_d_values_cumulative_curve_and_sieves_by_count_and_mass():
    table = _table([4.0, 1.0, 8.0, 2.0])  # unsorted on purpose
    distribution = size_distribution(table, measure="ecd", edge_mode="include")

    # By count, plotting positions 12.5, 37.5, 62.5, 87.5 % at 1, 2, 4, 8 mm.
    count = distribution.count.d_values()
    assert count["D50"] == pytest.approx(math.sqrt(2 * 4))
    assert count["D80"] == pytest.approx(4 * 2 ** ((80 - 62.5) / 25))
    assert count["D20"] == pytest.approx(2 ** ((20 - 12.5) / 25))
    assert (count["D10"], count["D90"], count["topsize"]) == pytest.approx((1, 8, 8))
    np.testing.assert_allclose(
        distribution.count.percent_passing([0.5, 2.0, 3.0, 8.0]), [0, 50, 50, 100]
    )

    # By mass, weights proportional to area^1.5, i.e. to d^3: 1, 8, 64, 512 (sum 585).
    np.testing.assert_allclose(
        distribution.mass.percent_passing([1.0, 4.0, 7.9]), np.array([1, 73, 73]) / 5.85
    )
    # Plotting positions (1 + 8 + 32) / 585 at 4 mm and (73 + 256) / 585 at 8 mm.
    expected_d50 = 4 * 2 ** ((0.5 * 585 - 41) / (329 - 41))
    assert distribution.mass.d_values()["D50"] == pytest.approx(expected_d50)

    np.testing.assert_allclose(distribution.sieves_mm, 2.0 ** (np.arange(-1, 7) / 2))
    np.testing.assert_allclose(
        distribution.passing_at_sieves("count"), [0, 25, 25, 50, 50, 75, 75, 100]
    )
    np.testing.assert_allclose(
        distribution.retained_at_sieves("count"), [25, 0, 25, 0, 25, 0, 25, 0]
    )
    np.testing.assert_allclose(
        distribution.retained_at_sieves("mass"), np.array([1, 0, 8, 0, 64, 0, 512, 0]) / 5.85
    )


def test_empty_distribution_and_fits_fail_soft():
    empty = size_distribution(ParticleTable.empty(0.5), edge_mode="miles-lantuejoul")
    assert (empty.n_particles, empty.n_border, empty.n_used) == (0, 0, 0)
    assert len(empty.sieves_mm) == 0
    assert all(math.isnan(v) for v in empty.mass.d_values().values())
    two = CumulativeCurve.from_particles(np.array([1.0, 2.0]), np.ones(2))
    for fit in list(fit_models(empty.count).values()) + list(fit_models(two).values()):
        assert not fit.fitted and "at least 3 particles" in fit.reason
        assert math.isnan(fit.d50_mm) and math.isnan(fit.r2)


def test_rosin_rammler_fit_recovers_parameters():
    x_c, n = 25.0, 1.4
    sizes = rosin_rammler_size(100 * np.random.default_rng(7).random(3000), x_c, n)
    fit = fit_models(CumulativeCurve.from_particles(sizes, np.ones_like(sizes)))["rosin_rammler"]
    assert fit.fitted and fit.r2 > 0.99 and fit.rmse_pct < 2
    assert fit.params["x_c"] == pytest.approx(x_c, rel=0.04)
    assert fit.params["n"] == pytest.approx(n, rel=0.04)
    assert fit.d50_mm == pytest.approx(x_c * math.log(2) ** (1 / n), rel=0.04)


def test_swebrec_fit_on_its_own_curve():
    sizes = swebrec_size(100 * np.random.default_rng(3).random(2000), 100.0, 30.0, 2.0)
    fit = fit_models(CumulativeCurve.from_particles(sizes, np.ones_like(sizes)))["swebrec"]
    assert fit.fitted and fit.r2 > 0.995
    assert all(math.isfinite(v) for v in fit.params.values())
    assert fit.params["x_max"] > sizes.max()
    assert fit.d50_mm == pytest.approx(30.0, rel=0.05)
    assert fit.note == ""


def test_swebrec_fit_says_when_no_maximum_size_is_determined():
    # Log-logistic sizes: Swebrec's limit as x_max grows, so x_max runs to its bound.
    uniform = np.random.default_rng(4).random(2000)
    sizes = 30.0 * (uniform / (1 - uniform)) ** (1 / 3)
    fit = fit_models(CumulativeCurve.from_particles(sizes, np.ones_like(sizes)))["swebrec"]
    assert fit.fitted and fit.r2 > 0.99
    assert fit.params["x_max"] == pytest.approx(1e4 * sizes.max(), rel=1e-3)
    assert "x_max stopped at its bound" in fit.note
    assert fit.to_dict()["note"] == fit.note


def _read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _read_strict_json(path):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant} in {path}")

    with open(path) as f:
        return json.load(f, parse_constant=reject)


def test_report_writes_all_files(tmp_path):
    height, width = 60, 80
    masks = [
        _disc(height, width, cx, cy, d)
        for cx, cy, d in ((20, 20, 14), (50, 30, 20), (70, 50, 9), (2, 30, 8))
    ]
    table = measure_instances(masks, (height, width), mm_per_px=0.5)
    out_dir = str(tmp_path / "report")
    summary = write_psd_report(table, out_dir, measure="feret_min", edge_mode="exclude")
    assert sorted(os.listdir(out_dir)) == sorted(REPORT_FILES)

    particles = _read_csv(os.path.join(out_dir, "particles.csv"))
    assert len(particles) == 4
    assert [float(row["weight"]) for row in particles] == [1, 1, 1, 0]
    assert [row["touches_border"] for row in particles] == ["0", "0", "0", "1"]
    for row in particles:
        assert float(row["ecd_mm"]) == pytest.approx(0.5 * float(row["ecd_px"]))
    distribution = _read_csv(os.path.join(out_dir, "distribution.csv"))
    assert float(distribution[0]["passing_mass_pct"]) == 0
    assert float(distribution[-1]["passing_count_pct"]) == 100

    saved = _read_strict_json(os.path.join(out_dir, "summary.json"))
    assert saved == summary
    assert saved["counts"] == {
        "particles": 4,
        "border": 1,
        "used": 3,
        "excluded": 1,
        "spanning_frame": 0,
        "skipped": 0,
    }
    assert saved["skipped_by_reason"] == {}
    assert (saved["mm_per_px"], saved["size_measure"], saved["edge_mode"]) == (
        0.5,
        "feret_min",
        "exclude",
    )
    assert "area" in saved["weighting"]["mass"] and "1.5" in saved["weighting"]["mass"]
    assert saved["fits"]["count"]["rosin_rammler"]["fitted"] is True
    assert saved["d_values_mm"]["count"]["D50"] == pytest.approx(
        float(np.median(table.size_mm("feret_min")[:3]))
    )
    plot = cv2.imread(os.path.join(out_dir, "psd.png"))
    assert plot is not None and plot.ndim == 3 and plot.std() > 0
    with pytest.raises(FileExistsError, match="report"):
        write_psd_report(table, out_dir)


def test_report_of_no_particles_is_valid(tmp_path):
    out_dir = str(tmp_path / "empty")
    write_psd_report(ParticleTable.empty(0.2), out_dir)
    assert sorted(os.listdir(out_dir)) == sorted(REPORT_FILES)
    assert _read_csv(os.path.join(out_dir, "particles.csv")) == []
    assert _read_csv(os.path.join(out_dir, "distribution.csv")) == []
    saved = _read_strict_json(os.path.join(out_dir, "summary.json"))
    assert saved["counts"]["particles"] == 0
    assert saved["d_values_mm"]["mass"]["D50"] is None
    assert saved["fits"]["count"]["swebrec"]["fitted"] is False
    assert cv2.imread(os.path.join(out_dir, "psd.png")) is not None


def _write_ground_truth(folder) -> str:
    """Two 60 x 80 images: four particles (one at the border, one a polygon) and none."""
    height, width = 60, 80
    masks = [
        _disc(height, width, cx, cy, d) for cx, cy, d in ((20, 20, 14), (50, 30, 20), (3, 45, 9))
    ]
    annotations = [annotation_from_mask(mask) for mask in masks]
    annotations.append(
        {"category_id": 1, "segmentation": [[60, 45, 72, 45, 72, 55, 60, 55]], "iscrowd": 0}
    )
    for index, annotation in enumerate(annotations):
        annotation.update(id=index + 1, image_id=1)
    os.makedirs(os.path.join(folder, "images"))
    for name in ("belt_a.png", "belt_b.png"):
        photo = np.full((height, width, 3), 40, dtype=np.uint8)
        cv2.imwrite(os.path.join(folder, "images", name), photo)
    data = {
        "images": [
            {"id": 1, "file_name": "belt_a.png", "height": height, "width": width},
            {"id": 2, "file_name": "belt_b.png", "height": height, "width": width},
        ],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "ore"}],
    }
    path = os.path.join(folder, "gt.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def _run_psd(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, PSD_SCRIPT, *args], capture_output=True, text=True, timeout=120
    )


def test_cli_on_ground_truth(tmp_path):
    gt_path = _write_ground_truth(str(tmp_path))
    out = str(tmp_path / "psd")
    result = _run_psd(
        "--coco-json", gt_path, "--images", str(tmp_path / "images"), "--mm-per-px", "0.5",
        "--out", out, "--exclude-edge", "--size-measure", "rect_width",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "D50_mm" in result.stdout and "belt_a" in result.stdout

    assert sorted(os.listdir(out)) == ["all", "d_values.csv", "images", "skipped.csv"]
    assert _read_csv(os.path.join(out, "skipped.csv")) == []
    assert sorted(os.listdir(os.path.join(out, "images"))) == ["belt_a", "belt_b"]
    assert sorted(os.listdir(os.path.join(out, "images", "belt_a"))) == sorted(
        (*REPORT_FILES, "overlay.png")
    )
    overlay = cv2.imread(os.path.join(out, "images", "belt_a", "overlay.png"))
    assert overlay.shape == (60, 80, 3) and (overlay != 40).any()
    run_summary = _read_strict_json(os.path.join(out, "all", "summary.json"))
    assert run_summary["counts"]["particles"] == 4 and run_summary["counts"]["border"] == 1
    assert run_summary["edge_mode"] == "exclude" and run_summary["size_measure"] == "rect_width"
    empty_summary = _read_strict_json(os.path.join(out, "images", "belt_b", "summary.json"))
    assert empty_summary["counts"]["particles"] == 0
    # The polygon is a 12 x 10 px rectangle: width 10 px = 5 mm.
    particles = _read_csv(os.path.join(out, "all", "particles.csv"))
    assert float(particles[-1]["rect_width_mm"]) == pytest.approx(5.0)
    d_values = _read_csv(os.path.join(out, "d_values.csv"))
    assert [row["report"] for row in d_values] == ["belt_a"] * 2 + ["belt_b"] * 2 + ["all"] * 2


def test_cli_on_results_list(tmp_path):
    height, width = 50, 70
    predictions = [
        {"image_id": 7, "category_id": 1, "segmentation": encode_mask(mask), "score": score}
        for mask, score in (
            (_disc(height, width, 20, 20, 12), 0.9),
            (_disc(height, width, 45, 25, 16), 0.3),
            (_disc(height, width, 50, 38, 10), 0.8),
        )
    ]
    json_path = str(tmp_path / "predictions.json")
    with open(json_path, "w") as f:
        json.dump(predictions, f)
    out = str(tmp_path / "psd")
    result = _run_psd(
        "--coco-json", json_path, "--mm-per-px", "2", "--out", out, "--score-thresh", "0.5",
        "--edge-mode", "miles-lantuejoul",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    particles = _read_csv(os.path.join(out, "images", "image_7", "particles.csv"))
    assert [float(row["score"]) for row in particles] == [0.9, 0.8]
    summary = _read_strict_json(os.path.join(out, "all", "summary.json"))
    assert summary["counts"]["particles"] == 2 and summary["edge_mode"] == "miles-lantuejoul"


def test_cli_counts_and_lists_annotations_without_a_pixel(tmp_path, capsys):
    height, width = 60, 80
    segmentations = [
        [[10, 10, 30, 10, 30, 25, 10, 25]],
        [],
        {"size": [height, width], "counts": [height * width]},  # an RLE without a pixel
        [[100, 10, 140, 10, 120, 30]],  # right of the image
        [[10, 40, 50, 40.1, 10, 40.2]],  # between two rows of pixel centres
        [[60, 30, 1e9, 30, 1e9, 50, 60, 50]],  # clipped at the right border, then measured
    ]
    data = {
        "images": [{"id": 1, "file_name": "belt.png", "height": height, "width": width}],
        "annotations": [
            {"id": 11 + index, "image_id": 1, "segmentation": segmentation}
            for index, segmentation in enumerate(segmentations)
        ],
    }
    json_path = tmp_path / "gt.json"
    json_path.write_text(json.dumps(data))
    out = tmp_path / "psd"

    assert (
        _run_psd_here(["--coco-json", str(json_path), "--mm-per-px", "1", "--out", str(out)]) == 0
    )

    assert (
        "4 annotations skipped: 2 empty segmentation, 1 wholly outside the image, 1 too thin to "
        f"cover a pixel (listed in {out / 'skipped.csv'})"
    ) in capsys.readouterr().out.splitlines()
    reasons = ["empty segmentation"] * 2 + ["wholly outside the image", "too thin to cover a pixel"]
    assert _read_csv(out / "skipped.csv") == [
        {"image_id": "1", "annotation_id": str(annotation_id), "reason": reason}
        for annotation_id, reason in zip((12, 13, 14, 15), reasons, strict=True)
    ]
    for report in ("all", "images/belt"):
        summary = _read_strict_json(out / report / "summary.json")
        assert (summary["counts"]["particles"], summary["counts"]["skipped"]) == (2, 4)
        assert summary["skipped_by_reason"] == {
            "empty segmentation": 2,
            "wholly outside the image": 1,
            "too thin to cover a pixel": 1,
        }
    assert {row["skipped"] for row in _read_csv(out / "d_values.csv")} == {"4"}
    clipped = _read_csv(out / "all" / "particles.csv")[1]
    assert [clipped[f"bbox_{key}_px"] for key in ("x", "y", "w", "h")] == ["60", "30", "20", "20"]


def test_cli_rejects_bad_scale_and_missing_file(tmp_path):
    gt_path = _write_ground_truth(str(tmp_path))
    out = str(tmp_path / "psd")
    bad_scale = _run_psd("--coco-json", gt_path, "--mm-per-px", "-0.3", "--out", out)
    assert bad_scale.returncode != 0 and "-0.3" in bad_scale.stderr
    missing = str(tmp_path / "nowhere.json")
    no_file = _run_psd("--coco-json", missing, "--mm-per-px", "0.5", "--out", out)
    assert no_file.returncode != 0 and missing in no_file.stderr
    assert not os.path.exists(out)


def _run_psd_here(argv) -> int:
    """psd.py's exit code, run in this process: faster than a subprocess."""
    return run_tool(load_script("psd").main, [*argv, "--no-progress"])


def test_cli_bad_json_or_missing_image_writes_nothing(tmp_path, capsys):
    gt_path = _write_ground_truth(str(tmp_path))
    out = str(tmp_path / "psd")
    malformed = str(tmp_path / "broken.json")
    with open(malformed, "w") as f:
        f.write('{"images": [')
    assert _run_psd_here(["--coco-json", malformed, "--mm-per-px", "1", "--out", out]) == 2
    assert capsys.readouterr().err == (
        f"error: {malformed} is not valid JSON: Expecting value: line 1 column 13 (char 12)\n"
    )

    photo = str(tmp_path / "images" / "belt_b.png")
    os.remove(photo)
    args = ["--coco-json", gt_path, "--images", str(tmp_path / "images"), "--mm-per-px", "1"]
    assert _run_psd_here([*args, "--out", out]) == 2
    assert capsys.readouterr().err == (
        f"error: Images not found in {tmp_path / 'images'}: belt_b.png\n"
    )
    # A photo of another size than the file gives, found after the first image's reports.
    cv2.imwrite(photo, np.zeros((30, 80, 3), dtype=np.uint8))
    assert _run_psd_here([*args, "--out", out]) == 2
    assert capsys.readouterr().err == (
        f"error: {gt_path}: image_id 2 gives [height, width] = [60, 80] but the image {photo} "
        "is [30, 80]\n"
    )
    assert not os.path.exists(out)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]


@pytest.mark.parametrize(
    "content, message",
    [
        (
            {
                "images": [{"id": 1, "height": 6, "width": 8}],
                "annotations": [{"image_id": 2, "segmentation": [[1, 1, 5, 1, 5, 4]]}],
            },
            "annotations[0]['image_id'] = 2: expected the id of an entry of 'images'",
        ),
        (
            {
                "images": [{"id": 1, "height": 6, "width": 8}],
                "annotations": [{"image_id": 1, "segmentation": [[1, 1, 5, 1]]}],
            },
            "annotations[0]['segmentation'][0] = [1, 1, 5, 1]: expected a polygon of at least 3 "
            "points",
        ),
        (
            {
                "images": [
                    {"id": 1, "height": 6, "width": 8, "file_name": "x.png"},
                    {"id": 2, "height": 6, "width": 8, "file_name": "x.jpg"},
                ],
                "annotations": [],
            },
            "images[1] = {'file_name': 'x.jpg', 'height': 6, 'id': 2, 'width': 8}: its report "
            "folder 'x' would be that of images[0]",
        ),
        (
            [{"image_id": 3, "score": 0.5, "segmentation": [[1, 1, 5, 1, 5, 4]]}],
            "no entry of image_id 3 is an RLE, whose 'size' gives the image size (polygons do not)",
        ),
        (
            [{"image_id": 3, "score": 0.5, "segmentation": {"size": [2, 3], "counts": [6, 1]}}],
            "[0]['segmentation']['counts'] = [6, 1]: RLE runs must be >= 0 and sum to 2 x 3 = 6 "
            "pixels, got 2 runs summing to 7",
        ),
    ],
)
def test_cli_names_the_bad_entry_and_writes_nothing(tmp_path, capsys, content, message):
    json_path = tmp_path / "bad.json"
    json_path.write_text(json.dumps(content))
    out = tmp_path / "psd"
    argv = ["--coco-json", str(json_path), "--mm-per-px", "1", "--out", str(out)]
    assert _run_psd_here(argv) == 2
    assert capsys.readouterr().err == f"error: {json_path}: {message}\n"
    assert not out.exists()


def test_cli_refuses_an_output_folder_that_is_not_empty(tmp_path, capsys):
    gt_path = _write_ground_truth(str(tmp_path))
    (tmp_path / "psd").mkdir()
    (tmp_path / "psd" / "old.csv").write_text("x")
    out = str(tmp_path / "psd")
    assert _run_psd_here(["--coco-json", gt_path, "--mm-per-px", "1", "--out", out]) == 2
    assert capsys.readouterr().err == (
        f"error: output folder {out} is not empty: give a new or empty folder\n"
    )
    assert os.listdir(out) == ["old.csv"]
