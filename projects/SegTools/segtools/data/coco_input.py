"""
Checks of the COCO instance files that the tools of this package read (the tiler, the
particle-size reports): ground truth, a dict with "images" and "annotations", or a results list
as Detectron2's COCOEvaluator writes it. Every problem raises :class:`CocoFormatError`, whose
message names the file, the entry, the key and the bad value, e.g.::

    gt.json: annotations[12]['image_id'] = 7: expected the id of an entry of 'images'

Segmentations are checked down to their RLE runs, so that a decoder never reads past a frame,
and polygon coordinates must be finite (JSON parsers read NaN and Infinity); a finite vertex
outside the image is clipped when rasterised (see :mod:`.coco_format`).
"""

import json
import math
import os
import reprlib
from collections.abc import Callable, Sequence

import numpy as np

from . import images
from .coco_format import frame_runs

__all__ = [
    "CocoFormatError",
    "check_distinct_names",
    "check_ground_truth",
    "check_results",
    "check_segmentation",
    "read_coco_json",
    "read_image",
]


class CocoFormatError(ValueError):
    """A COCO file lacking what a tool needs; its message names the file, entry, key and value."""


_MISSING = object()  # stands for an absent key
# pycocotools counts an RLE's runs in 32 bits: a frame holds fewer pixels.
_MAX_FRAME_PIXELS = 2**32


