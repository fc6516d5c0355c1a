#!/usr/bin/env python3
"""
Ore particle-size distribution (sieve curve) from COCO instance masks.

Reads a COCO ground-truth file (a dict with "images" and "annotations") or a COCO results list
(predictions with image_id, segmentation and score, as Detectron2's COCOEvaluator writes them),
measures every particle and writes a new folder --out:

    <out>/all/             the whole run: particles.csv, distribution.csv, summary.json, psd.png
    <out>/images/<name>/   the same for each image, plus overlay.png when --images is given
    <out>/d_values.csv     the D-values table that is also printed

<name> is the image's file name without extension, or image_<id> for predictions. With --images,
ground-truth images are found by their file_name, predictions by a file named after the image id
(e.g. 17.png or 000017.jpg). The folder appears complete or not at all.

Example:
    python scripts/psd.py --coco-json output/inference/coco_instances_results.json \\
        --mm-per-px 0.42 --edge-mode miles-lantuejoul --out output/psd
"""

import argparse
import math
import os
import sys


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--coco-json", required=True, help="COCO ground truth or results list")
    parser.add_argument("--images", help="image folder; when given, also write size overlays")
    parser.add_argument("--mm-per-px", required=True, type=_positive_float, help="scale, > 0")
    parser.add_argument("--out", required=True, help="output folder (new or empty)")
    parser.add_argument("--exclude-edge", action="store_true", help="same as --edge-mode exclude")
    parser.add_argument(
        "--edge-mode",
        help="particles touching the image border: exclude, include (default) or "
        "miles-lantuejoul (excluded, interior ones weighted)",
    )
    parser.add_argument(
        "--size-measure",
        default="ecd",
        help="ecd (default, equivalent-circle diameter), feret_min, feret_max, rect_width, "
        "rect_length, ellipse_major or ellipse_minor",
    )
    parser.add_argument(
        "--score-thresh", type=float, default=0.0, help="drop predictions scoring below it"
    )
    return parser


def run(args: argparse.Namespace) -> str:
    """Write the reports; return the D-values table. Raises on bad input, writing nothing."""
    from segtools.analysis import (
        ParticleTable,
        draw_size_overlay,
        iter_particle_tables,
        load_coco_instances,
        load_image,
        resolve_image_paths,
        write_psd_report,
    )
    from segtools.analysis.report import d_values_csv, d_values_text
    from segtools.atomic_io import atomic_directory, atomic_write_image, atomic_write_text

    images = load_coco_instances(args.coco_json, args.score_thresh)
    paths = resolve_image_paths(args.images, images) if args.images else {}
    options = {"measure": args.size_measure, "edge_mode": args.edge_mode}
    summaries, tables = {}, []
    with atomic_directory(args.out) as out_dir:
        for image, table in iter_particle_tables(images, args.mm_per_px):
            image_dir = os.path.join(out_dir, "images", image.name)
            summaries[image.name] = write_psd_report(table, image_dir, title=image.name, **options)
            if image.image_id in paths:
                photo = load_image(paths[image.image_id], image, args.coco_json)
                segmentations = dict(zip(image.annotation_ids, image.segmentations, strict=True))
                overlay = draw_size_overlay(photo, table, segmentations, **options)
                atomic_write_image(os.path.join(image_dir, "overlay.png"), overlay)
            tables.append(table)
        run_table = ParticleTable.concatenate(tables, args.mm_per_px)
        title = os.path.basename(args.coco_json)
        summaries["all"] = write_psd_report(
            run_table, os.path.join(out_dir, "all"), title=title, **options
        )
        atomic_write_text(os.path.join(out_dir, "d_values.csv"), d_values_csv(summaries))
    return d_values_text(summaries)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Checked before importing segtools, which imports Detectron2 (seconds), to fail fast.
    if args.exclude_edge and args.edge_mode not in (None, "exclude"):
        parser.error(f"--exclude-edge contradicts --edge-mode {args.edge_mode}")
    args.edge_mode = "exclude" if args.exclude_edge else (args.edge_mode or "include")
    if not os.path.isfile(args.coco_json):
        parser.error(f"--coco-json: file not found: {args.coco_json}")
    if args.images is not None and not os.path.isdir(args.images):
        parser.error(f"--images: folder not found: {args.images}")
    if os.path.isdir(args.out) and os.listdir(args.out):
        parser.error(f"--out: folder exists and is not empty: {args.out}")

    from segtools.analysis import EDGE_MODES, LENGTH_MEASURES, CocoInputError

    if args.edge_mode not in EDGE_MODES:
        parser.error(f"--edge-mode: {args.edge_mode!r} is not one of {', '.join(EDGE_MODES)}")
    if args.size_measure not in LENGTH_MEASURES:
        parser.error(
            f"--size-measure: {args.size_measure!r} is not one of {', '.join(LENGTH_MEASURES)}"
        )
    try:
        table = run(args)
    except (OSError, CocoInputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(table)
    print(f"Reports written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
