#!/usr/bin/env python3
"""
Ore particle-size distribution (sieve curve) from COCO instance masks.

Reads a COCO ground-truth file (a dict with "images" and "annotations") or a COCO results list
(predictions with image_id, segmentation and score, as Detectron2's COCOEvaluator writes them),
measures every particle and writes a new folder --out:

    <out>/all/             the whole run: particles.csv, distribution.csv, summary.json, psd.png
    <out>/images/<name>/   the same for each image, plus overlay.png when --images is given
    <out>/d_values.csv     the D-values table that is also printed
    <out>/skipped.csv      the annotations not measured, with why (see below)

<name> is the image's file name without extension, or image_<id> for predictions. With --images,
ground-truth images are found by their file_name, predictions by a file named after the image id
(e.g. 17.png or 000017.jpg). The folder appears complete or not at all.

Refused, with the file, entry, key and value named (exit code 2, nothing written): a polygon
coordinate that is NaN or infinite, an RLE whose runs do not cover its [height, width], an image
of 0 pixels (height or width 0, or an RLE "size" with a 0), a score that is NaN or infinite, ids
that are not integers or repeat, a photo that is truncated or not an image. A polygon reaching
outside its image is clipped to it. An annotation without a pixel in its image (empty
segmentation, no area or thinner than a pixel, wholly outside the image) is not measured: the run
prints how many were skipped and why, counts them in each summary.json and d_values.csv, and
lists them in skipped.csv.

With --calibration, the predictions are those at the model's count-calibrated threshold, each
weighing its size bin's factor (segtools.analysis.size_correction), as predict.py's reports.

Example:
    python scripts/psd.py --coco-json output/inference/coco_instances_results.json \\
        --mm-per-px 0.42 --edge-mode miles-lantuejoul --out output/psd \\
        [--calibration output/model_final.calibration.json]
"""

import argparse
import sys

from segtools.analysis import EDGE_MODES, LENGTH_MEASURES, write_coco_psd_reports
from segtools.calibration import load_calibration
from segtools.cli import (
    UsageError,
    add_bootstrap_arguments,
    bootstrap_options,
    bounded_float,
    run_tool,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--coco-json", required=True, help="COCO ground truth or results list")
    parser.add_argument("--images", help="image folder; when given, also write size overlays")
    parser.add_argument(
        "--mm-per-px",
        required=True,
        type=bounded_float(0.0, include_minimum=False),
        help="scale, > 0",
    )
    parser.add_argument("--out", required=True, help="output folder (new or empty)")
    parser.add_argument("--exclude-edge", action="store_true", help="same as --edge-mode exclude")
    parser.add_argument(
        "--edge-mode",
        choices=EDGE_MODES,
        help="particles touching the image border: exclude, include (default) or "
        "miles-lantuejoul (excluded, interior ones weighted)",
    )
    parser.add_argument(
        "--size-measure",
        default="ecd",
        choices=LENGTH_MEASURES,
        metavar="MEASURE",
        help=f"one of {', '.join(LENGTH_MEASURES)} (default: ecd, equivalent-circle diameter)",
    )
    parser.add_argument(
        "--score-thresh",
        type=bounded_float(0.0, 1.0),
        help="drop predictions scoring below it, in [0, 1] (default 0)",
    )
    parser.add_argument(
        "--calibration",
        help="the predicting model's count calibration file (model_final.calibration.json): its "
        "score threshold, and its size correction weighing each particle",
    )
    add_bootstrap_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.exclude_edge and args.edge_mode not in (None, "exclude"):
        parser.error(f"--exclude-edge contradicts --edge-mode {args.edge_mode}")
    score_thresh, size_correction = args.score_thresh or 0.0, None
    if args.calibration is not None:
        if args.score_thresh is not None:
            raise UsageError("--score-thresh contradicts --calibration, which sets the threshold")
        calibration = load_calibration(args.calibration)
        score_thresh, size_correction = calibration.score_threshold, calibration.size_correction
    table = write_coco_psd_reports(
        args.coco_json,
        args.out,
        args.mm_per_px,
        image_dir=args.images,
        measure=args.size_measure,
        edge_mode="exclude" if args.exclude_edge else (args.edge_mode or "include"),
        score_thresh=score_thresh,
        min_visibility=args.min_visibility,
        show_progress=not args.no_progress,
        bootstrap=bootstrap_options(args),
        size_correction=size_correction,
    )
    print(table)
    print(f"Reports written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
