"""
Cut large ore photos with COCO instance annotations into overlapping training tiles.

A --tile x --tile window slides over every photo with stride tile - overlap (the last window of a
row or column ends at the border). Each instance is cropped into the tiles where at least
--min-visible-fraction of it is visible, and always into its best tile. Writes OUT/images/*.png
and OUT/annotations.json (COCO, compressed RLE masks) and prints a summary of what was kept,
clipped and dropped. OUT must not exist or be empty; it appears only when complete.

Polygons reaching outside their photo are clipped to it; a polygon coordinate that is NaN or
infinite, an RLE whose runs do not cover the photo, a photo that is truncated or of another size
than the json gives are refused with the file, entry and value named (exit code 2). --tile is at
least 32 px: smaller tiles hold too little of a particle and multiply the files.

The `ore_train` / `ore_val` datasets are read from $DETECTRON2_DATASETS/ore/{train,val}, e.g.:

    python datasets/prepare_ore_tiles.py --images raw/train/images \\
        --annotations raw/train/annotations.json --out datasets/ore/train --tile 640 --overlap 128
"""

import argparse
import sys

from segtools.cli import bounded_float, bounded_int, run_tool
from segtools.data.tiling import MIN_TILE, tile_coco_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", required=True, help="folder of the large photos")
    parser.add_argument("--annotations", required=True, help="COCO instance json of the photos")
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument(
        "--tile", type=bounded_int(MIN_TILE), default=640, help="window side in pixels"
    )
    parser.add_argument(
        "--overlap", type=bounded_int(0), default=128, help="overlap of neighbours, pixels"
    )
    parser.add_argument(
        "--min-visible-fraction",
        type=bounded_float(0.0, 1.0),
        default=0.5,
        help="keep an instance in a tile if at least this fraction of it is visible there",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.overlap >= args.tile:
        parser.error(f"--overlap {args.overlap} must be smaller than --tile {args.tile}")
    summary = tile_coco_dataset(
        args.images,
        args.annotations,
        args.out,
        tile=args.tile,
        overlap=args.overlap,
        min_visible_fraction=args.min_visible_fraction,
        show_progress=not args.no_progress,
    )
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
