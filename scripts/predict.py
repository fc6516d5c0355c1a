#!/usr/bin/env python3
"""
Predict instances on images, folders and videos with any model of this repository.

    python scripts/predict.py --config-file configs/LosNet/losnet_MV3S_ore_synthetic.yaml \\
        --weights output/losnet_MV3S_ore_synthetic/model_final.pth \\
        --input photos/ belt.mp4 --output predictions/ \\
        [--device cpu|cuda] [--score-thresh 0.3] [--tile 640 --overlap 128] \\
        [--psd --mm-per-px 0.5 [--no-size-correction]] [-- KEY VALUE ...]

Config overrides, KEY VALUE pairs, go after `--`: --input takes several paths, so pairs typed
after it would be read as inputs (an input that reads as a config key is refused with this hint).

Built on Detectron2's DefaultPredictor (the config's test resize and input format). The weights
must be a checkpoint of the config's model (--allow-partial-weights loads what matches and leaves
the rest as initialised). Folders are searched recursively for images and videos; every n-th
frame of a video is predicted. The output folder (new or empty) receives:

    summary.json          the settings; per image its name, source, size, instance count and
                          prediction time; the skipped inputs and why; "complete", and if the
                          run stopped, what failed and the inputs not predicted in full
    results.json          COCO results (RLE masks, 1-based category ids) of all images
    images/<name>.png     per image: the instances drawn by Detectron2's Visualizer
    images/<name>.json    per image: its COCO results
    psd/all/              with --psd: the run's particle-size report (sieve curve, D-values, CSVs)
    psd/images/<name>/    with --psd: each image's particle-size report

<name> is the input file's name without its extension (a video frame's: <name>_frame000012),
followed by _2, _3, ... where it would equal an earlier one regardless of case. The run's files
and the images' files never share a folder, so no input's name collides with another output.
With --tile, large photos are predicted window by window (segtools.inference.TiledPredictor).

The score threshold is the count-calibrated one stored beside the weights
(scripts/calibrate_count.py), else the config's, unless --score-thresh is given. The particle-size
reports then weigh each particle by the size correction stored with that calibration (how many
annotated particles a detection of its size stands for, segtools.analysis.size_correction),
unless --no-size-correction or --score-thresh is given; summary.json records which.

A mistake in the arguments, config, weights or output folder stops the tool before it writes
anything, with one line on stderr and exit code 2. An input that cannot be read is named, skipped
and counted, and the rest goes on; the exit code is then 1. A run stopped by a fault (a full
disk, Ctrl-C) keeps what it wrote, and its summary.json names what failed (if the disk still
takes it); the exit code is then not 0. Every file is written whole or not at all.
"""

import argparse
import os
import sys
from dataclasses import asdict

from segtools.analysis import EDGE_MODES, LENGTH_MEASURES
from segtools.atomic_io import check_new_or_empty_folder
from segtools.calibration import calibration_path, use_count_calibration
from segtools.cli import (
    UsageError,
    add_bootstrap_arguments,
    bootstrap_options,
    bounded_float,
    bounded_int,
    refuse_config_keys_as_paths,
    run_tool,
    split_overrides,
)
from segtools.config import (
    check_device,
    get_project_cfg,
    set_test_score_threshold,
    test_score_threshold,
)
from segtools.data.tiling import MIN_TILE
from segtools.inference import collect_inputs
from segtools.inference.run import PsdOptions, TilingOptions, build_predictor, predict_to_folder


def tile_size(text: str) -> int:
    """An argparse type: a window side of at least MIN_TILE pixels."""
    try:
        return bounded_int(MIN_TILE)(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(
            f"{e}: smaller windows see too little of a particle, and a photo would take "
            "thousands of them"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="trained weights (.pth, .pkl)")
    parser.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="load the weights that match the model instead of refusing another model's",
    )
    parser.add_argument("--input", nargs="+", required=True, help="images, folders, videos")
    parser.add_argument("--output", required=True, help="output folder (new or empty)")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="default: MODEL.DEVICE if given after --, else cpu (whatever the config says)",
    )
    parser.add_argument(
        "--score-thresh", type=bounded_float(0, 1), help="override the config's threshold"
    )
    parser.add_argument(
        "--tile", type=tile_size, help="predict windows of this size (the training tile)"
    )
    parser.add_argument(
        "--overlap", type=bounded_int(0), default=128, help="window overlap with --tile"
    )
    parser.add_argument(
        "--merge-iou",
        type=bounded_float(0, 1, include_minimum=False),
        default=0.5,
        help="views of neighbouring windows whose masks agree by this IoU where both windows "
        "see the image are one particle",
    )
    parser.add_argument(
        "--max-per-window",
        type=bounded_int(1),
        default=300,
        help="with --tile: detections kept per window, the highest-scored (bounds memory)",
    )
    parser.add_argument(
        "--max-per-photo",
        type=bounded_int(1),
        default=200_000,
        help="with --tile: detections kept per photo, the highest-scored (bounds memory)",
    )
    parser.add_argument(
        "--every-nth-frame", type=bounded_int(1), default=1, help="video frames to predict"
    )
    parser.add_argument("--psd", action="store_true", help="write particle-size reports")
    parser.add_argument(
        "--mm-per-px",
        type=bounded_float(0, include_minimum=False),
        help="scale of the images (with --psd)",
    )
    parser.add_argument("--edge-mode", default="include", choices=EDGE_MODES)
    parser.add_argument("--size-measure", default="ecd", choices=LENGTH_MEASURES)
    parser.add_argument(
        "--no-size-correction",
        action="store_true",
        help="with --psd: weigh every particle alike, not by the size correction stored with "
        "the model's count calibration",
    )
    add_bootstrap_arguments(parser)
    return parser


