"""
Generate the synthetic crushed-ore instance-segmentation set (images + COCO json).

Usage:
    python datasets/make_synthetic_ore.py --out DIR --num-images N --seed S [--size W H]

Writes DIR/images/*.png and DIR/annotations.json (see segtools.data.synthetic_ore); DIR must not
exist or be empty, and appears only when complete: stopped by Ctrl-C or SIGTERM, the run leaves
nothing behind.
"""

import argparse
import json
import sys

from segtools.cli import bounded_int, run_tool
from segtools.data.synthetic_ore import MIN_IMAGE_SIDE, generate_synthetic_ore

# Rendering takes about 100 bytes of memory per pixel: 7 GB for an 8192 x 8192 image.
MAX_IMAGE_SIDE = 8192


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--num-images", type=bounded_int(1), required=True)
    parser.add_argument("--seed", type=bounded_int(0), required=True)
    parser.add_argument(
        "--size",
        type=bounded_int(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE),
        nargs=2,
        default=(320, 320),
        metavar=("W", "H"),
        help=f"image width and height, {MIN_IMAGE_SIDE} to {MAX_IMAGE_SIDE} px (default: 320 320)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    json_path = generate_synthetic_ore(
        args.out, args.num_images, args.seed, tuple(args.size), not args.no_progress
    )
    with open(json_path, encoding="utf-8") as f:
        coco = json.load(f)
    num_drawn = sum(image["scene"]["num_particles_drawn"] for image in coco["images"])
    print(f"Wrote {json_path}")
    print(
        f"{len(coco['images'])} images of {args.size[0]}x{args.size[1]} px, "
        f"{num_drawn} particles drawn, {len(coco['annotations'])} annotated"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
