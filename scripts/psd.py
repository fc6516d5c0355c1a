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


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.exclude_edge and args.edge_mode not in (None, "exclude"):
        parser.error(f"--exclude-edge contradicts --edge-mode {args.edge_mode}")
    edge_mode = "exclude" if args.exclude_edge else (args.edge_mode or "include")

    # Imported after parsing, to answer --help and argument errors at once: segtools imports
    # Detectron2 (seconds).
    from segtools.analysis import EDGE_MODES, LENGTH_MEASURES, write_coco_psd_reports
    from segtools.data.coco_input import CocoFormatError

    if edge_mode not in EDGE_MODES:
        parser.error(f"--edge-mode: {edge_mode!r} is not one of {', '.join(EDGE_MODES)}")
    if args.size_measure not in LENGTH_MEASURES:
        parser.error(
            f"--size-measure: {args.size_measure!r} is not one of {', '.join(LENGTH_MEASURES)}"
        )
    try:
        table = write_coco_psd_reports(
            args.coco_json,
            args.out,
            args.mm_per_px,
            image_dir=args.images,
            measure=args.size_measure,
            edge_mode=edge_mode,
            score_thresh=args.score_thresh,
        )
    except (OSError, CocoFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(table)
    print(f"Reports written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
