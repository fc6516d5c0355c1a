"""
Generate the synthetic crushed-ore instance-segmentation set (images + COCO json).

Usage:
    python datasets/make_synthetic_ore.py --out DIR --num-images N --seed S [--size W H]

Writes DIR/images/*.png and DIR/annotations.json (see segtools.data.synthetic_ore); DIR must not
exist or be empty.
"""

import argparse
import json
import sys

from segtools.data.synthetic_ore import MIN_IMAGE_SIDE, generate_synthetic_ore


def _positive_int(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--num-images", type=_positive_int(1), required=True)
    parser.add_argument("--seed", type=_positive_int(0), required=True)
    parser.add_argument(
        "--size",
        type=_positive_int(MIN_IMAGE_SIDE),
        nargs=2,
        default=(320, 320),
        metavar=("W", "H"),
        help="image width and height in px (default: 320 320)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    try:
        json_path = generate_synthetic_ore(
            args.out, args.num_images, args.seed, tuple(args.size), not args.no_progress
        )
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
    sys.exit(main())
