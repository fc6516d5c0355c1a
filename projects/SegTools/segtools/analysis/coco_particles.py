"""
Load COCO instance masks, ground truth or predictions, into per-image particle tables.

Two inputs are accepted:

* a COCO ground-truth file: a dict with "images" (id, height, width, file_name) and
  "annotations" (image_id, segmentation, optional id; crowd regions are skipped);
* a COCO results list, as Detectron2's COCOEvaluator writes it: entries with image_id,
  segmentation and score. Each image's size comes from its RLE "size"; an entry's position in
  the list serves as its annotation id.

Segmentations may be polygons or RLE (compressed or not).
"""

import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from .size_measures import ParticleTable, check_mm_per_px, measure_instances

__all__ = [
    "CocoImageInstances",
    "CocoInputError",
    "iter_particle_tables",
    "load_coco_instances",
    "load_image",
    "resolve_image_paths",
]


class CocoInputError(ValueError):
    """A COCO file that cannot be read as instance masks; the message names the file and entry."""


@dataclass(frozen=True)
class CocoImageInstances:
    """
    The instances of one image.

    Attributes:
        image_id: COCO image id.
        file_name: the image's file name relative to the image folder (None for predictions).
        height, width: image size in pixels.
        annotation_ids, segmentations, scores: per instance (scores NaN for ground truth).
    """

    image_id: int
    file_name: str | None
    height: int
    width: int
    annotation_ids: tuple[int, ...]
    segmentations: tuple
    scores: tuple[float, ...]

    @property
    def name(self) -> str:
        """A folder name for this image: its file name without extension, or image_<id>."""
        return _folder_name(self.file_name, self.image_id)


def _folder_name(file_name: str | None, image_id: int) -> str:
    if file_name is None:
        return f"image_{image_id}"
    return re.sub(r"[^\w.-]", "_", os.path.splitext(file_name)[0])


def _check_segmentation(segmentation, where: str) -> None:
    is_rle = isinstance(segmentation, dict) and {"counts", "size"} <= segmentation.keys()
    is_polygons = isinstance(segmentation, list) and all(
        isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segmentation
    )
    if not (is_rle or is_polygons):
        raise CocoInputError(
            f"{where}: 'segmentation' is neither an RLE dict with 'counts' and 'size' nor a list "
            "of polygons [x0, y0, x1, y1, ...] with at least 3 points"
        )


def _require(entry, keys: Sequence[str], where: str) -> None:
    if not isinstance(entry, dict):
        raise CocoInputError(f"{where} is not a JSON object")
    missing = [key for key in keys if key not in entry]
    if missing:
        raise CocoInputError(f"{where} has no {', '.join(repr(k) for k in missing)}")


def _from_ground_truth(data: dict, path: str) -> list[CocoImageInstances]:
    if not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise CocoInputError(f"{path}: a ground-truth file needs lists 'images' and 'annotations'")
    images = {}
    for index, image in enumerate(data["images"]):
        _require(image, ("id", "height", "width"), f"{path}: images[{index}]")
        images[image["id"]] = image
    per_image = {image_id: [] for image_id in images}
    for index, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{index}]"
        _require(ann, ("image_id", "segmentation"), where)
        if ann["image_id"] not in images:
            raise CocoInputError(f"{where} refers to image_id {ann['image_id']} not in 'images'")
        if ann.get("iscrowd", 0):
            continue
        _check_segmentation(ann["segmentation"], where)
        size = ann["segmentation"].get("size") if isinstance(ann["segmentation"], dict) else None
        image = images[ann["image_id"]]
        if size is not None and list(size) != [image["height"], image["width"]]:
            raise CocoInputError(
                f"{where}: RLE size {size} differs from image {image['id']}'s "
                f"[height, width] = {[image['height'], image['width']]}"
            )
        per_image[ann["image_id"]].append((ann.get("id", index), ann["segmentation"]))
    names = Counter(_folder_name(image.get("file_name"), i) for i, image in images.items())
    duplicates = sorted(name for name, count in names.items() if count > 1)
    if duplicates:
        raise CocoInputError(f"{path}: several images would be reported as {duplicates}")
    result = []
    for image_id, image in images.items():
        instances = per_image[image_id]
        result.append(
            CocoImageInstances(
                image_id=image_id,
                file_name=image.get("file_name"),
                height=int(image["height"]),
                width=int(image["width"]),
                annotation_ids=tuple(ann_id for ann_id, _ in instances),
                segmentations=tuple(seg for _, seg in instances),
                scores=(math.nan,) * len(instances),
            )
        )
    return result


