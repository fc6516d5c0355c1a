#!/usr/bin/env python3
"""
Draw images of a registered dataset with their annotations, as one picture.

    python scripts/visualize_dataset.py --dataset ore_synthetic_val --num-images 6 --out grid.jpg

Each column shows one image above the same image with its instances drawn by Detectron2's
Visualizer. Images --first to --first + --num-images - 1 are drawn, fewer if the dataset ends
before (the picture's line says which); an image that cannot be read whole is refused by name.
"""

import argparse
import os
import sys

import cv2
from detectron2.data import DatasetCatalog, MetadataCatalog

import segtools  # noqa: F401  (registers the datasets)
from segtools.atomic_io import atomic_write_image
from segtools.cli import UsageError, bounded_float, bounded_int, run_tool
from segtools.inference.visualize import draw_dataset_grid


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a registered dataset name")
    parser.add_argument("--num-images", type=bounded_int(1), default=6)
    parser.add_argument("--first", type=bounded_int(0), default=0, help="index of the first image")
    parser.add_argument(
        "--scale", type=bounded_float(0.0, 10.0, include_minimum=False), default=1.0
    )
    parser.add_argument("--out", required=True, help="output picture (.png or .jpg)")
    args = parser.parse_args(argv)
    if args.dataset not in DatasetCatalog.list():
        parser.error(f"unknown dataset {args.dataset!r}")
    if not cv2.haveImageWriter(args.out):
        extension = os.path.splitext(args.out)[1] or "extension-less"
        parser.error(f"--out {args.out}: OpenCV writes no {extension} pictures; give .png or .jpg")
    records = DatasetCatalog.get(args.dataset)
    if args.first >= len(records):
        indices = f", indices 0 to {len(records) - 1}" if records else ""
        raise UsageError(
            f"--first {args.first}: dataset {args.dataset} has {len(records)} images{indices}"
        )
    last = min(args.first + args.num_images, len(records)) - 1
    picture = draw_dataset_grid(
        records[args.first : last + 1], MetadataCatalog.get(args.dataset), args.scale
    )
    atomic_write_image(args.out, picture)
    print(f"wrote {args.out}: images {args.first} to {last} of {args.dataset}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
