#!/usr/bin/env python3
"""
Draw images of a registered dataset with their annotations, as one picture.

    python scripts/visualize_dataset.py --dataset ore_synthetic_val --num-images 6 --out grid.jpg

Each column shows one image above the same image with its instances drawn by Detectron2's
Visualizer.
"""

import argparse

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.visualizer import ColorMode, Visualizer

import segtools  # noqa: F401  (registers the datasets)
from segtools.atomic_io import atomic_write_image


def draw_grid(dataset_name: str, indices, scale: float = 1.0) -> np.ndarray:
    """(H, W, 3) BGR picture: per image, the raw image above its drawn annotations."""
    records = DatasetCatalog.get(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    columns = []
    for index in indices:
        record = records[index]
        image = cv2.imread(record["file_name"], cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"Cannot read image {record['file_name']}")
        visualizer = Visualizer(image[:, :, ::-1], metadata, scale, ColorMode.IMAGE)
        drawn = visualizer.draw_dataset_dict(record).get_image()[:, :, ::-1]
        raw = cv2.resize(image, (drawn.shape[1], drawn.shape[0]))
        columns.append(np.vstack([raw, drawn]))
    height = max(c.shape[0] for c in columns)
    return np.hstack([np.pad(c, ((0, height - c.shape[0]), (0, 0), (0, 0))) for c in columns])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a registered dataset name")
    parser.add_argument("--num-images", type=int, default=6)
    parser.add_argument("--first", type=int, default=0, help="index of the first image")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--out", required=True, help="output picture (.png or .jpg)")
    args = parser.parse_args(argv)
    if args.dataset not in DatasetCatalog.list():
        parser.error(f"unknown dataset {args.dataset!r}")
    if args.num_images < 1 or args.first < 0 or args.scale <= 0:
        parser.error("--num-images must be >= 1, --first >= 0 and --scale > 0")
    indices = range(args.first, args.first + args.num_images)
    atomic_write_image(args.out, draw_grid(args.dataset, indices, args.scale))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
