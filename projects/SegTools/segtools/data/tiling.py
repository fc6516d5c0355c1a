"""
Cut large photos with COCO instance annotations into overlapping training tiles.

A square window of ``tile`` pixels slides over each photo with stride ``tile - overlap``; the last
window of a row or column is shifted back to end at the border, so tiles are never padded. Every
source instance is cropped into the tiles it shows in, subject to a minimum visible fraction
(LosNet, section 4.1.2: "we split images with a sliding window").
"""

import enum
import json
import os
from dataclasses import dataclass, field, fields

import cv2
import numpy as np
import pycocotools.mask as mask_util
import shapely
from tqdm import tqdm

from ..atomic_io import atomic_directory, atomic_write_image, atomic_write_json
from .coco_format import annotation_from_mask

__all__ = ["TilingSummary", "tile_windows", "tile_coco_dataset"]

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
    if tile < 1:
        raise ValueError(f"tile must be >= 1 pixel, got tile={tile}")
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


class _Geometry(enum.Enum):
    INSIDE = enum.auto()
    CLIPPED = enum.auto()
    DEGENERATE = enum.auto()
    OUTSIDE = enum.auto()


@dataclass(frozen=True)
class _Instance:
    """A source instance, its mask kept over its own tight bounding box only."""

    annotation: dict
    box: tuple  # (x0, y0, x1, y1) in image pixels, end-exclusive
    mask: np.ndarray  # (y1 - y0, x1 - x0) bool
    area: int  # pixels inside the image


def _polygon_rle(polygons: list, height: int, width: int, where: str) -> tuple[dict | None, bool]:
    """
    The RLE of the union of the non-degenerate polygons, rasterised and clipped to the image by
    pycocotools as Detectron2 does, and whether any point lies outside the image. The RLE is None
    if every polygon is degenerate (fewer than 3 points or zero area).
    """
    kept = []
    for polygon in polygons:
        points = np.asarray(polygon, dtype=np.float64)
        if points.ndim != 1 or points.size % 2:
            raise ValueError(f"{where}: a polygon must be a flat list of x, y pairs")
        points = points.reshape(-1, 2)
        # make_valid keeps the area of self-intersecting rings, whose plain shoelace area may be 0.
        if len(points) >= 3 and shapely.make_valid(shapely.Polygon(points)).area > 0:
            kept.append(points)
    if not kept:
        return None, False
    all_points = np.concatenate(kept)
    outside = bool(all_points.min() < 0 or (all_points.max(axis=0) > (width, height)).any())
    rle = mask_util.merge(mask_util.frPyObjects([p.ravel().tolist() for p in kept], height, width))
    return rle, outside


def _checked_rle(rle: dict, height: int, width: int, where: str) -> dict:
    """A compressed RLE from an uncompressed or compressed one, checked against the image size."""
    if list(rle.get("size", [])) != [height, width]:
        raise ValueError(
            f"{where}: RLE size {rle.get('size')} differs from the image's {[height, width]}"
        )
    counts = rle.get("counts")
    if isinstance(counts, list):
        if sum(counts) != height * width or min(counts, default=-1) < 0:
            raise ValueError(f"{where}: RLE runs do not cover the {height}x{width} image exactly")
        return mask_util.frPyObjects(rle, height, width)
    if isinstance(counts, (str, bytes)):
        return {
            "size": [height, width],
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
        }
    raise ValueError(f"{where}: RLE 'counts' must be a list or a string")


def _rasterise(
    annotation: dict, height: int, width: int, where: str
) -> tuple[_Geometry, _Instance | None]:
    """Rasterise one annotation, keeping its tight box only; say how it fits the image."""
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        rle, outside = _polygon_rle(segmentation, height, width, where)
        if rle is None:
            return _Geometry.DEGENERATE, None
    elif isinstance(segmentation, dict):
        rle, outside = _checked_rle(segmentation, height, width, where), False
    else:
        raise ValueError(f"{where}: 'segmentation' must be a polygon list or an RLE dict")
    if mask_util.area(rle) == 0:
        # Nothing inside the image: either it all lies outside, or it is too thin to cover a pixel.
        return (_Geometry.OUTSIDE if outside else _Geometry.DEGENERATE), None
    x0, y0, box_width, box_height = (int(v) for v in mask_util.toBbox(rle))
    box = (x0, y0, x0 + box_width, y0 + box_height)
    mask = mask_util.decode(rle)[box[1] : box[3], box[0] : box[2]].astype(bool)
    instance = _Instance(annotation, box, mask, int(np.count_nonzero(mask)))
    return (_Geometry.CLIPPED if outside else _Geometry.INSIDE), instance


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


def _required(entry: dict, key: str, what: str, path: str):
    if key not in entry:
        raise ValueError(f"{path}: {what} has no '{key}'")
    return entry[key]


