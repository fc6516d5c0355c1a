#!/usr/bin/env python3
"""
Compare particle-size distributions measured from masks with the true sizes of a synthetic ore
set (D50 and D80 by count and by mass), for ground-truth masks and optionally for predictions.

    python scripts/psd_accuracy.py \\
        --ground-truth datasets/ore_synthetic/val/annotations.json \\
        [--predictions output/.../inference/ore_synthetic_val/coco_instances_results.json] \\
        [--score-thresh 0.3 | --calibration output/.../model_final.calibration.json] \\
        [--min-visibility 0.9] [--json accuracy.json]

See segtools.analysis.accuracy for the comparisons. --calibration takes the predicting model's
count calibration file: its threshold replaces --score-thresh and its size correction weighs the
predictions in extra rows.
"""

import argparse
import dataclasses
import os
import sys

from tabulate import tabulate

from segtools.analysis import psd_accuracy
from segtools.atomic_io import atomic_write_json
from segtools.calibration import CountCalibrationError, load_calibration


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ground-truth", required=True, help="synthetic ore annotations.json")
    parser.add_argument("--predictions", help="COCO results on the same images")
    parser.add_argument("--score-thresh", type=float, default=0.0)
    parser.add_argument("--max-hidden", type=float, default=0.05)
    parser.add_argument(
        "--min-visibility",
        type=float,
        help="also size the predictions estimated at least this visible (needs a LosNet with "
        "MODEL.LOSNET.VISIBILITY.ENABLED)",
    )
    parser.add_argument("--json", help="also write the comparisons to this file")
    parser.add_argument(
        "--calibration",
        help="the predicting model's count calibration file: its threshold and size correction",
    )
    args = parser.parse_args(argv)
    for path in (args.ground_truth, args.predictions, args.calibration):
        if path is not None and not os.path.isfile(path):
            parser.error(f"no such file: {path}")
    score_thresh, size_correction = args.score_thresh, None
    if args.calibration is not None:
        if args.predictions is None:
            parser.error("--calibration needs --predictions")
        try:
            calibration = load_calibration(args.calibration)
        except CountCalibrationError as e:
            parser.error(str(e))
        score_thresh, size_correction = calibration.score_threshold, calibration.size_correction
    rows = psd_accuracy(
        args.ground_truth,
        args.predictions,
        score_thresh,
        args.max_hidden,
        show_progress=True,
        min_visibility=args.min_visibility,
        size_correction=size_correction,
    )
    table = [
        [
            r.subset,
            r.weighting,
            f"{r.particles} / {r.truth_particles}",
            f"{r.measured['D50']:.1f} / {r.true['D50']:.1f}",
            f"{100 * r.relative_error['D50']:+.1f}%",
            f"{r.measured['D80']:.1f} / {r.true['D80']:.1f}",
            f"{100 * r.relative_error['D80']:+.1f}%",
        ]
        for r in rows
    ]
    headers = ["particles", "weighting", "measured / truth n", "D50 px", "error", "D80 px", "error"]
    print(tabulate(table, headers=headers, tablefmt="pipe"))
    if args.json:
        atomic_write_json(args.json, [dataclasses.asdict(r) for r in rows], indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