def parse_args(argv) -> tuple:
    """(the parsed arguments, the config overrides after --), checked before anything is read."""
    own, opts = split_overrides(argv)
    args, unknown = build_parser().parse_known_args(own)
    if unknown:
        raise UsageError(
            f"unrecognized arguments: {' '.join(unknown)} (config KEY VALUE overrides go after "
            "--, e.g. ... -- MODEL.DEVICE cpu)"
        )
    if len(opts) % 2:
        raise UsageError(f"the overrides after -- must be KEY VALUE pairs, got {' '.join(opts)}")
    refuse_config_keys_as_paths(args.input, "--input")
    if args.psd and args.mm_per_px is None:
        raise UsageError("--psd needs --mm-per-px, the scale of the images")
    if args.tile is not None and args.overlap >= args.tile:
        raise UsageError(f"--overlap {args.overlap} must be smaller than --tile {args.tile}")
    for flag, path in (("--config-file", args.config_file), ("--weights", args.weights)):
        if not os.path.isfile(path):
            raise UsageError(f"{flag} {path}: no such file")
    check_new_or_empty_folder(args.output, "--output")
    return args, opts


def _device(flag, opts) -> str:
    """MODEL.DEVICE of the run: --device, or MODEL.DEVICE among the overrides, else cpu."""
    overridden = dict(zip(opts[::2], opts[1::2], strict=False)).get("MODEL.DEVICE")
    if flag and overridden and flag != overridden:
        raise UsageError(f"--device {flag} and MODEL.DEVICE {overridden} disagree: give one")
    return flag or overridden or "cpu"


def load_config(args, opts) -> tuple:
    """
    (the frozen config of the run, its values and device checked; where its score threshold
    comes from: "--score-thresh", a count calibration file's path, or "config"; the count
    calibration used, or None).
    """
    cfg = get_project_cfg(args.config_file, opts)
    cfg.MODEL.WEIGHTS = args.weights
    cfg.MODEL.DEVICE = _device(args.device, opts)
    try:
        calibration = None
        if args.score_thresh is not None:
            set_test_score_threshold(cfg, args.score_thresh)
            threshold_source = "--score-thresh"
        else:
            calibration = use_count_calibration(cfg, args.weights)
            threshold_source = "config" if calibration is None else calibration_path(args.weights)
    except KeyError as e:
        raise UsageError(f"--score-thresh: {e.args[0]}") from None
    check_device(cfg)
    cfg.freeze()
    return cfg, threshold_source, calibration


def size_correction(args, calibration):
    """
    The size correction the run's reports apply: the calibration's, fitted at the threshold
    the run uses, unless --no-size-correction or --score-thresh (another threshold) is given.
    """
    if not args.psd or args.no_size_correction or calibration is None:
        return None
    return calibration.size_correction


def main(argv=None) -> int:
    args, opts = parse_args(argv)
    cfg, threshold_source, calibration = load_config(args, opts)
    files, skipped = collect_inputs(args.input)
    if not files:
        reasons = "; ".join(f"{s.source}: {s.reason}" for s in skipped)
        raise UsageError(f"--input: no image or video to predict ({reasons})")
    for problem in skipped:
        print(f"skipped {problem.source}: {problem.reason}", file=sys.stderr)

    tiling = None
    if args.tile:
        tiling = TilingOptions(
            args.tile, args.overlap, args.merge_iou, args.max_per_window, args.max_per_photo
        )
    predict, metadata = build_predictor(cfg, args.allow_partial_weights, tiling)
    psd = None
    if args.psd:
        psd = PsdOptions(
            args.mm_per_px,
            args.size_measure,
            args.edge_mode,
            bootstrap_options(args),
            args.min_visibility,
            size_correction(args, calibration),
        )
    settings = {
        "config_file": args.config_file,
        "overrides": opts,
        "weights": args.weights,
        "allow_partial_weights": args.allow_partial_weights,
        "device": cfg.MODEL.DEVICE,
        "min_visibility": args.min_visibility,
        "score_threshold": test_score_threshold(cfg)[1],
        "score_threshold_from": threshold_source,
        "size_correction": (psd.size_correction.to_dict() if psd and psd.size_correction else None),
        "tiling": None if tiling is None else asdict(tiling),
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
    sys.exit(run_tool(main))