def _load_coco(path: str) -> dict:
    """Read a COCO instance json and check the keys tiling relies on."""
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(coco, dict):
        raise ValueError(f"{path}: expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise ValueError(f"{path}: missing the '{key}' list")
    category_ids = {_required(c, "id", "a category", path) for c in coco["categories"]}
    image_ids = set()
    for image in coco["images"]:
        image_id = _required(image, "id", "an image", path)
        _required(image, "file_name", f"image id {image_id}", path)
        if image_id in image_ids:
            raise ValueError(f"{path}: image id {image_id} appears twice")
        image_ids.add(image_id)
    for annotation in coco["annotations"]:
        what = f"annotation id {_required(annotation, 'id', 'an annotation', path)}"
        for key in ("image_id", "category_id", "segmentation"):
            _required(annotation, key, what, path)
        if annotation["image_id"] not in image_ids:
            raise ValueError(f"{path}: {what} refers to unknown image_id {annotation['image_id']}")
        if annotation["category_id"] not in category_ids:
            raise ValueError(
                f"{path}: {what} refers to unknown category_id {annotation['category_id']}"
            )
    return coco


def _read_image(path: str, image_entry: dict) -> np.ndarray:
    """(H, W, 3) BGR uint8; IMREAD_COLOR applies EXIF orientation, as Detectron2's reader does."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode image {path} (corrupt or not an image)")
    expected = (image_entry.get("height", image.shape[0]), image_entry.get("width", image.shape[1]))
    if image.shape[:2] != expected:
        raise ValueError(
            f"image {path} is {image.shape[1]}x{image.shape[0]} pixels but the annotation file "
            f"says {expected[1]}x{expected[0]}"
        )
    return image


def _check_output_dir(out_dir: str) -> None:
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise FileExistsError(f"output folder {out_dir} already exists and is not empty")


def _check_image_files(image_dir: str, images: list[dict], annotations_json: str) -> None:
    """Fail before any work if an image is missing or two images would give the same tile names."""
    stems = {}
    for image in images:
        path = os.path.join(image_dir, image["file_name"])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image {path} (listed in {annotations_json}) not found")
        stem = os.path.splitext(os.path.basename(image["file_name"]))[0]
        if stem in stems:
            raise ValueError(
                f"{annotations_json}: images {stems[stem]} and {image['file_name']} would give "
                f"tiles with the same names ('{stem}_x..._y....png')"
            )
        stems[stem] = image["file_name"]


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
    without instances are kept. Geometry outside the image is clipped; annotations that are
    degenerate or entirely outside are dropped; both are counted.

    Args:
        image_dir: folder holding the images under their "file_name".
        annotations_json: COCO json; segmentations as polygons, uncompressed or compressed RLE.
        out_dir: receives images/<stem>_x<x0>_y<y0>.png and annotations.json (tile masks as
            compressed RLE with "source_id", "visible_fraction" and the source's extra keys;
            images with "source_image_id", "source_file" and "tile_box" [x0, y0, x1, y1]).
            It must not exist or be empty, and appears only once complete.
        tile, overlap: window side and overlap of neighbouring windows, in pixels.
        min_visible_fraction: in [0, 1].
        show_progress: show a progress bar over the images.

    Returns:
        The counts of the run. Tile annotations keep their source's "iscrowd" (0 if absent).
    """
    _check_tiling_parameters(tile, overlap)
    if not 0 <= min_visible_fraction <= 1:
        raise ValueError(f"min_visible_fraction must be in [0, 1], got {min_visible_fraction}")
    _check_output_dir(out_dir)
    coco = _load_coco(annotations_json)
    _check_image_files(image_dir, coco["images"], annotations_json)

    annotations_by_image = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        annotations_by_image[annotation["image_id"]].append(annotation)

    summary = TilingSummary()
    tile_images, tile_annotations = [], []
    with atomic_directory(out_dir) as staging_dir:
        tiles_dir = os.path.join(staging_dir, "images")
        os.makedirs(tiles_dir)
        for image_entry in tqdm(
            coco["images"], desc="tiling", unit="image", disable=not show_progress
        ):
            image = _read_image(os.path.join(image_dir, image_entry["file_name"]), image_entry)
            height, width = image.shape[:2]
            instances = []
            for annotation in annotations_by_image[image_entry["id"]]:
                where = f"{annotations_json}: annotation id {annotation['id']}"
                geometry, instance = _rasterise(annotation, height, width, where)
                summary.degenerate_dropped += geometry is _Geometry.DEGENERATE
                summary.outside_dropped += geometry is _Geometry.OUTSIDE
                summary.clipped_at_border += geometry is _Geometry.CLIPPED
                if instance is not None:
                    instances.append(instance)
            summary.source_instances += len(instances)

            windows = tile_windows(width, height, tile, overlap)
            per_window = _tile_annotations(instances, windows, min_visible_fraction, summary)
            stem = os.path.splitext(os.path.basename(image_entry["file_name"]))[0]
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
