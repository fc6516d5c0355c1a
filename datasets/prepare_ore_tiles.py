"""
Cut large ore photos with COCO instance annotations into overlapping training tiles.

A --tile x --tile window slides over every photo with stride tile - overlap (the last window of a
row or column ends at the border). Each instance is cropped into the tiles where at least
--min-visible-fraction of it is visible, and always into its best tile. Writes OUT/images/*.png
and OUT/annotations.json (COCO, compressed RLE masks) and prints a summary of what was kept,
clipped and dropped. OUT must not exist or be empty; it appears only when complete.

The `ore_train` / `ore_val` datasets are read from $DETECTRON2_DATASETS/ore/{train,val}, e.g.:

    python datasets/prepare_ore_tiles.py --images raw/train/images \\
        --annotations raw/train/annotations.json --out datasets/ore/train --tile 640 --overlap 128
"""

import argparse
import sys

from segtools.data.tiling import tile_coco_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", required=True, help="folder of the large photos")
    parser.add_argument("--annotations", required=True, help="COCO instance json of the photos")
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--tile", type=int, default=640, help="window side in pixels")
    parser.add_argument("--overlap", type=int, default=128, help="overlap of neighbours, pixels")
    parser.add_argument(
        "--min-visible-fraction",
        type=float,
        default=0.5,
        help="keep an instance in a tile if at least this fraction of it is visible there",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        summary = tile_coco_dataset(
            args.images,
            args.annotations,
            args.out,
            tile=args.tile,
            overlap=args.overlap,
            min_visible_fraction=args.min_visible_fraction,
            show_progress=not args.no_progress,
        )
    except (OSError, ValueError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
