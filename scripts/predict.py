#!/usr/bin/env python3
"""
Predict instances on images, folders and videos with any model of this repository.

    python scripts/predict.py --config-file configs/LosNet/losnet_MV3S_ore_synthetic.yaml \\
        --weights output/losnet_MV3S_ore_synthetic/model_final.pth \\
        --input photos/ belt.mp4 --output predictions/ \\
        [--device cpu|cuda] [--score-thresh 0.3] [--tile 640 --overlap 128] \\
        [--psd --mm-per-px 0.5] [KEY VALUE ...]

Built on Detectron2's DefaultPredictor (the config's test resize and input format). Folders are
searched recursively for images and videos; every n-th frame of a video is predicted. Per image the
output folder (new or empty) receives:

    <name>.png    the instances drawn by Detectron2's Visualizer
    <name>.json   COCO results (RLE masks, 1-based category ids) of that image

and for the run `results.json` (all COCO results) and `summary.json` (settings, skipped inputs and
why, and per image_id its name, source, size, instance count and prediction time).
With --tile, large photos are predicted window by window (segtools.inference.TiledPredictor).
With --psd, particle-size reports (sieve curve, D-values, CSVs) are written under psd/<name>/ and
for the whole run under psd/all/.

An input that cannot be read is named, skipped and counted, and the rest goes on; the exit code
is then 1. Every file is written whole or not at all.
"""

import argparse
import os
import sys

from segtools.analysis import EDGE_MODES, LENGTH_MEASURES
from segtools.atomic_io import check_new_or_empty_folder
from segtools.config import get_project_cfg, set_test_score_threshold
from segtools.inference import collect_inputs
from segtools.inference.run import PsdOptions, build_predictor, predict_to_folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="trained weights (.pth)")
    parser.add_argument("--input", nargs="+", required=True, help="images, folders, videos")
    parser.add_argument("--output", required=True, help="output folder (new or empty)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--score-thresh", type=float, help="override the config's threshold")
    parser.add_argument("--tile", type=int, help="predict windows of this size (training tile)")
    parser.add_argument("--overlap", type=int, default=128, help="window overlap with --tile")
    parser.add_argument(
        "--merge-iou",
        type=float,
        default=0.5,
        help="views of neighbouring windows whose masks agree by this IoU where both windows "
        "see the image are one particle",
    )
    parser.add_argument("--every-nth-frame", type=int, default=1, help="video frames to predict")
    parser.add_argument("--psd", action="store_true", help="write particle-size reports")
    parser.add_argument("--mm-per-px", type=float, help="scale of the images (with --psd)")
    parser.add_argument("--edge-mode", default="include", choices=EDGE_MODES)
    parser.add_argument("--size-measure", default="ecd", choices=LENGTH_MEASURES)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    return parser


def check_args(parser, args) -> None:
    if not os.path.isfile(args.config_file):
        parser.error(f"--config-file: no such file: {args.config_file}")
    if not os.path.isfile(args.weights):
        parser.error(f"--weights: no such file: {args.weights}")
    try:
        check_new_or_empty_folder(args.output, "--output")
    except FileExistsError as e:
        parser.error(str(e))
    if args.psd and (args.mm_per_px is None or not args.mm_per_px > 0):
        parser.error(f"--psd needs --mm-per-px > 0, got {args.mm_per_px}")
    if args.tile is not None and not 0 <= args.overlap < args.tile:
        parser.error(
            f"--overlap must be in [0, --tile), got {args.overlap} with --tile {args.tile}"
        )
    if args.every_nth_frame < 1:
        parser.error(f"--every-nth-frame must be >= 1, got {args.every_nth_frame}")
    if args.score_thresh is not None and not 0 <= args.score_thresh <= 1:
        parser.error(f"--score-thresh must be in [0, 1], got {args.score_thresh}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    cfg = get_project_cfg(args.config_file, args.opts)
    cfg.MODEL.WEIGHTS = args.weights
    cfg.MODEL.DEVICE = args.device
    if args.score_thresh is not None:
        try:
            set_test_score_threshold(cfg, args.score_thresh)
        except KeyError as e:
            parser.error(f"--score-thresh: {e.args[0]}")
    cfg.freeze()
    files, skipped = collect_inputs(args.input)
    for problem in skipped:
        print(f"skipped {problem.source}: {problem.reason}", file=sys.stderr)
    if not files:
        print("error: no image or video to predict", file=sys.stderr)
        return 2

    predict, metadata = build_predictor(cfg, args.tile, args.overlap, args.merge_iou)
    psd = PsdOptions(args.mm_per_px, args.size_measure, args.edge_mode) if args.psd else None
    settings = {
        "config_file": args.config_file,
        "weights": args.weights,
        "device": args.device,
        "tile": args.tile,
        "overlap": args.overlap if args.tile else None,
    }
    summary = predict_to_folder(
        predict, metadata, files, skipped, args.output, args.every_nth_frame, psd, settings
    )
    print(
        f"{summary['images_predicted']} image(s) predicted, {summary['instances']} instances, "
        f"{len(summary['skipped'])} input(s) skipped; written to {args.output}"
    )
    return 1 if summary["skipped"] else 0


if __name__ == "__main__":
    sys.exit(main())
