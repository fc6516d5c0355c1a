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
import time

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from tqdm import tqdm

from segtools.analysis import (
    EDGE_MODES,
    LENGTH_MEASURES,
    ParticleTable,
    measure_instances,
    write_psd_report,
)
from segtools.atomic_io import atomic_write_image, atomic_write_json
from segtools.config import get_project_cfg, set_test_score_threshold
from segtools.inference import (
    TiledPredictor,
    Unreadable,
    collect_inputs,
    detections_from_instances,
    draw_detections,
    read_frames,
)


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
    parser.add_argument("--merge-ios", type=float, default=0.5, help="duplicate merge threshold")
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
    if os.path.exists(args.output) and (not os.path.isdir(args.output) or os.listdir(args.output)):
        parser.error(f"--output: {args.output} exists and is not an empty folder")
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


def build_predictor(args):
    """Returns (image -> list[Detection], metadata of the model's classes)."""
    cfg = get_project_cfg(args.config_file, args.opts)
    cfg.MODEL.WEIGHTS = args.weights
    cfg.MODEL.DEVICE = args.device
    if args.score_thresh is not None:
        set_test_score_threshold(cfg, args.score_thresh)
    cfg.freeze()
    predictor = DefaultPredictor(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    if args.tile:
        return TiledPredictor(predictor, args.tile, args.overlap, args.merge_ios), metadata
    return lambda image: detections_from_instances(
        predictor(image)["instances"].to("cpu")
    ), metadata


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    files, skipped = collect_inputs(args.input)
    for problem in skipped:
        print(f"skipped {problem.source}: {problem.reason}", file=sys.stderr)
    if not files:
        print("error: no image or video to predict", file=sys.stderr)
        return 2
    predict, metadata = build_predictor(args)
    os.makedirs(args.output, exist_ok=True)

    images, all_results, particle_tables, used_names = [], [], [], set()
    for path in tqdm(files, desc="predicting", unit="file"):
        for item in read_frames(path, used_names, args.every_nth_frame):
            if isinstance(item, Unreadable):
                tqdm.write(f"skipped {item.source}: {item.reason}", file=sys.stderr)
                skipped.append(item)
                continue
            height, width = item.image.shape[:2]
            image_id = len(images) + 1
            start = time.perf_counter()
            detections = predict(item.image)
            seconds = time.perf_counter() - start
            results = [d.to_coco_result(image_id, height, width) for d in detections]
            atomic_write_json(os.path.join(args.output, f"{item.name}.json"), results)
            picture = draw_detections(item.image, detections, metadata)
            atomic_write_image(os.path.join(args.output, f"{item.name}.png"), picture)
            all_results.extend(results)
            images.append(
                {
                    "id": image_id,
                    "name": item.name,
                    "source": item.source,
                    "frame_index": item.frame_index,
                    "height": height,
                    "width": width,
                    "instances": len(results),
                    "seconds": round(seconds, 4),
                }
            )
            if args.psd:
                table = measure_instances(
                    detections,
                    (height, width),
                    args.mm_per_px,
                    image_id=image_id,
                    scores=[d.score for d in detections],
                )
                write_psd_report(
                    table,
                    os.path.join(args.output, "psd", item.name),
                    measure=args.size_measure,
                    edge_mode=args.edge_mode,
                    title=item.name,
                )
                particle_tables.append(table)

    if args.psd and images:
        write_psd_report(
            ParticleTable.concatenate(particle_tables, args.mm_per_px),
            os.path.join(args.output, "psd", "all"),
            measure=args.size_measure,
            edge_mode=args.edge_mode,
            title=f"all {len(images)} image(s)",
        )
    atomic_write_json(os.path.join(args.output, "results.json"), all_results)
    summary = {
        "config_file": args.config_file,
        "weights": args.weights,
        "device": args.device,
        "tile": args.tile,
        "overlap": args.overlap if args.tile else None,
        "images_predicted": len(images),
        "instances": len(all_results),
        "skipped": [{"source": s.source, "reason": s.reason} for s in skipped],
        "images": images,
    }
    atomic_write_json(os.path.join(args.output, "summary.json"), summary, indent=2)
    print(
        f"{len(images)} image(s) predicted, {len(all_results)} instances, {len(skipped)} input(s) "
        f"skipped; written to {args.output}"
    )
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