def _error(path: str, location: str, value, problem: str) -> CocoFormatError:
    """`location`: where the value is, as Python would index the file's JSON value."""
    shown = "is missing" if value is _MISSING else f"= {reprlib.repr(value)}"
    return CocoFormatError(f"{path}: {location} {shown}: {problem}")


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_int64(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _id_kind(integer_ids: bool) -> tuple[Callable, str]:
    """(validator, description) of an id."""
    return (_is_int64, "an integer id") if integer_ids else (_is_id, "an id")


def _is_count(value) -> bool:
    """An integer >= 0 (JSON true and false are no numbers)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite_number(value) -> bool:
    return _is_number(value) and math.isfinite(value)


def _check_frame_pixels(size: Sequence[int], path: str, location: str, value) -> None:
    """Refuse a frame of `size` (height, width) too large for a COCO RLE; `value` is shown."""
    if size[0] * size[1] >= _MAX_FRAME_PIXELS:
        raise _error(path, location, value, "expected fewer than 2**32 pixels, a COCO RLE's most")


def _checked(entry, key: str, path: str, where: str, is_valid: Callable | None, expected: str):
    """entry[key], if `entry` is a dict holding `key` and `is_valid` (if any) accepts its value."""
    if not isinstance(entry, dict):
        raise _error(path, where, entry, "expected a JSON object")
    value = entry.get(key, _MISSING)
    if value is _MISSING or (is_valid is not None and not is_valid(value)):
        raise _error(path, f"{where}[{key!r}]" if where else repr(key), value, expected)
    return value


def read_coco_json(path: str):
    """
    Parse a COCO file.

    Returns:
        Its JSON value (checked by :func:`check_ground_truth` or :func:`check_results`).

    Raises:
        FileNotFoundError: if `path` does not exist.
        CocoFormatError: if it is not valid JSON.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CocoFormatError(f"{path} is not valid JSON: {e}") from None


def _polygon_error(polygon, min_points: int) -> str | None:
    if not (isinstance(polygon, list) and all(_is_number(v) for v in polygon)):
        return "expected a polygon, a list of numbers [x0, y0, x1, y1, ...]"
    if len(polygon) % 2:
        return "expected a polygon of x, y pairs, an even count of numbers"
    if len(polygon) < 2 * min_points:
        return f"expected a polygon of at least {min_points} points"
    return None


def check_segmentation(
    segmentation,
    frame_size: tuple[int, int] | None,
    path: str,
    location: str,
    min_polygon_points: int = 3,
) -> None:
    """
    Check a "segmentation": a list of polygons of finite coordinates or an RLE dict, its "size"
    the frame's [height, width] (both > 0) and its runs covering the frame exactly (compressed
    runs are decoded).

    Args:
        frame_size: (height, width) of the image; None to take an RLE's own "size".
        location: where `segmentation` is, e.g. "annotations[12]['segmentation']".
        min_polygon_points: fewest points of a polygon (the tiler takes fewer, and counts and
            drops such degenerate polygons).
    """
    if isinstance(segmentation, list):
        for index, polygon in enumerate(segmentation):
            problem = _polygon_error(polygon, min_polygon_points)
            if problem:
                raise _error(path, f"{location}[{index}]", polygon, problem)
            for coordinate, value in enumerate(polygon):
                if not math.isfinite(value):
                    where = f"{location}[{index}][{coordinate}]"
                    raise _error(path, where, value, "expected a finite coordinate")
        return
    if not (isinstance(segmentation, dict) and "counts" in segmentation):
        raise _error(path, location, segmentation, "expected a list of polygons or an RLE dict")
    size = _checked(
        segmentation,
        "size",
        path,
        location,
        lambda v: isinstance(v, list) and len(v) == 2 and all(_is_count(n) and n > 0 for n in v),
        "expected [height, width], integers > 0",
    )
    if frame_size is not None and size != list(frame_size):
        raise _error(path, f"{location}['size']", size, f"expected the image's {list(frame_size)}")
    _check_frame_pixels(size, path, f"{location}['size']", size)
    counts = segmentation["counts"]
    runs_valid = isinstance(counts, list) and all(
        _is_count(n) and n < _MAX_FRAME_PIXELS for n in counts
    )
    if not (isinstance(counts, str) or runs_valid):
        raise _error(
            path,
            f"{location}['counts']",
            counts,
            "expected a string or a list of integers in [0, 2**32)",
        )
    try:
        frame_runs(segmentation, *size)
    except ValueError as e:
        raise _error(path, f"{location}['counts']", counts, str(e)) from None


def _checked_images(images: list, path: str, need_file_names: bool, integer_ids: bool) -> dict:
    """{image id: (height, width)} of the "images" of a ground-truth file."""
    is_id, an_id = _id_kind(integer_ids)
    frame_sizes = {}
    for index, image in enumerate(images):
        where = f"images[{index}]"
        image_id = _checked(
            image,
            "id",
            path,
            where,
            lambda v: is_id(v) and v not in frame_sizes,
            f"expected {an_id} that no earlier image has",
        )
        frame_sizes[image_id] = tuple(
            _checked(
                image, key, path, where, lambda v: _is_count(v) and v > 0, "expected an integer > 0"
            )
            for key in ("height", "width")
        )
        _check_frame_pixels(frame_sizes[image_id], path, where, image)
        if need_file_names or "file_name" in image:
            _checked(
                image, "file_name", path, where, lambda v: isinstance(v, str), "expected a string"
            )
    return frame_sizes


def check_ground_truth(
    data,
    path: str,
    training_set: bool = False,
    min_polygon_points: int = 3,
    integer_ids: bool = False,
) -> None:
    """
    Check a COCO ground-truth dict: lists "images" (each with a unique id, height and width > 0,
    a str file_name if any) and "annotations" (each with the image_id of an image, a unique id if
    any, and a segmentation of its size, see :func:`check_segmentation`).

    Args:
        training_set: also require what a training set needs: a list "categories" (each with an
            id), each image's file_name, each annotation's id and the category_id of a category.
        min_polygon_points: as in :func:`check_segmentation`.
        integer_ids: require integer image and annotation ids (64-bit), not strings.
    """
    if not isinstance(data, dict):
        raise _error(path, "the file", data, "expected a dict with 'images' and 'annotations'")
    keys = ("images", "annotations", "categories") if training_set else ("images", "annotations")
    for key in keys:
        _checked(data, key, path, "", lambda v: isinstance(v, list), "expected a list")
    category_ids = {
        _checked(category, "id", path, f"categories[{index}]", _is_id, "expected an id")
        for index, category in enumerate(data.get("categories", []) if training_set else [])
    }
    frame_sizes = _checked_images(data["images"], path, training_set, integer_ids)
    is_id, an_id = _id_kind(integer_ids)
    annotation_ids = set()
    for index, annotation in enumerate(data["annotations"]):
        where = f"annotations[{index}]"
        image_id = _checked(
            annotation,
            "image_id",
            path,
            where,
            lambda v: _is_id(v) and v in frame_sizes,
            "expected the id of an entry of 'images'",
        )
        if training_set or "id" in annotation:
            annotation_ids.add(
                _checked(
                    annotation,
                    "id",
                    path,
                    where,
                    lambda v: is_id(v) and v not in annotation_ids,
                    f"expected {an_id} that no earlier annotation has",
                )
            )
        if training_set:
            _checked(
                annotation,
                "category_id",
                path,
                where,
                lambda v: _is_id(v) and v in category_ids,
                "expected the id of an entry of 'categories'",
            )
        segmentation = _checked(
            annotation, "segmentation", path, where, None, "expected a segmentation"
        )
        check_segmentation(
            segmentation,
            frame_sizes[image_id],
            path,
            f"{where}['segmentation']",
            min_polygon_points,
        )


def check_results(data, path: str, integer_ids: bool = False) -> dict:
    """
    Check a COCO results list: entries with image_id, score (a finite number) and segmentation
    (see :func:`check_segmentation`), the RLEs of one image all of one size.

    Args:
        integer_ids: require integer image ids (64-bit), not strings.

    Returns:
        {image_id: (height, width)} of the images with at least one RLE (polygons give no size).
    """
    if not isinstance(data, list):
        raise _error(path, "the file", data, "expected a results list")
    is_id, an_id = _id_kind(integer_ids)
    frame_sizes = {}
    for index, entry in enumerate(data):
        where = f"[{index}]"
        image_id = _checked(entry, "image_id", path, where, is_id, f"expected {an_id}")
        _checked(entry, "score", path, where, _is_finite_number, "expected a finite number")
        segmentation = _checked(entry, "segmentation", path, where, None, "expected a segmentation")
        check_segmentation(segmentation, None, path, f"{where}['segmentation']")
        if isinstance(segmentation, dict):
            size = tuple(segmentation["size"])
            if frame_sizes.setdefault(image_id, size) != size:
                raise _error(
                    path,
                    f"{where}['segmentation']['size']",
                    list(size),
                    f"an earlier entry of image_id {image_id!r} has size "
                    f"{list(frame_sizes[image_id])}",
                )
    return frame_sizes


def check_distinct_names(
    images: Sequence[dict], name_of: Callable[[dict], str], path: str, what: str
) -> None:
    """
    Refuse two images whose outputs would have the same name.

    Args:
        images: the "images" entries of `path`.
        name_of: the output name of an entry.
        what: what the name names, for the message (e.g. "report folder").
    """
    first_with = {}
    for index, image in enumerate(images):
        name = name_of(image)
        if name in first_with:
            raise _error(
                path,
                f"images[{index}]",
                image,
                f"its {what} {name!r} would be that of images[{first_with[name]}]",
            )
        first_with[name] = index


def read_image(path: str, frame_size: tuple[int, int], json_path: str, where: str) -> np.ndarray:
    """
    Read the photo of a COCO image whole (see :func:`segtools.data.images.read_image`).

    Args:
        frame_size: (height, width) that `json_path` gives it, at `where` (e.g. "images[3]").

    Returns:
        (H, W, 3) BGR uint8 image.

    Raises:
        ImageReadError: if `path` is missing, not an image or truncated.
        CocoFormatError: if the photo's size differs from `frame_size`.
    """
    photo = images.read_image(path)
    if photo.shape[:2] != tuple(frame_size):
        raise CocoFormatError(
            f"{json_path}: {where} gives [height, width] = {list(frame_size)} but the image "
            f"{path} is {list(photo.shape[:2])}"
        )
    return photo
