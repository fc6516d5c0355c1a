"""
Load COCO instance masks, ground truth or predictions, into per-image particle tables.

Two inputs are accepted:

* a COCO ground-truth file: a dict with "images" (id, height, width, file_name) and
  "annotations" (image_id, segmentation, optional id; crowd regions are skipped);
* a COCO results list, as Detectron2's COCOEvaluator writes it: entries with image_id,
  segmentation and score. Each image's size comes from its RLE "size"; an entry's position in
  the list serves as its annotation id.

Segmentations may be polygons or RLE (compressed or not); the file is checked by
:mod:`segtools.data.coco_input`, whose CocoFormatError names what is wrong: ids must be integers
(the tables hold them as int64) and annotation ids unique, scores and polygon coordinates finite,
images at least 1 x 1 pixel. An annotation without a pixel in its image (empty, too thin, wholly
outside) is not measured but skipped with its reason (:class:`segtools.data.coco_format.Placement`).
"""

import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from tqdm import tqdm

from ..data.coco_format import Placement, place_segmentation
from ..data.coco_input import (
    CocoFormatError,
    check_distinct_names,
    check_ground_truth,
    check_results,
    read_coco_json,
)
from .size_measures import ParticleTable, check_mm_per_px, measure_instances

__all__ = [
    "CocoImageInstances",
    "iter_particle_tables",
    "load_coco_instances",
    "resolve_image_paths",
]


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


def _image_instances(
    image_id, file_name: str | None, frame_size: tuple[int, int], instances: list[tuple]
) -> CocoImageInstances:
    """`instances`: per instance (annotation id, segmentation, score)."""
    annotation_ids, segmentations, scores = (
        zip(*instances, strict=True) if instances else ((), (), ())
    )
    return CocoImageInstances(
        image_id, file_name, *frame_size, annotation_ids, segmentations, scores
    )


def _from_ground_truth(data: dict, path: str) -> list[CocoImageInstances]:
    check_ground_truth(data, path, integer_ids=True)
    check_distinct_names(
        data["images"],
        lambda image: _folder_name(image.get("file_name"), image["id"]),
        path,
        "report folder",
    )
    per_image = {image["id"]: [] for image in data["images"]}
    for index, annotation in enumerate(data["annotations"]):
        if not annotation.get("iscrowd", 0):
            per_image[annotation["image_id"]].append(
                (annotation.get("id", index), annotation["segmentation"], math.nan)
            )
    return [
        _image_instances(
            image["id"],
            image.get("file_name"),
            (image["height"], image["width"]),
            per_image[image["id"]],
        )
        for image in data["images"]
    ]


def _estimated_whole(entry: dict, index: int, path: str, min_visibility: float | None) -> bool:
    """Whether a result is kept by `min_visibility` (None keeps every one)."""
    if min_visibility is None:
        return True
    visibility = entry.get("visibility")
    if not isinstance(visibility, (int, float)) or isinstance(visibility, bool):
        raise CocoFormatError(
            f"{path}: [{index}]['visibility'] = {visibility!r}: a minimum visibility needs "
            "each prediction's estimated visible fraction (a LosNet trained with "
            "MODEL.LOSNET.VISIBILITY.ENABLED True writes it)"
        )
    return visibility >= min_visibility


def _from_results(
    data: list, path: str, score_thresh: float, min_visibility: float | None
) -> list[CocoImageInstances]:
    frame_sizes = check_results(data, path, integer_ids=True)
    per_image = {}
    for index, entry in enumerate(data):
        instances = per_image.setdefault(entry["image_id"], [])
        if entry["score"] >= score_thresh and _estimated_whole(entry, index, path, min_visibility):
            instances.append((index, entry["segmentation"], float(entry["score"])))
    unsized = [image_id for image_id in per_image if image_id not in frame_sizes]
    if unsized:
        raise CocoFormatError(
            f"{path}: no entry of image_id {unsized[0]!r} is an RLE, whose 'size' gives the "
            "image size (polygons do not)"
        )
    return [
        _image_instances(image_id, None, frame_sizes[image_id], instances)
        for image_id, instances in per_image.items()
    ]


def load_coco_instances(
    json_path: str, score_thresh: float = 0.0, min_visibility: float | None = None
) -> list[CocoImageInstances]:
    """
    Read a COCO ground-truth file or results list (see the module docstring).

    Args:
        json_path: the JSON file.
        score_thresh: predictions scoring below it are dropped (ground truth has no scores).
            An image whose predictions are all dropped is kept, with no instances.
        min_visibility: predictions whose estimated visible fraction ("visibility") is below
            it are dropped too, so that sizes come from particles seen nearly whole; a result
            without one is refused.

    Returns:
        One entry per image, in file order.

    Raises:
        FileNotFoundError: if `json_path` does not exist.
        CocoFormatError: if it is not valid JSON or not one of the two layouts.
    """
    data = read_coco_json(json_path)
    if isinstance(data, list):
        return _from_results(data, json_path, score_thresh, min_visibility)
    return _from_ground_truth(data, json_path)


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


def iter_particle_tables(
    images: Sequence[CocoImageInstances], mm_per_px: float, show_progress: bool = True
) -> Iterator[tuple[CocoImageInstances, ParticleTable, list[tuple[int, Placement]]]]:
    """
    Measure the particles of each image in turn, with a progress bar over images.

    Yields:
        (image, its table, its skipped annotations as (annotation id, placement)): those
        without a pixel in the image, in file order.
    """
    mm_per_px = check_mm_per_px(mm_per_px)
    for image in tqdm(images, desc="images", unit="image", disable=not show_progress):
        measured, skipped = [], []
        instances = zip(image.annotation_ids, image.segmentations, image.scores, strict=True)
        for annotation_id, segmentation, score in instances:
            placement, box_mask = place_segmentation(segmentation, image.height, image.width)
            if box_mask.mask.size:
                measured.append((annotation_id, box_mask, score))
            else:
                skipped.append((annotation_id, placement))
        annotation_ids, box_masks, scores = zip(*measured, strict=True) if measured else ((),) * 3
        table = measure_instances(
            box_masks,
            (image.height, image.width),
            mm_per_px,
            image_id=image.image_id,
            annotation_ids=annotation_ids,
            scores=scores,
        )
        yield image, table, skipped
