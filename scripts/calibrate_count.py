#!/usr/bin/env python3
"""
Calibrate a trained model's score threshold for counting: find the threshold at which it finds
as many instances as annotated images hold, and store it beside the weights, where predict.py
reads it (segtools.calibration).

    python scripts/calibrate_count.py --config-file configs/LosNet/losnet_MV3S_ore_synthetic.yaml \\
        --weights output/losnet_MV3S_ore_synthetic/model_final.pth \\
        (--dataset ore_synthetic_val | --annotations my_photos.json --image-root my_photos/) \\
        [--device cpu|cuda] [-- KEY VALUE ...]

--annotations takes a COCO instances file of your own photos (every visible particle annotated;
images as the model sees them when predicting: with `predict.py --tile`, tiles of that size,
e.g. from datasets/prepare_ore_tiles.py). Writes <weights without .pth>.calibration.json and
prints the threshold. With masks it also stores the model's size correction on those images
(segtools.analysis.size_correction; SEGTOOLS.COUNT_CALIBRATION.SIZE_BINS bins, 0: none), which
predict.py's particle-size reports then apply. A mistake in the input exits with code 2 and one
line on stderr.
"""

import argparse
import os
import sys

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.modeling import build_model

from segtools.calibration import calibrate_count
from segtools.checkpoint import load_weights
from segtools.cli import UsageError, run_tool, split_overrides
from segtools.config import check_device, get_project_cfg
from segtools.data import prepare_dataset
from segtools.data.coco_input import check_ground_truth, read_coco_json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="the trained model_final.pth")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="a registered dataset (datasets/README.md)")
    source.add_argument("--annotations", help="a COCO instances file of your own images")
    parser.add_argument("--image-root", help="with --annotations: the folder of its images")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    return parser


def _register_annotations(path: str, image_root: str) -> str:
    """Register the user's COCO file as a dataset, after checking it; returns its name."""
    check_ground_truth(read_coco_json(path), path, training_set=True)
    if not os.path.isdir(image_root):
        raise UsageError(f"--image-root {image_root}: no such folder")
    name = f"count_calibration:{os.path.abspath(path)}"
    DatasetCatalog.register(name, lambda: load_coco_json(path, image_root, name))
    MetadataCatalog.get(name).set(json_file=path, image_root=image_root)
    return name


def main(argv=None) -> int:
    own, opts = split_overrides(argv)
    args = build_parser().parse_args(own)
    if not os.path.isfile(args.weights):
        raise UsageError(f"--weights {args.weights}: no such file")
    if (args.annotations is None) != (args.image_root is None):
        raise UsageError("--annotations and --image-root go together")
    cfg = get_project_cfg(args.config_file, opts)
    cfg.MODEL.DEVICE = args.device
    check_device(cfg)
    if args.dataset is not None:
        if args.dataset not in DatasetCatalog:
            raise UsageError(f"--dataset {args.dataset!r} is not a registered dataset")
        dataset = args.dataset
        prepare_dataset(dataset)
    else:
        dataset = _register_annotations(args.annotations, args.image_root)
    model = build_model(cfg)
    load_weights(model, args.weights)
    size_bins = cfg.SEGTOOLS.COUNT_CALIBRATION.SIZE_BINS
    calibration = calibrate_count(cfg, model.state_dict(), args.weights, dataset, size_bins)
    correction = calibration.size_correction
    print(
        f"score threshold {calibration.score_threshold:.4f}: {calibration.count_at_threshold} "
        f"detections for {calibration.true_count} annotated instances in {calibration.images} "
        f"images; size correction: "
        + (f"{len(correction.factors)} size bins" if correction else "none")
        + f"; predict.py now uses them for {args.weights}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
