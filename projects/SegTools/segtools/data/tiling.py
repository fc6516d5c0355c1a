"""
Cut large photos with COCO instance annotations into overlapping training tiles.

A square window of ``tile`` pixels slides over each photo with stride ``tile - overlap``; the last
window of a row or column is shifted back to end at the border, so tiles are never padded. Every
source instance is cropped into the tiles it shows in, subject to a minimum visible fraction
(LosNet, section 4.1.2: "we split images with a sliding window").

Tiles are at least ``MIN_TILE`` (32) pixels wide: a smaller window holds too little of a
particle to learn from, and the tiles multiply (a 4000 x 3000 photo cut into 1-pixel tiles gives
12 million files).
"""

import os
from dataclasses import dataclass, field, fields

import numpy as np
from tqdm import tqdm

from ..atomic_io import (
    atomic_directory,
    atomic_write_image,
    atomic_write_json,
    check_new_or_empty_folder,
)
from .coco_format import Placement, annotation_from_mask, place_segmentation
from .coco_input import check_distinct_names, check_ground_truth, read_coco_json, read_image

__all__ = ["MIN_TILE", "TilingSummary", "tile_windows", "tile_coco_dataset"]

MIN_TILE = 32  # pixels

# Keys that every tile annotation sets itself; any other key of a source annotation is copied.
_KEYS_SET_PER_TILE = frozenset(
    {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"}
)


@dataclass
class TilingSummary:
    """
    Counts of one tiling run. A placement is one source instance in one tile; a source instance
    is an annotation with at least one pixel inside its image.
    """

    source_images: int = field(default=0, metadata={"label": "source images"})
    tiles_written: int = field(default=0, metadata={"label": "tiles written"})
    source_instances: int = field(default=0, metadata={"label": "source instances"})
    placements_kept: int = field(default=0, metadata={"label": "placements kept"})
    placements_dropped_below_fraction: int = field(
        default=0, metadata={"label": "placements dropped (below visible fraction)"}
    )
    placements_kept_only_as_best: int = field(
        default=0, metadata={"label": "placements kept only as best window"}
    )
    empty_dropped: int = field(default=0, metadata={"label": "empty annotations dropped"})
    degenerate_dropped: int = field(default=0, metadata={"label": "degenerate annotations dropped"})
    clipped_at_border: int = field(
        default=0, metadata={"label": "annotations clipped at the image border"}
    )
    outside_dropped: int = field(
        default=0, metadata={"label": "annotations entirely outside (dropped)"}
    )

    def format(self) -> str:
        """A two-column table, one count per line."""
        rows = [(f.metadata["label"], getattr(self, f.name)) for f in fields(self)]
        label_width = max(len(label) for label, _ in rows)
        value_width = max(len(str(value)) for _, value in rows)
        return "\n".join(f"{label:<{label_width}}  {value:>{value_width}}" for label, value in rows)


def _check_tiling_parameters(tile: int, overlap: int) -> None:
    if tile < MIN_TILE:
        raise ValueError(f"tile must be >= {MIN_TILE} pixels, got tile={tile}")
    if not 0 <= overlap < tile:
        raise ValueError(
            f"overlap must satisfy 0 <= overlap < tile, got overlap={overlap}, tile={tile}"
        )


def _axis_spans(length: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) spans along one image axis of `length` pixels."""
    if length <= tile:
        return [(0, length)]
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return [(start, start + tile) for start in starts]


def tile_windows(
    width: int, height: int, tile: int, overlap: int
) -> list[tuple[int, int, int, int]]:
    """
    Sliding windows over a `width` x `height` image, in row-major order.

    Windows start at 0, stride, 2 * stride, ... (stride = tile - overlap) along each axis; the last
    one is shifted to end exactly at the border, so it overlaps its neighbour by at least `overlap`.
    An axis no longer than `tile` gets a single window spanning it.

    Returns:
        list of (x0, y0, x1, y1) pixel boxes, end-exclusive.
    """
    _check_tiling_parameters(tile, overlap)
    if width < 1 or height < 1:
        raise ValueError(f"image size must be at least 1x1, got width={width}, height={height}")
    stride = tile - overlap
    columns = _axis_spans(width, tile, stride)
    rows = _axis_spans(height, tile, stride)
    return [(x0, y0, x1, y1) for y0, y1 in rows for x0, x1 in columns]


@dataclass(frozen=True)
class _Instance:
    """A source instance, its mask kept over its own tight bounding box only."""

    annotation: dict
    box: tuple  # (x0, y0, x1, y1) in image pixels, end-exclusive
    mask: np.ndarray  # (y1 - y0, x1 - x0) bool
    area: int  # pixels inside the image


def _instance(
    annotation: dict, height: int, width: int, summary: TilingSummary
) -> _Instance | None:
    """The instance of a checked annotation, None if it has no pixel; counted in `summary`."""
    placement, (mask, (x0, y0)) = place_segmentation(annotation["segmentation"], height, width)
    summary.empty_dropped += placement is Placement.EMPTY
    summary.degenerate_dropped += placement is Placement.TOO_THIN
    summary.outside_dropped += placement is Placement.OUTSIDE
    summary.clipped_at_border += placement is Placement.CLIPPED
    if mask.size == 0:
        return None
    box = (x0, y0, x0 + mask.shape[1], y0 + mask.shape[0])
    return _Instance(annotation, box, mask, int(np.count_nonzero(mask)))


def _visible_crops(instance: _Instance, windows: list[tuple]) -> list[tuple]:
    """
    The parts of `instance` inside each window it has pixels in, in row-major window order.

    Returns:
        list of (window index, (x, y) offset of the crop in the window, (h, w) bool crop,
        visible pixel count).
    """
    x0, y0, x1, y1 = instance.box
    crops = []
    for index, (wx0, wy0, wx1, wy1) in enumerate(windows):
        cx0, cy0, cx1, cy1 = max(wx0, x0), max(wy0, y0), min(wx1, x1), min(wy1, y1)
        if cx0 >= cx1 or cy0 >= cy1:
            continue
        crop = instance.mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        pixels = int(np.count_nonzero(crop))
        if pixels:
            crops.append((index, (cx0 - wx0, cy0 - wy0), crop, pixels))
    return crops


def _tile_annotations(
    instances: list[_Instance],
    windows: list[tuple],
    min_visible_fraction: float,
    summary: TilingSummary,
) -> list[list[dict]]:
    """
    For each window, the annotations (without "id" and "image_id") of the instances kept in it:
    visible fraction >= `min_visible_fraction`, or the instance's best window (most visible
    pixels, first in row-major order on ties).
    """
    per_window = [[] for _ in windows]
    for instance in instances:
        crops = _visible_crops(instance, windows)
        best = crops[int(np.argmax([pixels for *_, pixels in crops]))][0]
        source = instance.annotation
        copied = {k: v for k, v in source.items() if k not in _KEYS_SET_PER_TILE}
        for index, (ox, oy), crop, pixels in crops:
            fraction = pixels / instance.area
            if fraction < min_visible_fraction and index != best:
                summary.placements_dropped_below_fraction += 1
                continue
            summary.placements_kept += 1
            summary.placements_kept_only_as_best += int(fraction < min_visible_fraction)
            wx0, wy0, wx1, wy1 = windows[index]
            tile_mask = np.zeros((wy1 - wy0, wx1 - wx0), dtype=bool)
            tile_mask[oy : oy + crop.shape[0], ox : ox + crop.shape[1]] = crop
            keys = {
                **copied,
                "iscrowd": source.get("iscrowd", 0),
                "source_id": source["id"],
                "visible_fraction": fraction,
            }
            per_window[index].append(annotation_from_mask(tile_mask, source["category_id"], **keys))
    return per_window


def _check_image_files(image_dir: str, images: list[dict], annotations_json: str) -> None:
    """Fail before any work if an image is missing or two images would give the same tile names."""
    for image in images:
        path = os.path.join(image_dir, image["file_name"])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image {path} (listed in {annotations_json}) not found")
    check_distinct_names(images, _file_stem, annotations_json, "tile name prefix")


def _file_stem(image: dict) -> str:
    return os.path.splitext(os.path.basename(image["file_name"]))[0]


def tile_coco_dataset(
    image_dir: str,
    annotations_json: str,
    out_dir: str,
    tile: int = 640,
    overlap: int = 128,
    min_visible_fraction: float = 0.5,
    show_progress: bool = True,
) -> TilingSummary:
    """
    Cut every image of a COCO instance dataset into `tile` x `tile` windows (see
    :func:`tile_windows`) and crop the instance masks into them.

    An instance is kept in a tile if at least `min_visible_fraction` of its in-image pixels are
    visible there, and always in its best window, so each instance is in at least one tile. Tiles
    without instances are kept. Polygons reaching outside the image are clipped to it (however far
    out a vertex lies); annotations that are empty, too thin to cover a pixel or wholly outside are
    dropped; all are counted (see :func:`place_segmentation`).

    Args:
        image_dir: folder holding the images under their "file_name".
        annotations_json: COCO json (checked by :func:`check_ground_truth` as a training set);
            segmentations as polygons, uncompressed or compressed RLE.
        out_dir: receives images/<stem>_x<x0>_y<y0>.png and annotations.json (tile masks as
            compressed RLE with "source_id", "visible_fraction" and the source's extra keys;
            images with "source_image_id", "source_file" and "tile_box" [x0, y0, x1, y1]).
            It must not exist or be empty, and appears only once complete.
        tile, overlap: window side (>= MIN_TILE) and overlap of neighbouring windows, in pixels.
        min_visible_fraction: in [0, 1].
        show_progress: show a progress bar over the images.

    Returns:
        The counts of the run. Tile annotations keep their source's "iscrowd" (0 if absent).

    Raises:
        FileExistsError: if `out_dir` is a file or a folder that is not empty.
        FileNotFoundError: if `annotations_json` or an image is missing.
        CocoFormatError: if `annotations_json` is not such a file, or an image's size is not the
            one it gives.
        ImageReadError: if an image cannot be read whole.
        ValueError: if `tile`, `overlap` or `min_visible_fraction` is out of range.
    """
    _check_tiling_parameters(tile, overlap)
    if not 0 <= min_visible_fraction <= 1:
        raise ValueError(f"min_visible_fraction must be in [0, 1], got {min_visible_fraction}")
    check_new_or_empty_folder(out_dir)
    coco = read_coco_json(annotations_json)
    # Degenerate polygons are counted and dropped, not refused.
    check_ground_truth(coco, annotations_json, training_set=True, min_polygon_points=0)
    _check_image_files(image_dir, coco["images"], annotations_json)

    annotations_by_image = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        annotations_by_image[annotation["image_id"]].append(annotation)

    summary = TilingSummary()
    tile_images, tile_annotations = [], []
    with atomic_directory(out_dir) as staging_dir:
        tiles_dir = os.path.join(staging_dir, "images")
        os.makedirs(tiles_dir)
        for image_index, image_entry in enumerate(
            tqdm(coco["images"], desc="tiling", unit="image", disable=not show_progress)
        ):
            height, width = image_entry["height"], image_entry["width"]
            image = read_image(
                os.path.join(image_dir, image_entry["file_name"]),
                (height, width),
                annotations_json,
                f"images[{image_index}]",
            )
            instances = [
                instance
                for annotation in annotations_by_image[image_entry["id"]]
                if (instance := _instance(annotation, height, width, summary)) is not None
            ]
            summary.source_instances += len(instances)

            windows = tile_windows(width, height, tile, overlap)
            per_window = _tile_annotations(instances, windows, min_visible_fraction, summary)
            stem = _file_stem(image_entry)
            for (x0, y0, x1, y1), annotations in zip(windows, per_window, strict=True):
                tile_id = len(tile_images) + 1
                file_name = f"{stem}_x{x0}_y{y0}.png"
                atomic_write_image(os.path.join(tiles_dir, file_name), image[y0:y1, x0:x1])
                tile_images.append(
                    {
                        "id": tile_id,
                        "file_name": file_name,
                        "width": x1 - x0,
                        "height": y1 - y0,
                        "source_image_id": image_entry["id"],
                        "source_file": image_entry["file_name"],
                        "tile_box": [x0, y0, x1, y1],
                    }
                )
                for annotation in annotations:
                    tile_annotations.append(
                        {"id": len(tile_annotations) + 1, "image_id": tile_id, **annotation}
                    )
        atomic_write_json(
            os.path.join(staging_dir, "annotations.json"),
            {
                "images": tile_images,
                "annotations": tile_annotations,
                "categories": coco["categories"],
            },
        )
    summary.source_images = len(coco["images"])
    summary.tiles_written = len(tile_images)
    return summary