def _from_results(data: list, path: str, score_thresh: float) -> list[CocoImageInstances]:
    per_image, sizes = {}, {}
    for index, entry in enumerate(data):
        where = f"{path}: entry [{index}]"
        _require(entry, ("image_id", "segmentation", "score"), where)
        _check_segmentation(entry["segmentation"], where)
        if not isinstance(entry["score"], (int, float)):
            raise CocoInputError(f"{where}: 'score' is not a number: {entry['score']!r}")
        image_id = entry["image_id"]
        per_image.setdefault(image_id, [])
        if isinstance(entry["segmentation"], dict):
            size = tuple(entry["segmentation"]["size"])
            if sizes.setdefault(image_id, size) != size:
                raise CocoInputError(
                    f"{where}: RLE size {list(size)} differs from {list(sizes[image_id])} given "
                    f"by another prediction for image_id {image_id}"
                )
        if entry["score"] >= score_thresh:
            per_image[image_id].append((index, entry["segmentation"], float(entry["score"])))
    result = []
    for image_id, instances in per_image.items():
        if image_id not in sizes:
            raise CocoInputError(
                f"{path}: no prediction for image_id {image_id} is an RLE with 'size', so its "
                "image size is unknown (polygons do not carry it)"
            )
        height, width = sizes[image_id]
        result.append(
            CocoImageInstances(
                image_id=image_id,
                file_name=None,
                height=int(height),
                width=int(width),
                annotation_ids=tuple(index for index, _, _ in instances),
                segmentations=tuple(seg for _, seg, _ in instances),
                scores=tuple(score for _, _, score in instances),
            )
        )
    return result


def load_coco_instances(json_path: str, score_thresh: float = 0.0) -> list[CocoImageInstances]:
    """
    Read a COCO ground-truth file or results list (see the module docstring).

    Args:
        json_path: the JSON file.
        score_thresh: predictions scoring below it are dropped (ground truth has no scores).
            An image whose predictions are all dropped is kept, with no instances.

    Returns:
        One entry per image, in file order.

    Raises:
        FileNotFoundError: if `json_path` does not exist.
        CocoInputError: if it is not valid JSON or not one of the two layouts.
    """
    if not os.path.isfile(json_path):
        raise FileNotFoundError(f"COCO JSON file not found: {json_path}")
    with open(json_path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise CocoInputError(f"{json_path} is not valid JSON: {e}") from e
    if isinstance(data, dict):
        return _from_ground_truth(data, json_path)
    if isinstance(data, list):
        return _from_results(data, json_path, score_thresh)
    raise CocoInputError(
        f"{json_path}: expected a ground-truth dict or a results list, got {type(data).__name__}"
    )


def resolve_image_paths(image_dir: str, images: Sequence[CocoImageInstances]) -> dict[int, str]:
    """
    Find each image's file: `image_dir`/file_name for ground truth; for predictions (no file
    name), the file in `image_dir` whose name without extension is the image id as an integer
    (e.g. "17.png" or "000017.jpg" for image id 17).

    Returns:
        {image_id: path}.

    Raises:
        FileNotFoundError: naming the folder and the images not found there.
    """
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"Image folder not found: {image_dir}")
    by_number = {}
    if any(image.file_name is None for image in images):
        for file_name in sorted(os.listdir(image_dir)):
            stem = os.path.splitext(file_name)[0]
            if stem.isdigit():
                by_number.setdefault(int(stem), os.path.join(image_dir, file_name))
    paths, missing = {}, []
    for image in images:
        if image.file_name is None:
            path = by_number.get(image.image_id)
        else:
            path = os.path.join(image_dir, image.file_name)
        if path is None or not os.path.isfile(path):
            missing.append(image.file_name or f"<image id {image.image_id}>.*")
        else:
            paths[image.image_id] = path
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise FileNotFoundError(f"Images not found in {image_dir}: {shown}")
    return paths


def load_image(
    path: str, image: CocoImageInstances, json_path: str = "the COCO file"
) -> np.ndarray:
    """
    Read the photo of `image` as (H, W, 3) BGR uint8.

    Raises:
        OSError: if `path` cannot be read as an image.
        CocoInputError: if its size differs from the one `json_path` gives.
    """
    photo = cv2.imread(path, cv2.IMREAD_COLOR)
    if photo is None:
        raise OSError(f"Cannot read image {path}")
    if photo.shape[:2] != (image.height, image.width):
        raise CocoInputError(
            f"Image {path} is {photo.shape[1]}x{photo.shape[0]} px but {json_path} gives "
            f"{image.width}x{image.height} for image_id {image.image_id}"
        )
    return photo


def iter_particle_tables(
    images: Sequence[CocoImageInstances], mm_per_px: float, show_progress: bool = True
) -> Iterator[tuple[CocoImageInstances, ParticleTable]]:
    """Measure the particles of each image in turn, with a progress bar over images."""
    mm_per_px = check_mm_per_px(mm_per_px)
    for image in tqdm(images, desc="images", unit="image", disable=not show_progress):
        table = measure_instances(
            image.segmentations,
            (image.height, image.width),
            mm_per_px,
            image_id=image.image_id,
            annotation_ids=image.annotation_ids,
            scores=image.scores,
        )
        yield image, table
