"""The images a prediction run reads: image files, folders (recursively) and video frames."""

import os
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from ..data.images import ImageReadError, read_image

__all__ = [
    "Frame",
    "Unreadable",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "collect_inputs",
    "read_frames",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg")


@dataclass(frozen=True)
class Frame:
    """
    An image to predict.

    Attributes:
        name: unique name for the run's output files.
        source: the file it comes from.
        frame_index: index in the video, None for an image file.
        image: (H, W, 3) BGR uint8 (EXIF orientation applied, as in training).
    """

    name: str
    source: str
    frame_index: int | None
    image: np.ndarray


@dataclass(frozen=True)
class Unreadable:
    """An input that could not be read, and why."""

    source: str
    reason: str


def _is_media(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)


def collect_inputs(paths) -> tuple[list, list]:
    """
    Expand the given paths: files as given, folders recursively (files with an image or video
    extension, sorted).

    Returns:
        (files, problems): the files to read, and an :class:`Unreadable` for each path that does
        not exist and each folder without any image or video.
    """
    files, problems = [], []
    for path in paths:
        if os.path.isfile(path):
            files.append(path)
        elif os.path.isdir(path):
            found = sorted(
                os.path.join(folder, name)
                for folder, _, names in os.walk(path)
                for name in names
                if _is_media(name)
            )
            if not found:
                extensions = ", ".join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
                problems.append(Unreadable(path, f"no images or videos ({extensions}) in it"))
            files.extend(found)
        else:
            problems.append(Unreadable(path, "no such file or folder"))
    return files, problems


def _unique_name(stem: str, used: set) -> str:
    """
    `stem`, or `stem_2`, `stem_3`, ...: a name no earlier output of the run has, compared without
    case (a case-insensitive file system would make `A` and `a` one file).

    Args:
        used: the case-folded names already given; updated.
    """
    name, suffix = stem, 2
    while name.casefold() in used:
        name, suffix = f"{stem}_{suffix}", suffix + 1
    used.add(name.casefold())
    return name


def read_frames(path: str, used_names: set, every_nth_frame: int = 1) -> Iterator:
    """
    Yield the :class:`Frame` s of one file (one for an image, every n-th for a video), or a single
    :class:`Unreadable` if the file cannot be decoded (missing, corrupt, truncated, not media).

    Args:
        used_names: the names already given in the run (case-folded); updated. Each frame's name
            is unique among them: files of the same stem (in other folders, with other
            extensions, differing in case) and video frames never share one.
    """
    name = _unique_name(os.path.splitext(os.path.basename(path))[0], used_names)
    if not path.lower().endswith(VIDEO_EXTENSIONS):
        try:
            image = read_image(path)
        except ImageReadError as e:
            yield Unreadable(path, str(e))
            return
        yield Frame(name, path, None, image)
        return

    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            yield Unreadable(path, "cannot open the video (unknown codec or not a video)")
            return
        index = 0
        while True:
            ok, image = capture.read()
            if not ok:
                break
            if index % every_nth_frame == 0:
                frame_name = _unique_name(f"{name}_frame{index:06d}", used_names)
                yield Frame(frame_name, path, index, image)
            index += 1
        if index == 0:
            yield Unreadable(path, "the video has no frame that can be decoded")
    finally:
        capture.release()
